"""Peak memory of ``tl.integrate`` on every gene of a dataset, vs the scanpy + scvi-tools recipe.

``scale.py`` starts from 2,000 genes; a user starts from every gene, so the gene selection's
copies count too. The cells are real Kang 2018 PBMC profiles (all genes of the 14k set,
some without counts) resampled with replacement to ``--cells`` and written to an h5ad.
Each run is a fresh process: imports and a warm-up training on 512 cells, then read the
file and run one of

- **scdl**: ``scdl.tl.integrate(adata, batch_key="condition", max_epochs=1)``;
- **peer**: ``sc.pp.highly_variable_genes(adata, flavor="seurat_v3", n_top_genes=2000,
  batch_key="condition")``, ``adata[:, hvg].copy()``, scvi-tools' SCVI set up on it and
  trained one epoch, its latent written to ``adata.obsm``.

Printed: the peak RSS increase over the read + steps (the kernel's high-water mark), as a
multiple of the CSR matrix's bytes, and scdl's peak over the peer's.

    python benchmarks/integrate_memory.py                    # 56,000 cells
    python benchmarks/integrate_memory.py --cells 20000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

from _common import peak_in_fresh_processes, peak_row, read_and_step_peak, write_resampled_kang

warnings.filterwarnings("ignore")


def run_one(path: Path, impl: str) -> dict:
    import numpy as np
    import scanpy as sc
    import scvi

    import scdl

    def peer(adata, warm_up=False):
        if warm_up:
            sub = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
        else:
            sc.pp.highly_variable_genes(
                adata, flavor="seurat_v3", n_top_genes=2000, batch_key="condition"
            )
            sub = adata[:, adata.var["highly_variable"].to_numpy()].copy()
        scvi.model.SCVI.setup_anndata(sub, batch_key="condition")
        model = scvi.model.SCVI(sub)
        model.train(max_epochs=1, enable_progress_bar=False)
        adata.obsm["X_scVI"] = model.get_latent_representation()

    def ours(adata, warm_up=False):
        scdl.tl.integrate(
            adata,
            batch_key="condition",
            max_epochs=1,
            progress_bar=False,
            n_top_genes=None if warm_up else 2000,
        )

    step = ours if impl == "scdl" else peer
    # warm-up without gene ranking: seurat_v3's trend is singular on 512 cells
    adata, mem = read_and_step_peak(path, step, warm_up=lambda a: step(a, warm_up=True))
    return peak_row(impl, adata, mem)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=56_000)
    p.add_argument("--_run", nargs=2, metavar=("PATH", "IMPL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._run:
        print(json.dumps(run_one(Path(args._run[0]), args._run[1])))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"kang_all_genes_{args.cells}.h5ad"
        write_resampled_kang(args.cells, path, hvg=False)
        peak_in_fresh_processes(__file__, [str(path)])


if __name__ == "__main__":
    main()
