"""Drug response: does scdl say which cells its predictions do not apply to?

A tumour sample holds cancer cells and others (immune, stromal). ``DrugResponseModel`` was
trained on cancer lines' bulk profiles and predicts a response for any profile. Here each
query mixes the singlets of a CellBench lung-line file (lines held out of training) with 450
PBMCs of a Kang file, on their shared genes; the model is built with the mix as its target,
as tutorial 04 builds it. Scored by AUROC (lung cells = positive):

- scdl: ``obs["scdl_drug_line_similarity"]`` (each cell's largest Pearson correlation with a
  training line's profile, over the genes the query holds);
- the signal a user had before: minus the ensemble sd ``obsm["scdl_drug_sd"]`` (a smaller
  spread read as more trust), mean over drugs.

    python benchmarks/drug_applicability.py          # ~2 min on one core
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
from _common import DATA, need
from sklearn.metrics import roc_auc_score

import scdl
from scdl.datasets._gdsc import match_cell_lines

LINES = ("cellbench_lung_lines_2batches.h5ad", "cellbench_lung_5lines_3plates.h5ad")
BLOOD = ("kang_pbmc_2k_celltypes.h5ad", "kang_pbmc_1.5k.h5ad")
DRUGS = ["Gefitinib", "Erlotinib", "Afatinib", "Cisplatin", "Navitoclax"]


def main() -> None:
    warnings.simplefilter("ignore")
    gdsc = scdl.datasets.gdsc(path=DATA)
    rows = []
    for lines_file in LINES:
        lines = ad.read_h5ad(need(DATA / lines_file))
        if "demuxlet" in lines.obs:
            lines = lines[lines.obs["demuxlet"] == "SNG"].copy()
        keys = match_cell_lines(lines.obs["cell_line"].unique(), gdsc.obs["cell_line_key"])
        held = gdsc.obs["cell_line_key"].isin(set(keys.values())).to_numpy()
        for blood_file in BLOOD:
            blood = ad.read_h5ad(need(DATA / blood_file))
            blood = blood[np.random.default_rng(0).choice(blood.n_obs, 450, replace=False)]
            common = lines.var_names.intersection(blood.var_names)
            mix = ad.concat(
                [lines[:, common], blood[:, common]], label="src", keys=["lung", "pbmc"]
            )
            mix.obs_names_make_unique()
            bulk = gdsc[~held].copy()
            scdl.models.DrugResponseModel.setup_anndata(bulk, response_key="ln_ic50")
            model = scdl.models.DrugResponseModel(bulk, target=mix)
            model.train(enable_progress_bar=False)
            scdl.tl.drug_response(mix, model=model, drugs=DRUGS)
            lung = (mix.obs["src"] == "lung").to_numpy()
            sim = np.nan_to_num(mix.obs["scdl_drug_line_similarity"].to_numpy(), nan=-1.0)
            sd = mix.obsm["scdl_drug_sd"].to_numpy().mean(axis=1)
            groups = (("lung", lung), ("pbmc", ~lung))
            q = {k: np.quantile(sim[m], [0.05, 0.5, 0.95]) for k, m in groups}
            rows.append(
                (
                    f"{lines_file.removesuffix('.h5ad')} + {blood_file.removesuffix('.h5ad')}",
                    len(model.genes),
                    roc_auc_score(lung, sim),
                    roc_auc_score(lung, -sd),
                    q["lung"],
                    q["pbmc"],
                )
            )
            print(rows[-1][0], f"AUROC similarity {rows[-1][2]:.3f}, -sd {rows[-1][3]:.3f}")
    print("\n| mix | model genes | AUROC line similarity | AUROC -ensemble sd | similarity "
          "q05/50/95 lung | PBMC |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, n, a_sim, a_sd, ql, qp in rows:
        fmt = "/".join(f"{v:.2f}" for v in ql), "/".join(f"{v:.2f}" for v in qp)
        print(f"| {name} | {n} | {a_sim:.3f} | {a_sd:.3f} | {fmt[0]} | {fmt[1]} |")


if __name__ == "__main__":
    main()
