"""Peak memory of the drug-response path on many cells, beside a ridge recipe in scanpy.

A query as users bring it: every gene of real Kang 2018 PBMC profiles (the 14k set),
resampled with replacement to ``--cells`` and written to an h5ad. The model is the default
``DrugResponseModel`` (the wide path: per-drug ridges) on every GDSC2 line, over the GDSC
genes the query holds; the peer applies the same ridges (the model's own coefficients, as one
linear map) the way a scanpy user would: the model's genes taken from the query,
``sc.pp.normalize_total`` + ``sc.pp.log1p``, the matrix made dense and each cell z-scored over
the genes, then one matrix product. Its predictions are not scdl's: it skips the neighbour
smoothing (15 neighbours in a PCA of the cells) and z-scores where the model ranks, so it is
the cheaper recipe, not the same computation.

Each run is a fresh process: imports, the model, a warm-up on 512 cells, then read the file
and run one step:

- **predict**: scdl ``scdl.tl.drug_response(adata, model=model, drugs=DRUGS)`` (four
  tables); the peer's predicted responses to the same drugs.
- **attributions**: scdl ``model.gene_attributions(adata, drug=DRUGS[0])``; the peer's exact
  ridge attributions (coefficient x the cell's difference from the typical line), averaged
  over cells.
- **build**: scdl ``DrugResponseModel(bulk, target=adata)`` + ``train()`` (the cells decide the
  model's genes); the peer only reads the file (its ridge does not see the cells).

Printed: per step, the peak RSS increase over the read + step (the kernel's high-water mark),
as a multiple of the query's CSR bytes over the model's genes, and scdl's over the peer's.

    python benchmarks/drug_memory.py                     # 40,000 cells
    python benchmarks/drug_memory.py --cells 80000 --steps predict
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from _common import DATA, model_genes_peak_row, need, read_and_step_peak, write_resampled_kang

warnings.filterwarnings("ignore")

DRUGS = ["Gefitinib", "Erlotinib", "Afatinib", "Osimertinib", "Cisplatin", "Docetaxel"]
STEPS = ("predict", "attributions", "build")


def _bulk():
    import scdl

    bulk = scdl.datasets.gdsc(path=DATA)
    scdl.models.DrugResponseModel.setup_anndata(bulk, response_key="ln_ic50")
    return bulk


def train(folder: Path, query_path: Path) -> None:
    """The default model on every GDSC2 line, over the GDSC genes the query holds (saved)."""
    import anndata as ad

    from scdl.models import DrugResponseModel

    need(DATA / "gdsc_bulk_expression.h5ad")
    bulk = _bulk()
    query = ad.read_h5ad(query_path, backed="r")
    genes = bulk.var_names.intersection(query.var_names)
    query.file.close()
    model = DrugResponseModel(bulk, genes=list(genes))
    model.train()
    model.save(folder / "model", overwrite=True)


def run_one(path: Path, folder: Path, step_name: str, impl: str) -> dict:
    import numpy as np
    import scanpy as sc
    import torch

    import scdl
    from scdl.models import DrugResponseModel

    model = DrugResponseModel.load(folder / "model", accelerator="cpu")
    genes = model.genes
    if impl == "scdl":
        if step_name == "predict":

            def step(adata):
                scdl.tl.drug_response(adata, model=model, drugs=DRUGS)

        elif step_name == "attributions":

            def step(adata):
                model.gene_attributions(adata, drug=DRUGS[0])

        else:
            bulk = _bulk()

            def step(adata):
                m = DrugResponseModel(bulk, target=adata)
                m.train()

    else:
        # the model's own ridges as one linear map of the profile (the wide path is linear),
        # applied to unsmoothed, z-scored cells
        mod = model.module
        cols = [model.drugs.index(d) for d in DRUGS]
        with torch.inference_mode():
            mean = mod.gene_mean[None]
            base = mod.predict(mean)[:, cols].numpy()
            w = (mod.predict(mean + torch.eye(len(genes))) - mod.predict(mean))[:, cols].numpy()
            mean = mean.numpy()

        def dense_z(adata):
            sub = adata[:, genes].copy()
            sc.pp.normalize_total(sub, target_sum=1e4)
            sc.pp.log1p(sub)
            x = sub.X.toarray()
            x -= x.mean(axis=1, keepdims=True)
            x /= np.maximum(x.std(axis=1, keepdims=True), 1e-8)
            return x

        if step_name == "predict":

            def step(adata):
                x = dense_z(adata)
                x -= mean
                adata.obsm["peer"] = pd.DataFrame(x @ w + base, index=adata.obs_names)

        elif step_name == "attributions":

            def step(adata):
                x = dense_z(adata)
                x -= mean
                x *= w[:, 0]
                pd.Series(x.mean(axis=0), index=genes).sort_values()

        else:

            def step(adata):
                pass

    adata, mem = read_and_step_peak(path, step)
    return model_genes_peak_row(impl, adata, mem, genes, step=step_name, model_genes=len(genes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=40_000)
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.add_argument("--_run", nargs=4, metavar=("PATH", "FOLDER", "STEP", "IMPL"), help="")
    args = p.parse_args()
    if args._run:
        print(json.dumps(run_one(Path(args._run[0]), Path(args._run[1]), *args._run[2:])))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / f"kang_all_genes_{args.cells}.h5ad"
        write_resampled_kang(args.cells, path, hvg=False)
        train(folder, path)
        for step in args.steps:
            for impl in ("peer", "scdl"):
                cmd = [sys.executable, __file__, "--_run", str(path), str(folder), step, impl]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"{step}/{impl} failed:\n{out.stderr[-3000:]}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows).set_index(["step", "impl"])
    cols = ["cells", "model_genes", "seconds", "query_csr_mib", "peak_increase_mib"]
    print(table[[*cols, "increase_x_query"]].round(2).to_string())
    for step in args.steps:
        ratio = table.loc[(step, "scdl"), "peak_increase_mib"] / max(
            table.loc[(step, "peer"), "peak_increase_mib"], 1.0
        )
        print(f"{step}: peak memory increase, scdl / peer: x{ratio:.2f}")


if __name__ == "__main__":
    main()
