"""Contrastive benchmark: scdl ContrastiveVAE vs scvi-tools' ContrastiveVI on Kang 2018 PBMCs.

Control cells are the background, IFN-beta stimulated cells the target. Both models get the
same cells, the same 2,000 highly variable genes (seurat_v3 on counts), the same seed and the
same number of epochs, at their own default settings otherwise. Measured:

- training seconds;
- interferon-stimulated genes (ISGS below) among each model's top 50 salient genes, ranked
  the same way for both: mean |log2 fold change| over target cells between decoding with the
  salient code and with it set to zero (posterior means; ``salient_gene_table``);
- cell-type separation of the target cells (kNN purity, silhouette) in the shared and the
  salient space: high in the shared space, low in the salient one is the goal;
- mixing of control and stimulated cells in the shared space (normalised kNN entropy, 1 =
  fully mixed): the stimulation should not be in the shared space.

Beside the two models, the simple baselines a user would try first, on the same cells and
genes (log-normalised, 50 PCs): genes = scanpy's Wilcoxon test of target vs background cells
(top 50 by score); shared space = Harmony on the PCs with the condition as the batch; salient
space = contrastive PCA (Abid et al. 2018, Nat Commun 9:2134; alpha = 1): the top 10
directions of the target cells' gene covariance minus the background's, target cells only.

    python benchmarks/contrastive.py                   # both Kang sets
    python benchmarks/contrastive.py --datasets kang2k --epochs 100
"""

from __future__ import annotations

import argparse
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from _common import DATA, hvg_subset, measure, need

warnings.filterwarnings("ignore")

# well-characterised interferon-stimulated genes (type I, some also type II), e.g. the core
# ISGs of Schoggins et al. 2011 (Nature 472:481) and MSigDB's hallmark IFN-alpha response
ISGS = frozenset(
    """
    ADAR APOBEC3A BATF2 BST2 C19orf66 CCL2 CCL8 CMPK2 CXCL10 CXCL11 DDX58 DDX60 DHX58 DTX3L
    EIF2AK2 EPSTI1 GBP1 GBP2 GBP4 GBP5 HERC5 HERC6 HSH2D IDO1 IFI16 IFI27 IFI35 IFI44 IFI44L
    IFI6 IFIH1 IFIT1 IFIT2 IFIT3 IFIT5 IFITM1 IFITM2 IFITM3 IRF1 IRF7 IRF9 ISG15 ISG20 LAMP3
    LAP3 LGALS3BP LY6E MX1 MX2 NMI OAS1 OAS2 OAS3 OASL PARP12 PARP14 PARP9 PLSCR1 PML PSMB8
    PSMB9 RSAD2 RTP4 SAMD9 SAMD9L SAMHD1 SIGLEC1 SP100 SP110 STAT1 STAT2 TAP1 TNFSF10 TRIM21
    TRIM22 TRIM5 TYMP UBE2L6 USP18 WARS XAF1 ZBP1
    """.split()
)

DATASETS = {
    # file, groupby, background value, label key
    "kang2k": ("kang_pbmc_2k_celltypes.h5ad", "condition", "control", "cell_type"),
    "kang1.5k": ("kang_pbmc_1.5k.h5ad", "condition", "ctrl", "cell_type"),
}


def knn_purity(x: np.ndarray, labels, k: int = 15) -> float:
    """Fraction of each cell's k nearest neighbours that share its label."""
    from sklearn.neighbors import NearestNeighbors

    lab = np.asarray(labels)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    return float((lab[idx] == lab[:, None]).mean())


def mixing(x: np.ndarray, groups, k: int = 30) -> float:
    """Mean normalised entropy of group labels among each cell's k neighbours (1 = mixed)."""
    from sklearn.neighbors import NearestNeighbors

    cats, codes = np.unique(np.asarray(groups), return_inverse=True)
    idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)[:, 1:]
    p = np.stack([(codes[idx] == c).mean(1) for c in range(len(cats))], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(p > 0, p * np.log(p), 0).sum(1)
    return float(ent.mean() / np.log(len(cats)))


def cvi_salient_pairs(model, indices: np.ndarray, batch_size: int = 256):
    """ContrastiveVI's decodings of target cells with and without the salient code.

    The computation of its ``get_normalized_expression`` ("salient" vs "background"), from
    posterior means instead of one sample, as scdl's ``get_salient_genes`` does.
    """
    import torch
    from scvi import REGISTRY_KEYS

    model.module.eval()
    loader = model._make_data_loader(adata=model.adata, indices=indices, batch_size=batch_size)
    with torch.inference_mode():
        for t in loader:
            b = t[REGISTRY_KEYS.BATCH_KEY]
            out = model.module._generic_inference(x=t[REGISTRY_KEYS.X_KEY], batch_index=b)
            z, s, lib = out["qz_m"], out["qs_m"], out["library"]
            full = model.module._generic_generative(z=z, s=s, library=lib, batch_index=b)
            none = model.module._generic_generative(
                z=z, s=torch.zeros_like(s), library=lib, batch_index=b
            )
            yield full["px_scale"].cpu().numpy(), none["px_scale"].cpu().numpy()


def is_isg(gene: str) -> bool:
    """In ISGS, by symbol: Kang 1.5k names five of them with an Ensembl suffix
    (PSMB8, PSMB9, TAP1, DHX58, APOBEC3A: ``PSMB9_ENSG00000240065``)."""
    return gene.split("_ENSG")[0] in ISGS


def scores(shared, salient, obs, label_key, groupby, target_mask, top_genes) -> dict:
    from sklearn.metrics import silhouette_score

    lab = obs[label_key].to_numpy()[target_mask]
    return {
        "ISGs_top50": int(sum(is_isg(g) for g in top_genes[:50])),
        "purity_shared": knn_purity(shared[target_mask], lab),
        "purity_salient": knn_purity(salient[target_mask], lab),
        "silhouette_shared": float(silhouette_score(shared[target_mask], lab)),
        "silhouette_salient": float(silhouette_score(salient[target_mask], lab)),
        "condition_mixing_shared": mixing(shared, obs[groupby]),
    }


def simple_baselines(adata, groupby, bg, tg, seed: int) -> tuple[dict, list]:
    """Wilcoxon genes, Harmony shared space and contrastive PCA salient space (no training)."""
    import harmonypy
    import scanpy as sc

    from scdl.data import unintegrated_pca

    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    tmp.obs["_side"] = np.where(np.isin(np.arange(tmp.n_obs), tg), "target", "background")
    with measure() as m:
        sc.tl.rank_genes_groups(
            tmp, "_side", groups=["target"], reference="background", method="wilcoxon"
        )
        genes = [str(g) for g in tmp.uns["rank_genes_groups"]["names"]["target"][:50]]
        pcs = unintegrated_pca(adata, n_comps=50)
        ho = harmonypy.run_harmony(pcs, adata.obs, groupby, random_state=seed, verbose=False)
        z = np.asarray(ho.Z_corr)
        shared = z if z.shape[0] == adata.n_obs else z.T
        # contrastive PCA on standardised log expression (genes scaled over all cells)
        x = tmp.X.toarray() if hasattr(tmp.X, "toarray") else np.asarray(tmp.X)
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
        diff = np.cov(x[tg], rowvar=False) - np.cov(x[bg], rowvar=False)
        evals, evecs = np.linalg.eigh(diff)
        salient = np.zeros((adata.n_obs, 10))
        salient[tg] = x[tg] @ evecs[:, np.argsort(evals)[::-1][:10]]
    return m, (shared, salient, genes)


def run(name: str, seed: int, epochs: int | None) -> tuple[pd.DataFrame, dict]:
    import scvi

    from scdl.data import resolve_groups, salient_gene_table
    from scdl.models import ContrastiveVAE
    from scdl.models._training import default_max_epochs

    fname, groupby, background, label_key = DATASETS[name]
    adata = ad.read_h5ad(need(DATA / fname))
    adata = hvg_subset(adata, batch_key=None)
    bg, tg, _ = resolve_groups(adata, groupby=groupby, background=background)
    target_mask = np.zeros(adata.n_obs, dtype=bool)
    target_mask[tg] = True
    epochs = epochs or default_max_epochs(adata.n_obs)
    rows, top = {}, {}

    scvi.settings.seed = seed
    a = adata.copy()
    ContrastiveVAE.setup_anndata(a)
    model = ContrastiveVAE(a)
    with measure() as m:
        model.train(
            groupby=groupby, background=background, max_epochs=epochs, enable_progress_bar=False
        )
    genes_scdl = model.get_salient_genes(n_top=50)["gene"].tolist()
    m.update(
        scores(
            model.get_latent_representation(representation="shared"),
            model.get_latent_representation(representation="salient"),
            adata.obs,
            label_key,
            groupby,
            target_mask,
            genes_scdl,
        )
    )
    rows["scdl ContrastiveVAE"], top["scdl ContrastiveVAE"] = m, genes_scdl

    scvi.settings.seed = seed
    b = adata.copy()
    scvi.external.ContrastiveVI.setup_anndata(b)
    cvi = scvi.external.ContrastiveVI(b)
    with measure() as m:
        cvi.train(
            background_indices=bg.tolist(),
            target_indices=tg.tolist(),
            max_epochs=epochs,
            enable_progress_bar=False,
        )
    genes_cvi = salient_gene_table(cvi_salient_pairs(cvi, tg), b.var_names).head(50)
    genes_cvi = genes_cvi["gene"].tolist()
    salient = cvi.get_latent_representation(representation_kind="salient")
    salient[~target_mask] = 0.0  # as in scdl: background cells have no salient code
    m.update(
        scores(
            cvi.get_latent_representation(representation_kind="background"),
            salient,
            adata.obs,
            label_key,
            groupby,
            target_mask,
            genes_cvi,
        )
    )
    rows["scvi-tools ContrastiveVI"], top["scvi-tools ContrastiveVI"] = m, genes_cvi

    m, (shared, salient, genes_base) = simple_baselines(adata, groupby, bg, tg, seed)
    m.update(scores(shared, salient, adata.obs, label_key, groupby, target_mask, genes_base))
    label = "baselines: Wilcoxon genes, Harmony shared, cPCA salient"
    rows[label], top[label] = m, genes_base

    table = pd.DataFrame(
        {
            "method": list(rows),
            "seconds": [r["seconds"] for r in rows.values()],
            "peak_MiB": [r["peak_mib"] for r in rows.values()],
            **{
                k: [r[k] for r in rows.values()]
                for k in (
                    "ISGs_top50",
                    "purity_shared",
                    "purity_salient",
                    "silhouette_shared",
                    "silhouette_salient",
                    "condition_mixing_shared",
                )
            },
        }
    )
    table.insert(
        0, "dataset", f"{name} ({adata.n_obs} cells x {adata.n_vars} genes, {epochs} epochs)"
    )
    return table, top


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs for both models (default: scdl's choice for the cell count)",
    )
    args = p.parse_args()
    tables = []
    for d in args.datasets:
        table, top = run(d, args.seed, args.epochs)
        tables.append(table)
        for method, genes in top.items():
            marked = [f"{g}*" if is_isg(g) else g for g in genes[:20]]
            print(f"{d} {method} top 20 salient genes (* = ISG): {' '.join(marked)}")
    out = pd.concat(tables, ignore_index=True)
    pd.set_option("display.width", 250)
    print()
    print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(
        "\nscdl / ContrastiveVI per dataset (time: lower is faster; "
        "shared-salient gap: purity_shared - purity_salient)"
    )
    for d, t in out.groupby("dataset", sort=False):
        s = t.set_index("method")
        ours, peer = s.loc["scdl ContrastiveVAE"], s.loc["scvi-tools ContrastiveVI"]
        gap_o = ours.purity_shared - ours.purity_salient
        gap_p = peer.purity_shared - peer.purity_salient
        mix = ours.condition_mixing_shared / peer.condition_mixing_shared
        print(
            f"  {d}: time x{ours.seconds / peer.seconds:.2f}, "
            f"ISGs in top 50 x{ours.ISGs_top50 / max(peer.ISGs_top50, 1):.2f}, "
            f"purity gap x{gap_o / gap_p:.2f} ({gap_o:.3f} vs {gap_p:.3f}), "
            f"shared condition mixing x{mix:.2f}"
        )


if __name__ == "__main__":
    main()
