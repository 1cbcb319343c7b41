"""Outputs of every model for a before/after check of a change that must not alter behaviour.

Trains each model briefly on CPU with fixed seeds and real data from ``../shared/data``
(sections whose data is absent are skipped), runs the shipped annotator, and saves every
output (latents, decoded expression, salient genes, probabilities, calls, training curves)
to one ``.npz``:

    python scripts/bitwise_outputs.py /tmp/before.npz      # on the base commit
    python scripts/bitwise_outputs.py /tmp/after.npz       # after the change
    python scripts/bitwise_outputs.py --compare /tmp/before.npz /tmp/after.npz

``--compare`` prints, per array, whether it is bitwise equal (``np.array_equal``, NaN equal
to NaN) or the largest absolute difference, and exits 1 unless every array is equal.
A few minutes on one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SCDL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
EPOCHS = 3


def _frame(out: dict, name: str, df) -> None:
    """A DataFrame as its values (numeric columns), labels and index."""
    import pandas as pd

    df = pd.DataFrame(df)
    out[f"{name}.index"] = np.asarray(df.index.astype(str))
    out[f"{name}.columns"] = np.asarray(df.columns.astype(str))
    for col in df.columns:
        values = df[col]
        if values.dtype.kind in "biuf":
            out[f"{name}[{col}]"] = values.to_numpy()
        else:
            out[f"{name}[{col}]"] = np.asarray(values.astype(str))


def _history(out: dict, name: str, history) -> None:
    for key, df in history.items():
        out[f"{name}.history.{key}"] = np.asarray(df.iloc[:, 0], dtype=float)


def _seed(seed: int = 0) -> None:
    import scvi

    scvi.settings.seed = seed


def vae(out: dict, kang) -> None:
    import scdl

    _seed()
    adata = kang.copy()
    model = scdl.tl.integrate(adata, batch_key="sample", max_epochs=EPOCHS, progress_bar=False)
    out["vae.tl_latent"] = adata.obsm["X_scdl"]
    for key, value in adata.uns["X_scdl"]["history"].items():
        out[f"vae.tl_history.{key}"] = value
    out["vae.latent"] = model.get_latent_representation()
    out["vae.normalized"] = np.asarray(model.get_normalized_expression(indices=np.arange(300)))
    out["vae.normalized_in_batch"] = np.asarray(
        model.get_normalized_expression(indices=np.arange(100), transform_batch="ctrl101")
    )


def contrastive(out: dict, kang) -> None:
    import scdl

    _seed()
    adata = kang.copy()
    model = scdl.tl.contrastive(
        adata, groupby="condition", background="ctrl", max_epochs=EPOCHS, progress_bar=False
    )
    out["contrastive.tl_salient"] = adata.obsm["X_scdl_salient"]
    out["contrastive.tl_shared"] = adata.obsm["X_scdl_shared"]
    info = adata.uns["X_scdl_salient"]
    for key, value in info["history"].items():
        out[f"contrastive.tl_history.{key}"] = value
    _frame(out, "contrastive.tl_salient_genes", info["salient_genes"])
    out["contrastive.tl_n"] = np.array([info["params"]["n_background"], info["params"]["n_target"]])
    _history(out, "contrastive", model.history)
    idx = np.arange(0, model.adata.n_obs, 5)
    for salient in (True, False):
        out[f"contrastive.normalized_salient={salient}"] = np.asarray(
            model.get_normalized_expression(indices=idx, salient=salient)
        )
    _frame(out, "contrastive.salient_genes", model.get_salient_genes(n_top=None))
    # the model API directly, split by indices (the other way of naming groups)
    _seed(1)
    train = model.adata.copy()
    scdl.models.ContrastiveVAE.setup_anndata(train)
    direct = scdl.models.ContrastiveVAE(train, n_salient_latent=5)
    bg = np.flatnonzero((train.obs["condition"] == "ctrl").to_numpy())
    direct.train(background_indices=bg, max_epochs=2, enable_progress_bar=False)
    out["contrastive.direct_salient"] = direct.get_latent_representation(representation="salient")
    _history(out, "contrastive.direct", direct.history)


def annotator(out: dict) -> None:
    import scdl

    path = DATA / "kang_pbmc_2k_celltypes.h5ad"
    if not path.is_file():
        print(f"skip annotator: {path} absent")
        return
    import anndata as ad

    _seed()
    kang2k = ad.read_h5ad(path)
    kang2k.obs["cell_type"] = kang2k.obs["cell_type"].astype(str)
    ref = kang2k[(kang2k.obs.condition == "control") & (kang2k.obs.cell_type != "B")]
    ref = ref[:, np.asarray(ref.X.sum(0)).ravel() > 0].copy()
    query = kang2k[kang2k.obs.condition != "control"].copy()
    scdl.models.CellTypeTransformer.setup_anndata(ref, labels_key="cell_type")
    model = scdl.models.CellTypeTransformer(ref)
    model.train(max_epochs=EPOCHS, enable_progress_bar=False)
    _history(out, "annotator", model.history)
    out["annotator.threshold"] = np.asarray(model.cluster_threshold_, dtype=float)
    _frame(out, "annotator.proba", model.predict(query, soft=True))
    out["annotator.pred"] = np.asarray(model.predict(query), dtype=str)
    cells, _ = model.annotate_cells(query, adapt_to_query=0.5)
    _frame(out, "annotator.annotate_cells", cells)


def pretrained(out: dict) -> None:
    import scdl

    _seed()
    adata = scdl.datasets.kang_pbmc_heldout()
    scdl.tl.annotate(adata)
    key = "scdl_cell_type"
    out["pretrained.calls"] = np.asarray(adata.obs[key].astype(str))
    out["pretrained.confidence"] = adata.obs[f"{key}_confidence"].to_numpy()
    out["pretrained.unknown"] = adata.obs[f"{key}_unknown"].to_numpy()
    out["pretrained.probabilities"] = np.asarray(adata.obsm[f"{key}_probabilities"])
    model = scdl.pretrained.load("pbmc_kang2018")
    _frame(out, "pretrained.proba", model.predict(adata, soft=True, unknown=False))


def drug(out: dict) -> None:
    import scdl

    need = (
        "gdsc_bulk_expression.h5ad",
        "drug_response_long.csv.gz",
        "cellbench_lung_lines_2batches.h5ad",
    )
    if not all((DATA / n).is_file() for n in need):
        print("skip drug: GDSC or CellBench files absent")
        return
    import anndata as ad

    from scdl.datasets._gdsc import match_cell_lines

    gdsc = scdl.datasets.gdsc(path=DATA)
    cells = ad.read_h5ad(DATA / "cellbench_lung_lines_2batches.h5ad")
    cells = cells[cells.obs["demuxlet"] == "SNG"].copy()
    keys = match_cell_lines(cells.obs["cell_line"].unique(), gdsc.obs["cell_line_key"])
    cells.obs["cell_line_key"] = cells.obs["cell_line"].map(keys).astype(str)
    held = gdsc.obs["cell_line_key"].isin(cells.obs["cell_line_key"].unique()).to_numpy()
    bulk = gdsc[~held].copy()
    scdl.models.DrugResponseModel.setup_anndata(bulk, response_key="ln_ic50")
    drugs = ["Gefitinib", "Erlotinib", "Afatinib"]
    for name, kwargs in (("wide", {}), ("deep", {"prediction": "deep", "n_ensemble": 2})):
        _seed()
        model = scdl.models.DrugResponseModel(bulk, target=cells, **kwargs)
        model.train(max_epochs=EPOCHS, enable_progress_bar=False)
        for kind in ("value", "probability", "sd"):
            out[f"drug.{name}.{kind}"] = model.predict(cells, kind=kind).to_numpy()
        out[f"drug.{name}.bulk"] = model.predict(drugs=drugs).to_numpy()
        _seed()
        res = scdl.tl.drug_response(cells.copy(), model=model, drugs=drugs, copy=True)
        for key in res.obsm:
            out[f"drug.{name}.tl.{key}"] = np.asarray(res.obsm[key])


def run(path: str) -> None:
    import scanpy as sc
    import torch

    import scdl

    torch.set_num_threads(1)
    sc.settings.verbosity = 0
    kang = scdl.datasets.kang_pbmc()
    out: dict[str, np.ndarray] = {}
    for name, step in (
        ("vae", lambda: vae(out, kang)),
        ("contrastive", lambda: contrastive(out, kang)),
        ("annotator", lambda: annotator(out)),
        ("pretrained", lambda: pretrained(out)),
        ("drug", lambda: drug(out)),
    ):
        t0 = time.perf_counter()
        step()
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    np.savez(path, **out)
    print(f"wrote {len(out)} arrays to {path}")


def compare(a_path: str, b_path: str) -> int:
    # string columns are saved as object arrays: only load files this script wrote
    a, b = np.load(a_path, allow_pickle=True), np.load(b_path, allow_pickle=True)
    keys = sorted(set(a.files) | set(b.files))
    bad = 0
    for key in keys:
        if key not in a.files or key not in b.files:
            print(f"MISSING  {key} (only in {'A' if key in a.files else 'B'})")
            bad += 1
            continue
        x, y = a[key], b[key]
        if x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            print(f"equal    {key} {x.shape}")
            continue
        bad += 1
        if x.shape != y.shape:
            print(f"DIFFER   {key}: shape {x.shape} vs {y.shape}")
        elif x.dtype.kind in "biuf":
            diff = np.nanmax(np.abs(x.astype(float) - y.astype(float)))
            print(f"DIFFER   {key}: max abs diff {diff:.3g}")
        else:
            print(f"DIFFER   {key}: {int(np.sum(x != y))} entries differ")
    print(f"{len(keys) - bad}/{len(keys)} arrays bitwise equal")
    return int(bad > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="output .npz, or two with --compare")
    parser.add_argument("--compare", action="store_true", help="compare two .npz files")
    args = parser.parse_args(argv)
    if args.compare:
        if len(args.paths) != 2:
            parser.error("--compare needs two .npz files")
        return compare(*args.paths)
    if len(args.paths) != 1:
        parser.error("give one output path")
    run(args.paths[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
