"""``scdl.tl.drug_response``: predicted drug response of each cell, written into AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._rng import keeps_rng
from scdl.data import check_writable, warn_of_training_lines, warn_slashed_names, writable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from scdl.models import DrugResponseModel


@keeps_rng
def drug_response(
    adata: AnnData,
    *,
    model: DrugResponseModel,
    drugs: str | Sequence[str] | pd.Index | np.ndarray | None = None,
    key_added: str = "scdl_drug",
    layer: str | None = None,
    modality: str = "auto",
    smooth_neighbors: int | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Predict each cell's response to many drugs with a trained drug-response model.

    Uses :class:`scdl.models.DrugResponseModel` (trained on cancer cell lines' bulk
    expression and response, aligned to single cells): raw counts are normalised, smoothed
    over neighbouring cells and scaled as the model was trained (see its docstring).

    What to rely on: the order of cells, clusters or samples within a drug (which are more
    sensitive than which), among cells like the cancer lines the model was trained on. A
    cell unlike every training line (an immune or stromal cell of a tumour sample, another
    tissue) still gets a prediction, which carries no meaning; the ``_line_similarity`` obs
    column shows such cells (they score lower than the sample's cancer cells): predict for
    the malignant cells, or compare groups of similar score. Cells of a line the model was
    trained on are predicted in-sample: a warning says when an obs column holds such lines'
    names, with the code that holds them out of training. Predictions are shrunk towards
    the training lines' typical response (a ridge ensemble fitted on bulk lines), so their
    spread is narrower than the measured one, and the ``_label`` / ``_prob`` tables, which
    read each cell against the drug's median over the bulk lines, can put every cell of a
    query on one side of it, the most sensitive line's cells included (tutorial 04 shows such
    a case). Compare within a drug by rank.

    Parameters
    ----------
    adata
        Annotated data matrix of cells with raw counts in ``X`` or ``layer`` (or bulk
        log-scale profiles), gene symbols as var_names.
    model
        A trained :class:`scdl.models.DrugResponseModel`.
    drugs
        Drug name(s); ``None`` for every drug the model predicts.
    key_added
        obsm key of the predictions and uns key of the summary.
    layer
        Layer to read; ``None`` uses ``adata.X``.
    modality
        ``"auto"``, ``"counts"``, ``"log1p"`` (single cells after ``sc.pp.normalize_total``
        + ``sc.pp.log1p``) or ``"profiles"`` (see
        :meth:`~scdl.models.DrugResponseModel.profiles`).
    smooth_neighbors
        Cells each cell's counts are averaged over (itself included) before prediction;
        ``None`` uses the model's setting, ``0`` none. At most a fifth of the query's cells
        are used, so that a query of a few cells is not averaged into one profile; in a
        small query of several lines or types (tens of cells), a cell's neighbours still
        include many of the others' cells: pass a small number (e.g. 3) or ``0`` there.
    copy
        Return a copy with the results instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the copy when ``copy=True``. Written (to ``adata`` or its copy):

    ``obsm[key_added]``
        DataFrame of cells x drugs: predicted response in the training table's units
        (ln IC50: lower = more sensitive).
    ``obsm[f"{key_added}_prob"]``
        DataFrame of cells x drugs: sensitive probability, P(response < the drug's median
        over the bulk lines) given the held-out residual sd (P(response > the median) for a
        model whose ``sensitive`` is ``"high"``, e.g. activity area). The sd is measured on
        bulk lines: on cells this is a score to compare cells within a drug, not a
        calibrated chance (see :class:`~scdl.models.DrugResponseModel`).
    ``obsm[f"{key_added}_label"]``
        DataFrame of cells x drugs: 1 (sensitive) where the predicted response is on the
        sensitive side of the drug's median over the training lines (``threshold`` in the
        summary), else 0.
    ``obsm[f"{key_added}_sd"]``
        DataFrame of cells x drugs: the sd of the prediction over the model's ensemble
        members (each trained without one fold of the lines): their disagreement, much smaller
        than the prediction's error (``residual_sd`` in the summary).
    ``obs[f"{key_added}_line_similarity"]``
        The largest Pearson correlation of each cell's profile (the model's input: normalised,
        smoothed, scaled) with a training line's, over the genes ``adata`` holds (NaN for a
        cell without counts in them): how much the cell resembles the lines the model learnt
        from. Not a calibrated cut: compare cells or groups of one query. Nor a quality
        check: a doublet of two cancer cells scores as high as a cancer cell or higher, and
        without smoothing a deeper cell scores higher; filter doublets and low-quality cells
        first. Written when the model holds its training lines (not for one loaded without
        data).
    ``obs[f"{key_added}_nearest_line"]``
        Categorical: the training line of that correlation (``""`` where it is NaN).
    ``uns[key_added]``
        ``params`` (``drugs``, ``layer``, ``modality`` as read: ``"counts"``, ``"log1p"``
        or ``"profiles"``, ``smooth_neighbors`` as used: the model's when ``None``, at most
        a fifth of the cells, 0 when no cell was averaged (``"profiles"``, or too few cells),
        ``n_genes``, ``n_cells``, ``model``,
        ``response_key``: the model's response, e.g. ``"ln_ic50"``, and ``sensitive``:
        ``"low"`` or ``"high"``, which responses mean more sensitive),
        ``drugs`` (DataFrame per drug: ``mean_prediction``, ``bulk_median`` and ``threshold``
        (the same value: the label's cut), ``mean_sd``,
        ``mean_probability``, ``fraction_sensitive`` (the share of cells whose
        ``_prob`` is above 0.5: by the score, not a measured share),
        ``heldout_spearman`` and ``residual_sd`` of the model on held-out lines,
        ``n_lines`` trained on), sorted by ``mean_probability``; ``bulk``: the model's own
        columns of it (``bulk_median``, ``residual_sd``, ``heldout_spearman``, ``n_lines``)
        sorted by drug name, the same for every call with the model, so that
        ``anndata.concat(..., uns_merge="same")`` of parts predicted apart keeps them.

    Raises
    ------
    TypeError
        ``model`` is not a DrugResponseModel.
    KeyError
        A drug the model does not know (close matches listed), or ``layer`` missing.
    ValueError
        Too few of the model's genes in ``adata``; counts that are not raw counts with
        ``modality="counts"``, or (``"auto"``) integers with a few negative or fractional
        values. ``adata`` is left unchanged.

    Examples
    --------
    >>> import scdl
    >>> bulk = scdl.datasets.gdsc(path="data/")  # the folder holding the two GDSC files
    >>> scdl.models.DrugResponseModel.setup_anndata(bulk, response_key="ln_ic50")
    >>> model = scdl.models.DrugResponseModel(bulk, target=adata)  # adata: raw counts
    >>> model.train()
    >>> scdl.tl.drug_response(adata, model=model, drugs=["Gefitinib", "Erlotinib"])
    >>> scdl.pl.drug_response(adata, groupby="cell_line")  # any obs column of groups
    """
    from scdl.data import (
        check_is_anndata,
        check_key_added,
        neighbors_used,
        resolve_modality,
        warn_other_features,
    )
    from scdl.models import DrugResponseModel

    check_is_anndata(adata)
    check_writable(adata, copy=copy)
    if not isinstance(model, DrugResponseModel):
        raise TypeError(
            f"model must be a trained scdl.models.DrugResponseModel, got {type(model).__name__}."
        )
    # the model reads its own genes only: other features matter where they bear those names
    warn_other_features(adata, among=model.genes)
    check_key_added(key_added)
    for suffix in ("_prob", "_label", "_sd"):  # the tables another call writes beside its own
        base, info = key_added.removesuffix(suffix), adata.uns.get(key_added.removesuffix(suffix))
        if base != key_added and isinstance(info, dict) and "drugs" in info:
            raise ValueError(
                f"key_added={key_added!r} would overwrite adata.obsm[{key_added!r}], written by "
                f"the call under key_added={base!r}; choose another key."
            )
        info = adata.uns.get(key_added + suffix)  # the other way round
        if isinstance(info, dict) and "drugs" in info:
            raise ValueError(
                f"key_added={key_added!r} would overwrite adata.obsm[{key_added + suffix!r}], "
                f"written by the call under key_added={key_added + suffix!r}; choose another key."
            )
    # the lines the model was fitted on (None: trained before scdl recorded them): a loaded
    # model may be given another bulk, or none
    trained_on = getattr(model, "training_lines_", None)
    if trained_on is not None or model.adata is not None:
        warn_of_training_lines(adata, model.adata, lines=trained_on)
    if modality == "auto":  # resolved here so that params records what was read
        modality = resolve_modality(adata, layer)
    # everything is computed before anything is written, so a failure leaves adata unchanged
    # one pass: the cells' profiles (and their neighbour smoothing) are computed once
    kinds = ["value", "probability", "label", "sd"]
    # the training lines are needed to compare cells with them (a model loaded without data
    # lacks them)
    kinds += ["similarity"] if model.adata is not None else []
    tables = model.predict(
        adata, drugs=drugs, kind=kinds, layer=layer, modality=modality,
        smooth_neighbors=smooth_neighbors,
    )  # fmt: skip
    value, prob, label, sd = (tables[k] for k in ("value", "probability", "label", "sd"))
    similar = tables.get("similarity")
    warn_slashed_names(
        value.columns,
        what="Drugs",
        written=f"they name the columns of adata.obsm['{key_added}'] and its _prob, _label and "
        "_sd tables",
        fix="Rename those columns before `adata.write_h5ad`, e.g. `df.columns = "
        "df.columns.str.replace('/', '|')` for each table.",
    )
    stats = model.drug_stats_.loc[list(value.columns)]
    summary = pd.DataFrame(
        {
            "mean_prediction": value.mean(axis=0),
            "bulk_median": stats["median"].to_numpy(),
            "threshold": stats["median"].to_numpy(),
            "mean_sd": sd.mean(axis=0),
            "mean_probability": prob.mean(axis=0),
            "fraction_sensitive": (prob > 0.5).mean(axis=0),
            "heldout_spearman": stats["heldout_spearman"].to_numpy(),
            "residual_sd": stats["residual_sd"].to_numpy(),
            "n_lines": stats["n_lines"].to_numpy().astype(np.int64),
        },
        index=value.columns.copy(),
    ).sort_values("mean_probability", ascending=False, kind="stable")

    out = writable(adata, copy=copy)
    # a rerun with a model loaded without data leaves no stale columns (`del`: pandas 3
    # deprecates `drop(inplace=True)`, an error where deprecations are errors)
    for stale in (f"{key_added}_line_similarity", f"{key_added}_nearest_line"):
        if stale in out.obs:
            del out.obs[stale]
    out.obsm[key_added] = value
    out.obsm[f"{key_added}_prob"] = prob
    out.obsm[f"{key_added}_label"] = label
    out.obsm[f"{key_added}_sd"] = sd
    if similar is not None:
        out.obs[f"{key_added}_line_similarity"] = similar["similarity"].to_numpy()
        out.obs[f"{key_added}_nearest_line"] = pd.Categorical(similar["nearest_line"])
    out.uns[key_added] = {
        "params": {
            "drugs": np.asarray(value.columns, dtype=object),
            "layer": layer or "",
            "modality": modality,
            "smooth_neighbors": 0
            if modality == "profiles"
            else neighbors_used(
                adata.n_obs,
                model.smooth_neighbors if smooth_neighbors is None else smooth_neighbors,
            ),
            "n_genes": len(model.genes),
            "n_cells": int(adata.n_obs),
            "model": "scdl.models.DrugResponseModel",
            "response_key": str(model.registry_["setup_args"]["response_key"]),
            "sensitive": model.sensitive,
        },
        "drugs": summary,
        # the model's figures alone, by drug name: the same for every call of the model on
        # any cells, so `anndata.concat(..., uns_merge="same")` keeps them (the summary's
        # per-call columns differ between parts, and it was dropped whole)
        "bulk": summary[["bulk_median", "residual_sd", "heldout_spearman", "n_lines"]].sort_index(),
    }
    return out if copy else None
