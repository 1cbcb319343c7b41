"""Peak memory of ``tl.annotate`` with majority voting, vs CellTypist's recipe in scanpy.

A query as users bring it: every gene of real Kang 2018 PBMC profiles (the 14k set),
resampled with replacement to ``--cells`` and written to an h5ad. Both annotators are
trained first on Kang 2k's labelled cells (its 2,000 seurat_v3 genes): scdl's
``CellTypeTransformer`` (5 epochs: memory, not accuracy, is measured) and CellTypist's
recipe, a ``StandardScaler(with_mean=False)`` + L2 logistic regression on log1p(CP10k).
Each run is a fresh process: imports, the model, a warm-up on 512 cells, then read the file
and run one of

- **scdl**: ``scdl.tl.annotate(adata, model=model, majority_voting=True)``;
- **peer** (CellTypist's steps with ``majority_voting=True``): the model's genes taken from the
  query, ``sc.pp.normalize_total`` + ``sc.pp.log1p``, the scaled logistic regression's calls,
  and CellTypist's over-clustering (``sc.pp.pca``, ``sc.pp.neighbors``, ``sc.tl.leiden`` at its
  resolution for the query's size; here on the model's genes, as scdl's is), then the vote.

Printed: the peak RSS increase over the read + step (the kernel's high-water mark), as a
multiple of the whole CSR matrix's bytes and of the gathered query's (the model's genes),
and scdl's peak over the peer's. One run per implementation: at 40k cells two runs of the
same code differ by a few MiB, at 80k by tens.

    python benchmarks/annotate_memory.py                     # 40,000 cells
    python benchmarks/annotate_memory.py --cells 80000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from _common import (
    DATA,
    model_genes_peak_row,
    need,
    peak_in_fresh_processes,
    read_and_step_peak,
    write_resampled_kang,
)

warnings.filterwarnings("ignore")

EPOCHS = 5


def train(folder: Path) -> None:
    """scdl's annotator (saved) and the peer's genes, on Kang 2k's labelled cells."""
    import anndata as ad
    import scanpy as sc

    from scdl.models import CellTypeTransformer

    ref = ad.read_h5ad(need(DATA / "kang_pbmc_2k_celltypes.h5ad"))
    query = ad.read_h5ad(need(DATA / "kang_pbmc_14k.h5ad"), backed="r")
    ref = ref[:, ref.var_names.isin(query.var_names)]  # both models see all their genes
    query.file.close()
    tmp = ref.copy()
    sc.pp.filter_genes(tmp, min_cells=1)
    hv = sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=2000, inplace=False)
    ref = ref[:, tmp.var_names[hv["highly_variable"].to_numpy()]].copy()
    ref.write_h5ad(folder / "reference.h5ad")
    CellTypeTransformer.setup_anndata(ref, labels_key="cell_type", batch_key="condition")
    model = CellTypeTransformer(ref)
    model.train(max_epochs=EPOCHS, accelerator="cpu", enable_progress_bar=False)
    model.save(folder / "annotator", overwrite=True)


def _celltypist_resolution(n_cells: int) -> float:
    """CellTypist's over-clustering resolution for a query's size."""
    for limit, resolution in ((5000, 5), (20000, 10), (40000, 15), (100000, 20), (200000, 25)):
        if n_cells < limit:
            return resolution
    return 30


def run_one(path: Path, folder: Path, impl: str) -> dict:

    import anndata as ad
    import scanpy as sc
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import scdl
    from scdl.models import CellTypeTransformer

    if impl == "scdl":
        model = CellTypeTransformer.load(folder / "annotator", accelerator="cpu")
        genes = model.get_var_names()

        def step(adata):
            scdl.tl.annotate(adata, model=model, majority_voting=True)

    else:
        ref = ad.read_h5ad(folder / "reference.h5ad")
        genes = ref.var_names
        sc.pp.normalize_total(ref, target_sum=1e4)
        sc.pp.log1p(ref)
        scaler = StandardScaler(with_mean=False).fit(ref.X)
        clf = LogisticRegression(max_iter=1000).fit(scaler.transform(ref.X), ref.obs["cell_type"])
        del ref

        def step(adata):
            sub = adata[:, genes].copy()
            sc.pp.normalize_total(sub, target_sum=1e4)
            sc.pp.log1p(sub)
            calls = clf.predict(scaler.transform(sub.X))
            sc.pp.pca(sub, n_comps=50)
            sc.pp.neighbors(sub, transformer="sklearn")  # pynndescent 0.7 fails >= 4,096 cells
            sc.tl.leiden(
                sub, resolution=_celltypist_resolution(sub.n_obs), flavor="igraph", n_iterations=2
            )
            clusters = sub.obs["leiden"].to_numpy()
            votes = pd.Series(calls).groupby(clusters).agg(lambda s: s.value_counts().idxmax())
            adata.obs["peer_majority_voting"] = votes.loc[clusters].to_numpy()

    adata, mem = read_and_step_peak(path, step)
    return model_genes_peak_row(impl, adata, mem, genes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=40_000)
    p.add_argument("--_run", nargs=3, metavar=("PATH", "FOLDER", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._run:
        print(json.dumps(run_one(Path(args._run[0]), Path(args._run[1]), args._run[2])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / f"kang_all_genes_{args.cells}.h5ad"
        write_resampled_kang(args.cells, path, hvg=False)
        train(folder)
        peak_in_fresh_processes(__file__, [str(path), str(folder)])


if __name__ == "__main__":
    main()
