"""``scdl demo``: the main job on the bundled real data (integration and clustering of Kang
PBMCs beside a PCA, then the shipped annotator on held-out cells), its figures and files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def run_demo(args: argparse.Namespace) -> int:
    """``scdl demo``: both parts into the folder ``args.output``."""
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _demo_integration(args, out)
    _demo_annotation(out)
    return 0


def _demo_integration(args: argparse.Namespace, out: Path) -> None:
    """Integration + clustering of the bundled Kang samples, with PCA beside it."""
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    import scdl
    from scdl.data import unintegrated_pca

    print("scdl demo: integration + clustering of Kang 2018 PBMCs (bundled, 4 samples)")
    adata = scdl.datasets.kang_pbmc()
    print(f"  data: {adata.n_obs} cells x {adata.n_vars} genes, batches = obs['sample']")
    adata.obsm["X_pca"] = unintegrated_pca(adata)
    model = scdl.tl.integrate(
        adata,
        batch_key="sample",
        max_epochs=args.max_epochs,
        random_state=args.seed,
        progress_bar=not args.quiet and sys.stdout.isatty(),
    )
    scdl.tl.cluster(adata, use_rep="X_scdl", key_added="scdl_cluster")
    ari = adjusted_rand_score(adata.obs["cell_type"], adata.obs["scdl_cluster"])
    metrics = scdl.tl.integration_metrics(
        adata, batch_key="sample", label_key="cell_type", embeddings=["X_pca", "X_scdl"]
    )
    figs = {
        "umap_scdl.png": lambda p: scdl.pl.embedding(
            adata, basis="X_scdl", color=["sample", "cell_type", "scdl_cluster"], save=p, show=False
        ),
        "umap_pca.png": lambda p: scdl.pl.embedding(
            adata, basis="X_pca", color=["sample", "cell_type"], save=p, show=False
        ),
        "training_history.png": lambda p: scdl.pl.training_history(adata, save=p, show=False),
        "integration_metrics.png": lambda p: scdl.pl.integration_metrics(
            metrics, save=p, show=False
        ),
    }
    for name, draw in figs.items():
        draw(out / name)
        plt.close("all")
    scdl.data.write_h5ad_atomic(adata, out / "kang_scdl.h5ad")
    model.save(out / "model", overwrite=True)
    print("\nscib-metrics (unscaled; higher is better):")
    print(metrics[["Batch correction", "Bio conservation", "Total"]].round(3).to_string())
    print(
        f"\nLeiden on X_scdl: {adata.obs['scdl_cluster'].nunique()} clusters, "
        f"ARI vs cell_type = {ari:.3f}"
    )
    print(
        f"training: {adata.uns['X_scdl']['params']['max_epochs']} epochs in "
        f"{adata.uns['X_scdl']['train_time_s']:.0f} s; final ELBO "
        f"{np.asarray(adata.uns['X_scdl']['history']['elbo_train'])[-1]:.1f}"
    )
    print(
        f"\nwrote {out / 'kang_scdl.h5ad'}, {out / 'model'}/ and "
        + ", ".join(str(out / n) for n in figs)
    )


def _demo_annotation(out: Path) -> None:
    """The shipped annotator on held-out Kang cells, with gene attributions."""
    import matplotlib.pyplot as plt

    import scdl

    print("\nscdl demo: cell-type annotation with the shipped annotator 'pbmc_kang2018'")
    cells = scdl.datasets.kang_pbmc_heldout()
    print(
        f"  data: {cells.n_obs} held-out Kang PBMCs (never seen by the annotator), "
        "with known cell types"
    )
    scdl.tl.annotate(cells, model="pbmc_kang2018")
    called = cells.obs["scdl_cell_type"].astype(str)
    known = ~cells.obs["scdl_cell_type_unknown"].to_numpy()
    acc = (called[known] == cells.obs["cell_type"].astype(str)[known]).mean()
    print(
        f"  accuracy {acc:.1%} on the {known.sum()} cells called; "
        f"{(~known).mean():.1%} called Unknown"
    )
    scdl.pl.annotation(cells, groupby="cell_type", save=out / "annotation.png", show=False)
    model = scdl.pretrained.load("pbmc_kang2018")
    # the calls tl.annotate just made (no second clustering of the cells)
    attr = model.gene_attributions(cells, groupby="scdl_cell_type", n_cells=50)
    scdl.pl.attributions(attr, save=out / "attributions.png", show=False)
    plt.close("all")
    top = attr[attr["rank"] <= 3].groupby("label")["gene"].apply(", ".join)
    print("  top genes per type (integrated gradients):")
    for label, genes in top.items():
        print(f"    {label:<12} {genes}")
    scdl.data.write_h5ad_atomic(cells, out / "kang_annotated.h5ad")
    print(
        f"wrote {out / 'kang_annotated.h5ad'}, {out / 'annotation.png'}, {out / 'attributions.png'}"
    )
