"""A fresh Python session, as a user's first notebook cell or a batch job starts one.

Reports, as one JSON line on stdout, what ``import scdl`` loads, what reaching the models
loads and whether that keeps the seed the user set, and whether the analysis steps keep the
user's torch thread count. One process for all of it (each fresh import of torch and
scvi-tools costs seconds): run by the ``fresh_session`` fixture in ``conftest.py``, with the
path of Kang's 1.5k PBMCs as its argument. Each part records an error of its own, so one
failing part leaves the others' results to their tests.
"""

import json
import sys
import traceback

report: dict = {}


def part(name: str):
    def run(step):
        try:
            report[name] = step()
        except Exception:
            report[name] = {"error": traceback.format_exc()[-3000:]}

    return run


HEAVY = ("torch", "scvi", "lightning", "jax")

import random  # noqa: E402

import numpy as np  # noqa: E402

import scdl  # noqa: E402

names = dir(scdl)


@part("import")
def _():
    scdl.tl, scdl.pl, scdl.datasets, scdl.data  # noqa: B018
    loaded = [m for m in HEAVY if m in sys.modules]
    return {"names": names, "all": sorted(scdl.__all__), "heavy": loaded}


@part("models")
def _():
    import torch

    def draw():
        return torch.rand(1).item(), float(np.random.rand()), random.random()

    def seed():
        torch.manual_seed(42)
        np.random.seed(42)
        random.seed(42)

    seed()
    expected = draw()
    seed()
    scvi_before = "scvi" in sys.modules
    scdl.models.VAE  # noqa: B018  (the first reach of the models imports scvi-tools)
    return {
        "scvi_before": scvi_before,
        "scvi_after": "scvi" in sys.modules,
        "seed_kept": draw() == expected,
        "reached": [getattr(scdl, m).__name__ for m in ("dataloaders", "module", "train")],
    }


@part("threads")
def _():
    # scanpy's neighbours (numba) set the OpenMP thread count torch shares to every core on
    # numba's first parallel call in a process, which the steps below make
    from pathlib import Path

    import anndata as ad
    import torch

    from scdl.models import CellTypeTransformer

    path = Path(sys.argv[1])
    if not path.is_file():
        return {"skipped": f"{path} not available"}
    torch.set_num_threads(1)
    a = ad.read_h5ad(path)[::3].copy()
    scdl.tl.integrate(a, batch_key="sample", max_epochs=1, progress_bar=False)
    scdl.tl.cluster(a, resolution=0.5)
    after_tl = torch.get_num_threads()
    CellTypeTransformer.setup_anndata(a, labels_key="cell_type")
    m = CellTypeTransformer(a)
    m.train(max_epochs=1, enable_progress_bar=False)
    m.annotate_cells(a)
    return {"tl": after_tl, "annotator": torch.get_num_threads()}


print(json.dumps(report))
