"""Peak memory of ``tl.contrastive`` on 2,000 genes and on every gene, vs scvi-tools' ContrastiveVI.

The cells are Kang 2018's 14k PBMCs (13,999 cells x 14,053 genes, raw counts), control cells the
background and IFN-beta stimulated cells the target. Each run is a fresh process: imports and a
warm-up on 512 cells, then read the file and run one of

- **scdl**: ``scdl.tl.contrastive(adata, groupby="condition", background="ctrl",
  n_top_genes=GENES, max_epochs=EPOCHS)``: gene selection, training, both latents and the
  salient-gene table;
- **peer**: the same genes (``sc.pp.highly_variable_genes(flavor="seurat_v3")`` and a copy
  for 2,000; every gene with a count otherwise), scvi-tools' ``ContrastiveVI`` set up on them
  and trained for the same epochs, its two latents written to ``adata.obsm`` (no gene table:
  the peer does less).

Printed, for each gene setting: the peak RSS increase over the read + steps (the kernel's
high-water mark), as a multiple of the CSR matrix's bytes, and scdl's peak over the peer's.
A dense float32 copy of every gene of these cells would take about 750 MiB.

    python benchmarks/contrastive_memory.py                   # 2 epochs, both gene settings
    python benchmarks/contrastive_memory.py --genes all --epochs 37
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from _common import DATA, need, peak_in_fresh_processes, peak_row, read_and_step_peak

warnings.filterwarnings("ignore")


def run_one(path: Path, genes: str, epochs: int, impl: str) -> dict:
    import numpy as np
    import scanpy as sc
    import scvi

    import scdl

    n_top = None if genes == "all" else int(genes)

    def peer(adata, n_top=n_top):
        if n_top is None:
            sub = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
        else:
            sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=n_top)
            sub = adata[:, adata.var["highly_variable"].to_numpy()].copy()
        target = (sub.obs["condition"] != "ctrl").to_numpy()
        scvi.external.ContrastiveVI.setup_anndata(sub)
        model = scvi.external.ContrastiveVI(sub)
        model.train(
            background_indices=np.flatnonzero(~target).tolist(),
            target_indices=np.flatnonzero(target).tolist(),
            max_epochs=epochs,
            enable_progress_bar=False,
        )
        for kind in ("background", "salient"):
            adata.obsm[f"X_{kind}"] = model.get_latent_representation(representation_kind=kind)

    def ours(adata, n_top=n_top):
        scdl.tl.contrastive(
            adata,
            groupby="condition",
            background="ctrl",
            n_top_genes=n_top,
            max_epochs=epochs,
            progress_bar=False,
        )

    step = ours if impl == "scdl" else peer
    # warm-up on every gene: seurat_v3's trend can be singular on 512 cells
    adata, mem = read_and_step_peak(path, step, warm_up=lambda a: step(a, n_top=None))
    return peak_row(impl, adata, mem, genes=genes, epochs=epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genes", nargs="+", default=["2000", "all"], help="2000 and/or all")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--_run", nargs=4, metavar=("PATH", "GENES", "EPOCHS", "IMPL"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args._run:
        path, genes, epochs, impl = args._run
        print(json.dumps(run_one(Path(path), genes, int(epochs), impl)))
        return
    path = need(DATA / "kang_pbmc_14k.h5ad")
    for genes in args.genes:
        print(f"\n== {genes} genes, {args.epochs} epochs")
        peak_in_fresh_processes(__file__, [str(path), genes, str(args.epochs)])


if __name__ == "__main__":
    main()
