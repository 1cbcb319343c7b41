"""Cell-type annotation: scdl's CellTypeTransformer vs logistic regression vs scANVI.

Reference and query differ in condition, sample or cells (real splits of ../shared/data):

* ``kang2k ctrl->stim``: Kang 2018 PBMCs (7 types), control cells annotate IFN-beta
  stimulated cells;
* ``kang1.5k sample``: one Kang sample (ctrl101) annotates the three others;
* ``kang1.5k donor``: one Kang donor (control and stimulated) annotates the other (the
  annotation tutorial's split);
* ``pbmc7k cells``: 10x PBMCs (200 genes), a stratified half annotates the other half (types
  with fewer than 20 cells and "NA" dropped);
* ``kang2k->kang1.5k``: the scGen Kang subset annotates the muscat Kang subset (different
  processing; labels mapped to common names), on the genes both hold;
* ``cellbench 3plates->2batches``: CellBench lung adenocarcinoma lines (cell line as the type,
  demuxlet singlets only): three CEL-seq2 plates of five lines annotate the CEL-seq2 and
  Drop-seq batches of three of those lines, on the genes both hold;
* ``cellbench celseq2->dropseq``: within the two-batch file, the CEL-seq2 batch annotates the
  Drop-seq batch (same three lines in both);
* ``kang2k->pbmc7k`` and ``pbmc7k->kang2k``: PBMCs of another lab, donors and 10x run (the
  shift the project is judged on), each way, on the 149 genes both files hold. Labels are
  mapped to PBMC 7k's five (Kang's CD14 and FCGR3A monocytes are "Monocytes"); Kang's dendritic
  cells stay in the Kang reference and are left out of the Kang query (PBMC 7k has no such
  type; ``--cross-lab-novel`` keeps them: they are then left out of the F1 and the known-type
  Unknown rate, and the share of them called Unknown is printed as ``unknown_novel``).

All methods see the same genes (2,000 highly variable genes of the reference where it has more;
``--genes all``: every gene of the split). ``--only`` takes one or more split-name prefixes.
"scdl" is the model's default call (``adapt_to_query="auto"``: when its cells mix poorly with the
reference's, the query's statistics blended in halfway, then the reference's mean moved by the
query's shift at its own composition until the calls settle); "scdl adapt=0" and "scdl adapt=0.5"
the same model's calls without the blend and with the blend alone, always. Logistic regression
follows CellTypist: log1p(CP10k), scaled per gene, L2-regularised multinomial. scANVI: scVI (100
epochs) then scANVI (20 epochs) on the reference, scvi-tools' default architecture; the query mapped
with ``load_query_data`` and predicted. Macro-F1 and accuracy use every method's forced call (scdl's
Unknown calls are reported separately; "F1 w/ Unknown" counts them as errors; every query type is in
the reference, so its Unknown fraction is the rate on known types). "scdl by sample": the same
model with ``batch_key`` set to the query's samples where it holds several (Kang 1.5k's
``sample``, CellBench's ``batch``, Kang 2k's ``condition``, each a separate run; see
:func:`query_samples`), each sample read as a query of its own; elsewhere the default call.

Leave one type out (the novelty call): for each split and each reference type with >= 30
cells, scdl is trained without it (seed 0, ``--loto-epochs`` epochs, 20 by default, to keep
the run short; the Unknown call is calibrated on the reference as usual) and the query is
annotated: the fraction of the removed type's query cells called Unknown and the AUROC of the
cluster novelty score (removed type vs the known types' cells) are printed per type, with
the known types' Unknown fraction beside them; where the query holds several samples, also
by sample (``*_by_sample``, the same model).

Composition (``--composition``): with the full reference (scdl, first seed), each query type
in turn is depleted to 5%, 15% and 30% of its cells (two random draws each), a query whose
composition is unlike the reference's while every type is known; the share of its cells
called Unknown is printed per split (mean and worst over the types and draws), beside logistic
regression's share below CellTypist's 0.5 probability cut on the same cells.

    python benchmarks/annotation.py [--skip-scanvi] [--skip-loto] [--only SPLIT] [--seeds 0 1 2]
        [--composition] [--save-calls DIR] [--cross-lab-novel]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import re
import time

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from _common import (
    DATA,
    KANG_TO_PBMC7K,
    cells_also_in,
    kang2k_study_monocyte_labels,
    need,
    read_pbmc7k,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

KANG_NAMES = {
    "CD4 T cells": "CD4T",
    "CD8 T cells": "CD8T",
    "B cells": "B",
    "CD14+ Monocytes": "CD14+Mono",
    "FCGR3A+ Monocytes": "FCGR3A+Mono",
}


def read(name: str) -> ad.AnnData:
    a = ad.read_h5ad(need(DATA / name))
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    return a


def splits(*, cross_lab_novel: bool = False, scgen_labels: bool = False):
    k2 = read("kang_pbmc_2k_celltypes.h5ad")
    k2_as_given = k2.copy()
    if not scgen_labels:  # the file's monocyte labels disagree with the study's (see _common)
        k2.obs["cell_type"] = kang2k_study_monocyte_labels(k2)
    yield "kang2k ctrl->stim", k2[k2.obs.condition == "control"], k2[k2.obs.condition != "control"]
    k1 = read("kang_pbmc_1.5k.h5ad")
    yield "kang1.5k sample", k1[k1.obs["sample"] == "ctrl101"], k1[k1.obs["sample"] != "ctrl101"]
    donor = k1.obs["sample"].str[-3:]
    yield "kang1.5k donor", k1[donor == "101"], k1[donor == "107"]
    p7 = read_pbmc7k()
    ref_idx, qry_idx = train_test_split(
        np.arange(p7.n_obs), test_size=0.5, stratify=p7.obs.cell_type, random_state=0
    )
    yield "pbmc7k cells", p7[ref_idx], p7[qry_idx]
    k1m = k1.copy()
    k1m.obs["cell_type"] = k1m.obs["cell_type"].map(KANG_NAMES)
    shared = k2.var_names.intersection(k1m.var_names)
    # the file's own labels: the study's monocyte labels come from a classifier trained on
    # these query cells' labels, which a reference must not see; nor the query's own cells
    ref = k2_as_given[~cells_also_in(k2_as_given, k1m)]
    yield "kang2k->kang1.5k", ref[:, shared], k1m[:, shared]
    # CellBench lung adenocarcinoma lines (other tissue and chemistries): demuxlet singlets,
    # the cell line as the cell type
    plates = read_cellbench("cellbench_lung_5lines_3plates.h5ad")
    two = read_cellbench("cellbench_lung_lines_2batches.h5ad")
    shared = plates.var_names.intersection(two.var_names)
    yield "cellbench 3plates->2batches", plates[:, shared], two[:, shared]
    # every query (Drop-seq) line is among the reference (CEL-seq2) lines: none is novel
    celseq2, dropseq = two[two.obs.batch == "sc_celseq2"], two[two.obs.batch == "sc_dropseq"]
    assert set(dropseq.obs.cell_type) <= set(celseq2.obs.cell_type)
    yield "cellbench celseq2->dropseq", celseq2, dropseq
    yield from cross_lab_splits(k2, p7, keep_novel=cross_lab_novel)


def cross_lab_splits(k2: ad.AnnData, p7: ad.AnnData, *, keep_novel: bool = False):
    """Kang 2k and PBMC 7k (another lab, donors and 10x run) annotate each other on their shared
    genes, in PBMC 7k's labels. Kang's dendritic cells are a type PBMC 7k lacks: kept in the
    Kang reference, left out of the Kang query unless ``keep_novel``."""
    shared = k2.var_names.intersection(p7.var_names)
    kang = k2[:, shared].copy()
    kang.obs["cell_type"] = kang.obs["cell_type"].map(KANG_TO_PBMC7K)
    pbmc = p7[:, shared].copy()
    yield "kang2k->pbmc7k", kang, pbmc
    query = kang if keep_novel else kang[kang.obs.cell_type != "Dendritic"].copy()
    yield "pbmc7k->kang2k", pbmc, query


def read_cellbench(name: str) -> ad.AnnData:
    a = ad.read_h5ad(need(DATA / name))
    a = a[a.obs.demuxlet == "SNG"].copy()
    a.obs["cell_type"] = a.obs["cell_line"].astype(str)
    return a


def hvg(ref: ad.AnnData, n: int = 2000) -> pd.Index:
    if ref.n_vars <= n:
        return ref.var_names
    tmp = ref.copy()
    sc.pp.filter_genes(tmp, min_cells=1)
    hv = sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n, inplace=False)
    return tmp.var_names[hv["highly_variable"].to_numpy()]


def lognorm(a: ad.AnnData):
    b = a.copy()
    sc.pp.normalize_total(b, target_sum=1e4)
    sc.pp.log1p(b)
    return b.X


def fit_logreg(ref):
    """CellTypist's classifier (L2 multinomial logistic regression, C = 1) on log1p CP10k
    scaled per gene (without CellTypist's centring and clipping at 10)."""
    scaler = StandardScaler(with_mean=False).fit(lognorm(ref))
    clf = LogisticRegression(max_iter=1000, C=1.0)
    return scaler, clf.fit(scaler.transform(lognorm(ref)), ref.obs.cell_type)


#: CellTypist's default call: a cell whose best probability is below this is "Unassigned"
CELLTYPIST_CUT = 0.5


def run_logreg(ref, qry):
    """Forced calls, and CellTypist's default ones: "Unassigned" (counted as Unknown) below a
    best probability of ``CELLTYPIST_CUT``."""
    t0 = time.perf_counter()
    scaler, clf = fit_logreg(ref)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = clf.predict_proba(scaler.transform(lognorm(qry)))
    t_pred = time.perf_counter() - t0
    pred, calls = _calls_with_cut(clf.classes_, probs)
    return pred, t_train, t_pred, calls


def _calls_with_cut(classes, probs) -> tuple[np.ndarray, pd.DataFrame]:
    """Forced calls, and CellTypist's: "Unassigned" (as Unknown) below ``CELLTYPIST_CUT``."""
    pred = classes[probs.argmax(1)]
    unassigned = probs.max(1) < CELLTYPIST_CUT
    calls = pd.DataFrame({"label": np.where(unassigned, "Unknown", pred), "is_unknown": unassigned})
    return pred, calls


#: the tuned baseline's choices, both made by cross-validation on the reference alone
LOGREG_CV_C = (0.001, 0.01, 0.1, 1.0)
LOGREG_CV_INPUTS = ("scaled", "centred")


def run_logreg_cv(ref, qry):
    """Logistic regression tuned on the reference only: the input (log1p CP10k scaled per gene,
    or centred on the reference's gene means, as scdl's linear path reads it) and C chosen by
    stratified 5-fold macro-F1 on the reference cells, then refitted on all of them. Forced
    calls, and "Unassigned" below ``CELLTYPIST_CUT`` as ``run_logreg``'s."""
    from scipy import sparse
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    t0 = time.perf_counter()
    x_ref, x_qry = lognorm(ref), lognorm(qry)
    x_ref = x_ref.toarray() if sparse.issparse(x_ref) else np.asarray(x_ref)
    x_qry = x_qry.toarray() if sparse.issparse(x_qry) else np.asarray(x_qry)
    y = ref.obs.cell_type.to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    best = (-1.0, None, None)
    for kind in LOGREG_CV_INPUTS:
        if kind == "scaled":
            scale = np.asarray(x_ref.std(axis=0))
            scale[scale == 0] = 1.0
            a, b = x_ref / scale, x_qry / scale
        else:
            mean = x_ref.mean(axis=0)
            a, b = x_ref - mean, x_qry - mean
        for c in LOGREG_CV_C:
            clf = LogisticRegression(max_iter=1000, C=c)
            score = cross_val_score(clf, a, y, cv=folds, scoring="f1_macro").mean()
            if score > best[0]:
                best = (score, (a, b), c)
    _, (a, b), c = best
    clf = LogisticRegression(max_iter=1000, C=c).fit(a, y)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = clf.predict_proba(b)
    t_pred = time.perf_counter() - t0
    pred, calls = _calls_with_cut(clf.classes_, probs)
    calls.attrs["logreg_cv"] = f"C={c}"
    return pred, t_train, t_pred, calls


_TRAINED: dict[int, object] = {}


def trained(ref, seed: int = 0):
    """The split's model and its training time (0 when trained already): the scdl columns
    after the first reuse the model trained on this split."""
    import scvi

    import scdl

    t_train = 0.0
    if id(ref) not in _TRAINED:
        scvi.settings.seed = seed
        data = ref.copy()
        t0 = time.perf_counter()
        scdl.models.CellTypeTransformer.setup_anndata(data, labels_key="cell_type")
        model = scdl.models.CellTypeTransformer(data)
        model.train(enable_progress_bar=False)
        t_train = time.perf_counter() - t0
        _TRAINED.clear()
        _TRAINED[id(ref)] = model
    return _TRAINED[id(ref)], t_train


def run_scdl(ref, qry, seed: int = 0, adapt_to_query: float | str = "auto"):
    model, t_train = trained(ref, seed)
    t0 = time.perf_counter()
    calls, _ = model.annotate_cells(qry, adapt_to_query=adapt_to_query)
    return calls["label_forced"].to_numpy(), t_train, time.perf_counter() - t0, calls


#: obs columns that name a query's samples (separate runs), in the order looked for
SAMPLE_COLUMNS = ("sample", "batch", "condition")


def query_samples(qry) -> str | None:
    """The query's column of samples where it holds several, else ``None``."""
    for column in SAMPLE_COLUMNS:
        if column in qry.obs and qry.obs[column].nunique() > 1:
            return column
    return None


def run_scdl_by_sample(ref, qry, seed: int = 0):
    """The default call with each of the query's samples read apart (``batch_key``)."""
    model, t_train = trained(ref, seed)
    t0 = time.perf_counter()
    calls, _ = model.annotate_cells(qry, batch_key=query_samples(qry))
    return calls["label_forced"].to_numpy(), t_train, time.perf_counter() - t0, calls


def run_scdl_adapted(ref, qry, seed: int = 0):
    return run_scdl(ref, qry, seed=seed, adapt_to_query=0.5)


def run_scdl_unadapted(ref, qry, seed: int = 0):
    return run_scdl(ref, qry, seed=seed, adapt_to_query=0.0)


def run_scanvi(ref, qry, seed: int = 0):
    import scvi

    scvi.settings.seed = seed
    ref, qry = ref.copy(), qry.copy()
    t0 = time.perf_counter()
    scvi.model.SCVI.setup_anndata(ref, labels_key="cell_type")
    vae = scvi.model.SCVI(ref)
    vae.train(max_epochs=100, enable_progress_bar=False)
    lvae = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="?")
    lvae.train(max_epochs=20, enable_progress_bar=False)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    qry.obs["cell_type"] = "?"
    q = scvi.model.SCANVI.load_query_data(qry, lvae)
    pred = q.predict()
    return np.asarray(pred), t_train, time.perf_counter() - t0, None


def unknown_score(model, calls, samples=None) -> np.ndarray:
    """The score the model's Unknown call thresholds at 1 (the model's own function); for
    calls made by sample (``samples``: each cell's), with each sample's mixing level."""
    from scdl.models._novelty import unknown_score as score

    def part(rows, level):
        return score(
            calls["cluster_novelty"].to_numpy()[rows],
            model.cluster_threshold_,
            calls["cluster_reference_share"].to_numpy()[rows],
            model.min_reference_share_,
            model.unknown_evidence_,
            level,
        )

    if "batches" not in calls.attrs:
        return part(slice(None), calls.attrs.get("mixing_level", 0.5))
    out = np.full(len(calls), np.nan)
    samples = np.asarray(samples).astype(str)
    for name, reading in calls.attrs["batches"].items():
        out[samples == name] = part(samples == name, reading["mixing_level"])
    return out


def _auroc(is_removed, score) -> float:
    """AUROC over the cells that have the score: cells of no or a few counts, which the call
    makes Unknown for that alone, have no cluster and no score."""
    from sklearn.metrics import roc_auc_score

    score = np.asarray(score, dtype=np.float64)
    has = np.isfinite(score)
    return roc_auc_score(np.asarray(is_removed)[has], score[has])


def save_calls(out: str | None, stem: str, model, calls, truth, removed: str | None = None) -> None:
    """Write a run's per-cell calls, the query's labels and the model's thresholds and evidence
    sum (for scoring other combinations of the Unknown checks offline); ``removed``: the type
    a leave-one-type-out run trained without."""
    if out is None:
        return
    os.makedirs(out, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9.+]+", "_", stem)
    calls.assign(truth=np.asarray(truth)).to_csv(os.path.join(out, f"{stem}.csv.gz"))
    thresholds = {
        "cluster_threshold": model.cluster_threshold_,
        "min_reference_share": model.min_reference_share_,
        "unknown_evidence": model.unknown_evidence_,
        **{
            k: calls.attrs.get(k)
            for k in ("adapt_to_query", "median_reference_share", "recentre_steps")
        },
        "mixing_level": calls.attrs.get("mixing_level"),
        "removed": removed,
    }
    with open(os.path.join(out, f"{stem}.json"), "w") as fh:
        json.dump(thresholds, fh)


def depleted_queries(
    name, model, ref, qry, *, fractions=(0.05, 0.15, 0.3), draws=2, adapt: float | str = "auto"
) -> list[dict]:
    """Known-type Unknown when one query type is depleted to a fraction of its cells (every
    type in turn, ``draws`` random draws each): a composition unlike the reference's, with
    every type still known. Beside it, logistic regression's share of cells below CellTypist's
    0.5 probability cut ("Unassigned")."""
    scaler, clf = fit_logreg(ref)
    confident = clf.predict_proba(scaler.transform(lognorm(qry))).max(1) >= CELLTYPIST_CUT
    truth = qry.obs.cell_type.to_numpy()
    rows = []
    for t in np.unique(truth):
        idx = np.flatnonzero(truth == t)
        for f, d in itertools.product(fractions, range(draws)):
            rng = np.random.default_rng([d, int(f * 100), len(idx)])
            keep = truth != t
            keep[rng.choice(idx, max(1, round(f * len(idx))), replace=False)] = True
            calls, _ = model.annotate_cells(qry[keep].copy(), adapt_to_query=adapt)
            rows.append(
                {
                    "split": name,
                    "depleted": t,
                    "fraction": f,
                    "draw": d,
                    "unknown": float(calls["is_unknown"].mean()),
                    "logreg_unassigned": float(1.0 - confident[keep].mean()),
                }
            )
    return rows


def leave_one_type_out(
    name,
    ref,
    qry,
    *,
    epochs: int = 20,
    min_cells: int = 30,
    save: str | None = None,
    adapt: float | str = "auto",
    gene_set: str = "hvg",
) -> list[dict]:
    """Train without each reference type in turn; how its query cells are called. ``ref`` and
    ``qry`` hold every gene: the model's genes are chosen on the reference without the removed
    type, as a user's reference that lacks it would choose them."""
    import scvi

    import scdl

    rows = []
    counts = ref.obs.cell_type.value_counts()
    for removed in sorted(counts.index[counts >= min_cells]):
        is_removed = (qry.obs.cell_type == removed).to_numpy()
        if not is_removed.any():
            continue
        scvi.settings.seed = 0
        data = ref[ref.obs.cell_type != removed].copy()
        genes = hvg(data) if gene_set == "hvg" else data.var_names
        data, query = data[:, genes].copy(), qry[:, genes].copy()
        scdl.models.CellTypeTransformer.setup_anndata(data, labels_key="cell_type")
        model = scdl.models.CellTypeTransformer(data)
        model.train(max_epochs=epochs, enable_progress_bar=False)
        calls, _ = model.annotate_cells(query, adapt_to_query=adapt)
        save_calls(save, f"loto_{name}_{removed}", model, calls, qry.obs.cell_type, removed)
        by_sample = {}
        if (key := query_samples(query)) is not None:
            each, _ = model.annotate_cells(query, adapt_to_query=adapt, batch_key=key)
            flagged = each["is_unknown"].to_numpy()
            by_sample = {
                "unknown_removed_by_sample": float(flagged[is_removed].mean()),
                "unknown_known_by_sample": float(flagged[~is_removed].mean()),
                "auroc_both_by_sample": _auroc(
                    is_removed, unknown_score(model, each, query.obs[key])
                ),
            }
        unknown = calls["is_unknown"].to_numpy()
        row = {
            "split": name,
            "removed": removed,
            "n_removed_query": int(is_removed.sum()),
            "unknown_removed": float(unknown[is_removed].mean()),
            "unknown_known": float(unknown[~is_removed].mean()),
            "auroc_cluster_novelty": _auroc(is_removed, calls["cluster_novelty"]),
            "auroc_reference_share": _auroc(is_removed, -calls["cluster_reference_share"]),
            # the score the call uses: the two checks' summed evidence
            "auroc_both": _auroc(is_removed, unknown_score(model, calls)),
            "auroc_cell_novelty": _auroc(is_removed, calls["novelty"]),
            **by_sample,
        }
        print(pd.DataFrame([row]).round(3).to_string(index=False), flush=True)
        rows.append(row)
    return rows


def speed(n_repeat: int = 3, device: str = "cpu") -> None:
    """Inference speed of the shipped annotator vs logistic regression on 14k real cells.

    Gene alignment is included on both sides. Logistic regression (CellTypist's path) is
    fitted beforehand on the model's reference cells and timed on normalise + predict.
    """
    import scdl

    cells = ad.read_h5ad(need(DATA / "kang_pbmc_14k.h5ad"))
    model = scdl.pretrained.load("pbmc_kang2018")
    model.to_device(device)
    ref = scdl.datasets.kang_pbmc_heldout()  # any labelled cells with the model's genes
    genes = model.get_var_names()
    present = [g for g in genes if g in cells.var_names]
    scaler = StandardScaler(with_mean=False).fit(lognorm(ref[:, present]))
    clf = LogisticRegression(max_iter=1000).fit(
        scaler.transform(lognorm(ref[:, present])), ref.obs.cell_type
    )

    def logreg():
        clf.predict(scaler.transform(lognorm(cells[:, present])))

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    runs = {
        "scdl forced calls (probabilities, per-cell novelty)": lambda: model.annotate_cells(
            cells, unknown_call=False
        ),
        "scdl default (+ cluster-level Unknown call)": lambda: model.annotate_cells(cells),
        "logistic regression (normalise + predict)": logreg,
    }
    model.annotate_cells(cells[:1024])  # warm-up, incl. scanpy's numba compile
    rows = []
    for name, run in runs.items():
        run()
        sync()
        t0 = time.perf_counter()
        for _ in range(n_repeat):
            run()
        sync()
        rows.append(
            {"method": name, "cells_per_s": cells.n_obs * n_repeat / (time.perf_counter() - t0)}
        )
    df = pd.DataFrame(rows).set_index("method")
    df["vs_logreg"] = df.cells_per_s / df.cells_per_s.iloc[-1]
    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(
        f"\ninference on {cells.n_obs} Kang cells ({where}, {torch.get_num_threads()} CPU threads, "
        "gene alignment included):"
    )
    print(df.to_string(float_format=lambda v: f"{v:,.2f}"))


def _adapt_value(value: str) -> str | float:
    """``--adapt``: "auto" or a blend in [0, 1]."""
    try:
        return value if value == "auto" else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto' or a number in [0, 1], not {value!r}") from None


def main():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-scanvi", action="store_true")
    parser.add_argument("--only", nargs="+", default=None, help="run these splits (name prefixes)")
    parser.add_argument(
        "--genes",
        choices=("hvg", "all"),
        default="hvg",
        help="every method's genes: 2,000 HVGs of the reference (hvg) or all of the split's",
    )
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--device", default="cpu", help="device of the speed check (cuda)")
    parser.add_argument("--skip-loto", action="store_true", help="skip leave-one-type-out")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--loto-epochs", type=int, default=20)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds of scdl and scANVI (mean shown)"
    )
    parser.add_argument(
        "--composition",
        action="store_true",
        help="also deplete each query type in turn (seed of the first scdl model)",
    )
    parser.add_argument(
        "--save-calls", default=None, help="folder for each scdl run's per-cell calls"
    )
    parser.add_argument(
        "--adapt",
        type=_adapt_value,
        default="auto",
        help='adapt_to_query of the leave-one-type-out and depleted runs ("auto" or a blend)',
    )
    parser.add_argument(
        "--cross-lab-novel",
        action="store_true",
        help="keep Kang's dendritic cells (a type PBMC 7k lacks) in the pbmc7k->kang2k query",
    )
    parser.add_argument(
        "--scgen-labels",
        action="store_true",
        help="Kang 2k's monocyte labels as the file gives them (the scGen repository's), not "
        "the study's (the default since stop 45)",
    )
    args = parser.parse_args()
    if args.speed_only:
        return speed(device=args.device)
    methods = {
        "logreg": run_logreg,
        "logreg CV": run_logreg_cv,
        "scdl": run_scdl,
        "scdl adapt=0": run_scdl_unadapted,
        "scdl adapt=0.5": run_scdl_adapted,
        "scdl by sample": run_scdl_by_sample,
    }
    if not args.skip_scanvi:
        methods["scANVI"] = run_scanvi
    rows, loto, depleted = [], [], []
    for name, ref, qry in splits(
        cross_lab_novel=args.cross_lab_novel, scgen_labels=args.scgen_labels
    ):
        if args.only and not any(name.startswith(p) for p in args.only):
            continue
        full_ref, full_qry = ref, qry  # leave-one-type-out chooses its own genes
        genes = hvg(ref) if args.genes == "hvg" else ref.var_names
        ref, qry = ref[:, genes].copy(), qry[:, genes].copy()
        truth = qry.obs.cell_type.to_numpy()
        # query types the reference lacks (only with --cross-lab-novel): scored apart
        known = np.isin(truth, ref.obs.cell_type.unique())
        labels = np.unique(truth[known])
        for seed, (method, fn) in itertools.product(args.seeds, methods.items()):
            if method.startswith("logreg") and seed != args.seeds[0]:
                continue  # deterministic
            if not method.startswith("logreg"):
                fn = functools.partial(fn, seed=seed)
            if method == "scdl":
                _TRAINED.clear()  # a new seed trains anew; the other scdl columns reuse it
            pred, t_train, t_pred, calls = fn(ref, qry)
            row = {
                "split": name,
                "method": method,
                "seed": seed,
                "n_ref": ref.n_obs,
                "n_query": qry.n_obs,
                "macro_F1": f1_score(truth[known], pred[known], average="macro", labels=labels),
                "accuracy": accuracy_score(truth[known], pred[known]),
                "train_s": t_train,
                "predict_cells_per_s": qry.n_obs / t_pred,
            }
            if method == "scdl":
                save_calls(args.save_calls, f"full_{name}_s{seed}", _TRAINED[id(ref)], calls, truth)
                if args.composition and seed == args.seeds[0]:
                    depleted += depleted_queries(
                        name, _TRAINED[id(ref)], ref, qry, adapt=args.adapt
                    )
            if calls is not None:
                with_unknown = calls["label"].to_numpy()
                row["F1_w_unknown"] = f1_score(
                    truth[known], with_unknown[known], average="macro", labels=labels
                )
                unknown = calls["is_unknown"].to_numpy()
                row["unknown_frac"] = float(unknown[known].mean())
                if "adapt_to_query" in calls.attrs:  # the blend applied ("auto" decides)
                    row["blend"] = calls.attrs["adapt_to_query"]
                    row["median_share"] = calls.attrs["median_reference_share"]
                    row["recentre_steps"] = calls.attrs.get("recentre_steps", 0)
                # is the call flagging cells the forced call gets wrong, or right ones?
                right = known & (pred == truth)
                row["unknown_if_right"] = float(unknown[right].mean())
                row["unknown_if_wrong"] = float(unknown[known & ~right].mean())
                if not known.all():
                    row["unknown_novel"] = float(unknown[~known].mean())
            rows.append(row)
            # each row as key=value: the methods' rows hold different columns, which one
            # header printed once put under the wrong names
            print(
                "  ".join(
                    f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in row.items()
                ),
                flush=True,
            )
        if not args.skip_loto:
            loto += leave_one_type_out(
                name,
                full_ref,
                full_qry,
                epochs=args.loto_epochs,
                save=args.save_calls,
                adapt=args.adapt,
                gene_set=args.genes,
            )
    if not rows:
        raise SystemExit(f"annotation.py: no split's name starts with --only {args.only!r}.")
    df = pd.DataFrame(rows)
    print("\n" + df.round(3).to_string(index=False))
    f1 = df.pivot_table(index="split", columns="method", values="macro_F1", aggfunc="mean")
    peers = [m for m in f1.columns if not m.startswith("scdl")]
    f1["scdl - best peer"] = f1["scdl"] - f1[peers].max(axis=1)
    for fixed in ("scdl adapt=0", "scdl adapt=0.5"):
        f1[f"{fixed} - best peer"] = f1[fixed] - f1[peers].max(axis=1)
    print("\nmacro-F1 by split\n" + f1.round(4).to_string())
    scdl_rows = df[df.method == "scdl"]
    summary = scdl_rows.groupby("split")[["unknown_frac", "F1_w_unknown"]].agg(["mean", "std"])
    cut = df[df.method == "logreg"].set_index("split")
    summary["logreg_F1"] = cut["macro_F1"]
    summary["logreg_unassigned"] = cut["unknown_frac"]
    summary["logreg_F1_w_unassigned"] = cut["F1_w_unknown"]
    tuned = df[df.method == "logreg CV"].set_index("split")
    summary["logreg_CV_F1"] = tuned["macro_F1"]
    summary["logreg_CV_F1_w_unassigned"] = tuned["F1_w_unknown"]
    print("\nscdl default calls: Unknown on known types, F1 w/ Unknown vs logreg\n")
    print(summary.round(4).to_string())
    sampled = df[df.method.isin(["scdl", "scdl by sample"])]
    cols = ["unknown_frac", "F1_w_unknown", "macro_F1"]
    print("\nthe query whole vs by sample (mean over seeds; the same where it has one sample)\n")
    print(sampled.pivot_table(index="split", columns="method", values=cols).round(4).to_string())
    flags = df.groupby(["split", "method"])[["unknown_if_right", "unknown_if_wrong"]].mean()
    print("\nknown cells flagged Unknown (Unassigned) where the forced call is right / wrong\n")
    print(flags.unstack().round(3).to_string())
    if "unknown_novel" in scdl_rows:
        novel = scdl_rows.dropna(subset=["unknown_novel"]).groupby("split")["unknown_novel"]
        print("\nquery types the reference lacks, called Unknown\n")
        print(novel.agg(["mean", "std"]).round(4).to_string())
    if loto:
        lt = pd.DataFrame(loto)
        print("\nleave one type out (seed 0)\n" + lt.round(3).to_string(index=False))
        print(
            "\nmean over removed types: "
            + lt.drop(columns=["split", "removed", "n_removed_query"]).mean().round(3).to_string()
        )
        if "unknown_removed_by_sample" in lt:
            both = lt.dropna(subset=["unknown_removed_by_sample"])
            cols = ["unknown_removed", "unknown_known", "auroc_both"]
            cols += [f"{c}_by_sample" for c in cols]
            print(
                f"\nthe {len(both)} removals whose query holds several samples, whole vs by "
                "sample:\n" + both[cols].mean().round(3).to_string()
            )
    if depleted:
        dp = pd.DataFrame(depleted)
        cols = ["unknown", "logreg_unassigned"]
        table = dp.groupby(["split", "fraction"])[cols].agg(["mean", "max"]).unstack()
        print("\none query type depleted to a fraction of its cells: Unknown (all known)\n")
        print(table.round(3).to_string())
        print(dp.groupby("fraction")[cols].agg(["mean", "max"]).round(3).to_string())
    if not args.skip_speed:
        speed()


if __name__ == "__main__":
    main()
