"""Predictions of a trained :class:`~scdl.models.DrugResponseModel`: the model's input for
new cells or lines, responses, sensitive probabilities and labels, and gene attributions.

A mixin of the model class (as scvi-tools keeps ``get_normalized_expression`` and friends in
``RNASeqMixin``); it reads the trained module, the model's genes and ``drug_stats_``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from scdl._warnings import warn_user
from scdl.data import (
    LOW_GENE_OVERLAP,
    MIN_SHARED_GENES,
    check_counts,
    check_is_anndata,
    check_profiles,
    get_matrix,
    iter_profiles_from_expression,
    normalised_from_log1p,
    resolve_drugs,
    resolve_modality,
    shared_genes,
    stack_blocks,
    warn_renamed_genes,
)

from ._attribution import integrated_gradients
from ._drug_similarity import LineSimilarity

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

Modality = Literal["auto", "counts", "log1p", "profiles"]
Kind = Literal["value", "probability", "label", "sd", "similarity"]
#: what :meth:`DrugPredictionMixin.predict` returns per cell and drug (and per cell)
KINDS = ("value", "probability", "label", "sd", "similarity")


class DrugPredictionMixin:
    """Inference methods of :class:`~scdl.models.DrugResponseModel`."""

    @property
    def sensitive(self) -> str:
        """``"low"`` when a lower response means a more sensitive line (ln IC50), ``"high"``
        when a higher one does (activity area): as registered by ``setup_anndata``."""
        # models saved before the option existed were all trained on lower = sensitive
        return self.registry_["setup_args"].get("sensitive") or "low"

    def _run(self, profiles: np.ndarray, fn, batch_size: int = 1024) -> np.ndarray:
        """Apply ``fn`` (a module method) to profiles in chunks; concatenates on the last-but-
        one axis for member outputs and the first axis otherwise."""
        self.module.eval()
        device = self.device
        parts = []
        with torch.inference_mode():
            for start in range(0, profiles.shape[0], batch_size):
                x = torch.from_numpy(profiles[start : start + batch_size]).to(device)
                parts.append(fn(x).cpu().numpy())
        return np.concatenate(parts, axis=-2)

    def profiles(
        self,
        adata: AnnData | None = None,
        *,
        layer: str | None = None,
        modality: Modality = "auto",
        smooth_neighbors: int | None = None,
    ) -> np.ndarray:
        """The model's input for ``adata``: profiles over ``genes`` on the common scale.

        Parameters
        ----------
        adata
            Cells (raw counts) or bulk profiles (log-scale) with gene symbols; ``None`` uses
            the training lines.
        layer
            Layer to read; ``None`` uses ``adata.X``.
        modality
            ``"counts"`` (single cells or pseudobulk: log1p CP10k, neighbour smoothing),
            ``"log1p"`` (single cells as ``sc.pp.normalize_total`` + ``sc.pp.log1p`` leave
            them: read back to normalised counts, then as counts), ``"profiles"``
            (log-scale bulk expression) or ``"auto"``: counts if the matrix holds
            non-negative integers, else log1p when it is log1p of counts normalised to a
            constant total with mostly zeros (single cells; with a warning), profiles when at
            least 10% of its values are negative or fractional (a few odd values among
            integers raise a ValueError); see :func:`scdl.data.resolve_modality`.
        smooth_neighbors
            Override the model's neighbour smoothing for counts (``0``: none).

        Returns
        -------
        numpy.ndarray
            float32, cells x ``genes``. A gene absent from ``adata`` holds its mean over the
            training lines, the value at which it moves no prediction.

        Raises
        ------
        ValueError
            Too few of the model's genes in ``adata``; ``modality="counts"`` on data that
            are not raw counts; ``"auto"`` on integers with a few negative or fractional
            values; an unknown modality.
        """
        if adata is None:
            self._require_adata("predict", takes_adata=True)
            return self._bulk()[0]
        blocks = self._profile_blocks(
            adata, layer=layer, modality=modality, smooth_neighbors=smooth_neighbors
        )
        return stack_blocks(blocks, adata.n_obs, len(self.genes))

    def _profile_blocks(
        self,
        adata: AnnData | None,
        *,
        layer: str | None = None,
        modality: Modality = "auto",
        smooth_neighbors: int | None = None,
        chunk_rows: int = 256,
    ) -> Iterator[np.ndarray]:
        """:meth:`profiles` a block of at most ``chunk_rows`` rows at a time (float32, in
        order), so that a step reducing each block never holds the whole cells x genes matrix.
        Everything is checked (and the neighbours found) on the call, before the first block."""
        if adata is None:
            self._require_adata("predict", takes_adata=True)
            return iter([self._bulk()[0]])
        if modality not in ("auto", "counts", "log1p", "profiles"):
            raise ValueError(
                f"modality={modality!r} is not one of 'auto', 'counts', 'log1p', 'profiles'."
            )
        check_is_anndata(adata)
        # duplicated var names are refused only among the model's genes (gene_positions)
        x = get_matrix(adata, layer)
        present = self.genes.isin(adata.var_names)
        if present.sum() < min(MIN_SHARED_GENES, len(self.genes)):
            shared_genes(
                self.genes, adata.var_names, names=("model's genes", "data"), query_var=adata.var
            )
        warn_renamed_genes(self.genes, adata.var_names, np.asarray(present))
        # scanpy's and Seurat's usual layout: X cut to variable genes, every gene in .raw
        in_raw = 0 if adata.raw is None else int(self.genes.isin(adata.raw.var_names).sum())
        raw_fix = (
            f" adata.raw holds {in_raw} of the model's genes: predict from it, "
            "`raw = adata.raw.to_adata(); scdl.tl.drug_response(raw, model=model)` (the same "
            "cells), then copy raw.obsm's and raw.uns' 'scdl_drug' entries to adata."
            if in_raw > present.sum()
            else ""
        )
        if present.mean() < LOW_GENE_OVERLAP:
            warn_user(
                f"{(~present).sum()} of the model's {len(self.genes)} genes are missing from "
                "the data; each is set to its mean over the training lines, so it moves no "
                f"prediction. Predictions may be less reliable.{raw_fix}",
                UserWarning,
            )
        if modality == "auto":
            modality = resolve_modality(adata, layer)
        if modality in ("counts", "log1p"):
            k = self.smooth_neighbors if smooth_neighbors is None else smooth_neighbors
            if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
                raise ValueError(f"smooth_neighbors must be an integer >= 0, got {k!r}.")
            if modality == "log1p":
                try:
                    x = normalised_from_log1p(adata, layer)
                except ValueError as err:  # e.g. X cut to variable genes: totals spread
                    if not raw_fix:
                        raise
                    raise ValueError(f"{err}{raw_fix}") from None
            else:
                check_counts(adata, layer)
            blocks = self._count_profile_blocks(x, adata.var_names, k, chunk_rows=chunk_rows)
        else:
            check_profiles(adata, layer)
            blocks = iter_profiles_from_expression(
                x, adata.var_names, self.genes, scale=self.input_scale, chunk_rows=chunk_rows
            )
        if present.all():
            return blocks
        # The profile functions leave an absent gene at 0, the row's mean; the model
        # centres each gene on its mean over the training lines, so only that value is
        # neutral (0 shifted every prediction one way).
        typical = self.module.gene_mean.detach().cpu().numpy().astype(np.float32)[~present]

        def filled() -> Iterator[np.ndarray]:
            for block in blocks:
                block[:, ~present] = typical
                yield block

        return filled()

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        drugs: str | Sequence[str] | pd.Index | np.ndarray | None = None,
        kind: Kind | Sequence[Kind] = "value",
        layer: str | None = None,
        modality: Modality = "auto",
        smooth_neighbors: int | None = None,
    ) -> pd.DataFrame | dict[str, pd.DataFrame]:
        """Predicted response of each cell (or line) to each drug.

        Parameters
        ----------
        adata
            Cells (raw counts) or bulk profiles; ``None`` uses the training lines.
        drugs
            Drug name(s); ``None`` for every drug the model knows (``drugs``).
        kind
            ``"value"``: the response in the table's units (ln IC50: lower = more
            sensitive); ``"probability"``: the sensitive probability,
            ``Phi((median - value) / residual_sd)`` (see the class docstring; the sign turns
            when :attr:`sensitive` is ``"high"``); ``"label"``: 1 (sensitive) where the value
            is on the sensitive side of the drug's median over the training lines
            (``drug_stats_["median"]``, the threshold; probability > 0.5), else 0;
            ``"sd"``: the sd of the value over ensemble members, their disagreement (not
            the error, which ``drug_stats_["residual_sd"]`` measures on held-out lines);
            ``"similarity"``: per cell, not per drug, a DataFrame of ``similarity``, the
            largest Pearson correlation of the cell's profile with a training line's over the
            genes ``adata`` holds (NaN for a profile constant over them), and
            ``nearest_line``, that line's name (needs the model's training lines: not for a
            model loaded without data). Cells unlike every cancer line the model was trained
            on (immune or stromal cells of a tumour sample, another tissue) score lower than
            the query's cancer cells; their predictions carry no meaning. Not a calibrated
            cut: compare cells or groups of one query.
            A list of kinds returns a dict of DataFrames by kind, from one pass over the data
            (the cells' profiles, with their neighbour smoothing, are computed once). The
            profiles are made and reduced to the drugs' columns a block of cells at a time,
            so the dense cells x genes matrix of :meth:`profiles` is never held.
        layer, modality, smooth_neighbors
            As in :meth:`profiles`.

        Returns
        -------
        DataFrame of cells x drugs, indexed by ``adata.obs_names`` (a dict of them, by kind,
        for a list of kinds).

        Raises
        ------
        KeyError
            A drug the model does not know (close matches are listed).
        ValueError
            Unknown ``kind``; see :meth:`profiles`.
        """
        self._check_if_trained(warn=False)
        kinds = [kind] if isinstance(kind, str) else list(kind)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"kind={kind!r}: each kind must be one of {KINDS}.")
        drugs = resolve_drugs(drugs, self.drugs)
        near = None
        if "similarity" in kinds:  # checked before the (slow) profiles and their neighbours
            if self.adata is None:
                raise ValueError(
                    "kind='similarity' compares cells with the model's training lines, which a "
                    "model loaded without data does not hold: load it with "
                    "`DrugResponseModel.load(dir_path, adata=bulk)` (the bulk cell lines it was "
                    "trained on, with their response table)."
                )
        blocks = self._profile_blocks(
            adata, layer=layer, modality=modality, smooth_neighbors=smooth_neighbors
        )
        if "similarity" in kinds:  # after the genes' checks: no overlap gave numpy's warnings
            present = (
                np.ones(len(self.genes), dtype=bool)
                if adata is None
                else np.asarray(self.genes.isin(adata.var_names))
            )
            near = LineSimilarity(self._bulk()[0], self.adata.obs_names, present)
        cols = [self.drugs.index(d) for d in drugs]
        index = self.adata.obs_names if adata is None else adata.obs_names
        want_sd = "sd" in kinds
        want_value = bool(set(kinds) & {"value", "probability", "label"})
        # each block of profiles is reduced to the drugs' columns before the next is made
        sds, values = [], []
        for block in blocks:
            if near is not None:
                near.add(block)
            if want_sd:
                members = self._run(block, lambda x: self.module.member_predictions(x, cols))
                sds.append(members.std(axis=0))
                if want_value:  # the ensemble's mean: the members are not run again
                    values.append(members.mean(axis=0))
            elif want_value:
                values.append(self._run(block, lambda x: self.module.predict(x, cols)))

        def table(parts: list) -> pd.DataFrame:
            stacked = np.concatenate(parts) if parts else np.zeros((0, len(cols)), np.float32)
            return pd.DataFrame(stacked, index=index.copy(), columns=pd.Index(drugs))

        out = {}
        if want_sd:
            out["sd"] = table(sds)
        if want_value:
            value = table(values)
            out["value"] = value
            out["probability"] = self.sensitive_probability(value)
            out["label"] = self.sensitive_label(value)
        if near is not None:
            out["similarity"] = near.table(index)
        out = {k: out[k] for k in kinds}
        return out[kind] if isinstance(kind, str) else out

    def sensitive_probability(self, values: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
        """The sensitive probability ``Phi((median - value) / residual_sd)`` of predicted
        responses, as ``predict(kind="probability")`` gives it, without predicting again.

        Parameters
        ----------
        values
            Predicted responses, cells x drugs, as :meth:`predict` returns them (columns:
            the model's drug names), or one drug's column of them (a Series named by the
            drug: a Series comes back).

        Returns
        -------
        pandas.DataFrame
            Probabilities of the same shape, index and columns: the chance that each profile
            is more sensitive than the drug's median training line (below it, or above it when
            :attr:`sensitive` is ``"high"``), calibrated on bulk lines; for cells a score to
            compare within a drug (see the class notes).
        """
        from scipy.special import ndtr

        values, one = _response_table(values, self.drugs)
        stats = self._stats(values)
        z = (stats["median"].to_numpy() - values.to_numpy()) / stats["residual_sd"].to_numpy()
        if self.sensitive == "high":
            z = -z
        out = pd.DataFrame(ndtr(z), index=values.index.copy(), columns=values.columns.copy())
        return out.iloc[:, 0] if one else out

    def sensitive_label(self, values: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
        """Binary calls of predicted responses, as ``predict(kind="label")`` gives them.

        Parameters
        ----------
        values
            Predicted responses, cells x drugs, as :meth:`predict` returns them, or one drug's
            column of them (a Series named by the drug: a Series comes back).

        Returns
        -------
        pandas.DataFrame
            int8, of the same shape, index and columns: 1 (sensitive) where the response is
            below the drug's median over the training lines (above it when :attr:`sensitive`
            is ``"high"``), else 0.
        """
        values, one = _response_table(values, self.drugs)
        median = self._stats(values)["median"].to_numpy()
        sensitive = values > median if self.sensitive == "high" else values < median
        sensitive = sensitive.astype(np.int8)
        return sensitive.iloc[:, 0] if one else sensitive

    def _stats(self, values: pd.DataFrame) -> pd.DataFrame:
        if self.drug_stats_ is None:
            raise RuntimeError("The model is not trained yet: call `.train()` first.")
        return self.drug_stats_.loc[resolve_drugs(list(values.columns), self.drugs)]

    def gene_attributions(
        self,
        adata: AnnData | None = None,
        *,
        layer: str | None = None,
        modality: Modality = "auto",
        drug: str,
        n_steps: int = 32,
        batch_size: int = 256,
    ) -> pd.DataFrame:
        """Genes ranked by how much they drive the predicted response to ``drug``.

        Integrated gradients of the ensemble's predicted response with respect to the
        encoder's input, the profile on the common scale, from the mean profile of the
        training lines (a typical line) to each cell's profile. A gene's attribution is in the
        response's units: positive means that where the cells differ from a typical training
        line in this gene, the predicted response goes up: towards resistance for ln IC50
        (negative, towards sensitivity), towards sensitivity when :attr:`sensitive` is
        ``"high"`` (activity area). A profile equal to the typical line has no drivers. Per
        cell the attributions sum to its prediction minus the typical line's. A gene the data
        lack holds the typical value and gets 0; so does a gene without spread over the bulk
        lines on the model's input scale (``constant_in_training``: its standardised input is
        0 whatever the cells hold, as it carries no signal the model could learn).

        Parameters
        ----------
        adata, layer, modality
            As in :meth:`predict` (``None``: the training lines).
        drug
            One drug name.
        n_steps
            Integration steps (a ridge-only model, ``prediction="wide"``, is linear in the
            profile: its attributions are exact in one step, which it takes).
        batch_size
            Cells per chunk of the integration. The profiles are made a block of
            ``max(256, batch_size)`` cells at a time and the attributions summed over cells
            as they come, so neither cells x genes matrix is held whole.

        Returns
        -------
        pandas.DataFrame
            One row per gene, sorted by ``|attribution|`` (the layout of
            :meth:`scdl.models.CellTypeTransformer.gene_attributions`, which
            :func:`scdl.pl.attributions` plots): ``label`` (the drug), ``gene``,
            ``attribution`` (signed mean over cells), ``rank``, ``mean_abs_attribution`` (mean
            of its absolute value), ``mean_input`` (mean input level on the common scale),
            ``constant_in_training`` (the gene's spread over the bulk lines, on the model's
            input scale after ``input_scale``, is under 1e-4 of the median gene's: its
            standardised input and its attribution are 0 by construction, not a finding of no
            effect; ``mean_input`` still shows the cells' level, which the model does not use).
            ``attrs`` holds ``response_key`` and ``sensitive``, which the plot's axis reads.
        """
        from scdl.data import check_positive_int

        self._check_if_trained(warn=False)
        if not isinstance(drug, str):
            raise TypeError(f"`drug` must be one drug name (str), got {type(drug).__name__}.")
        check_positive_int(n_steps, "n_steps")
        check_positive_int(batch_size, "batch_size")
        (drug,) = resolve_drugs([drug], self.drugs)
        j = self.drugs.index(drug)
        # blocks of profiles as large as the integration's chunks (256 cells at least)
        blocks = self._profile_blocks(
            adata, layer=layer, modality=modality, chunk_rows=max(256, batch_size)
        )
        self.module.eval()
        # from zeros (the median rank / mean z-score) the attributions explained the gap to an
        # arbitrary point: the same bulk-vs-cell offsets topped every line's list
        typical = self.module.gene_mean[None]
        # sums over cells, a block of profiles at a time: never cells x genes at once
        n_genes = len(self.genes)
        total, total_abs, total_input = (np.zeros(n_genes, dtype=np.float64) for _ in range(3))
        n_cells = 0
        for block in blocks:
            attr = integrated_gradients(
                lambda x: self.module.predict(x, [j]),
                torch.from_numpy(block).to(self.device),
                target=0,
                baseline=typical.to(self.device, torch.float32),
                # the ridges alone are linear in the profile: one step is exact (32x less work)
                n_steps=1 if self.module.prediction == "wide" else n_steps,
                batch_size=batch_size,
            )
            total += attr.sum(axis=0, dtype=np.float64)
            total_abs += np.abs(attr).sum(axis=0, dtype=np.float64)
            total_input += block.sum(axis=0, dtype=np.float64)
            n_cells += len(block)
        n_cells = max(n_cells, 1)
        mean = total / n_cells
        order = np.argsort(-np.abs(mean), kind="stable")
        # an infinite scale zeroes a gene without spread in the bulk (DrugResponseModel)
        constant = ~torch.isfinite(self.module.gene_scale).cpu().numpy()
        out = pd.DataFrame(
            {
                "label": drug,
                "gene": np.asarray(self.genes, dtype=object)[order],
                "attribution": mean[order],
                "rank": np.arange(1, len(order) + 1),
                "mean_abs_attribution": (total_abs / n_cells)[order],
                "mean_input": (total_input / n_cells)[order],
                "constant_in_training": constant[order],
            }
        )
        # what the units and signs mean, for pl.attributions' axis
        out.attrs.update(
            response_key=str(self.registry_["setup_args"]["response_key"]),
            sensitive=self.sensitive,
        )
        return out


def _response_table(values, drugs) -> tuple[pd.DataFrame, bool]:
    """``values`` as the cells x drugs table the calls read, and whether it was one drug's
    column (a Series named by one of the model's ``drugs``, e.g. ``pred["Gefitinib"]``; a
    row of one cell, named by its barcode, is refused)."""
    if isinstance(values, pd.Series):
        named = {str(d).casefold() for d in drugs}
        if values.name is None or str(values.name).casefold() not in named:
            raise TypeError(
                f"A Series named {values.name!r} is not one of the model's drugs' columns: pass "
                "the cells x drugs DataFrame `predict()` returns, one drug's column of it "
                "(`pred['Gefitinib']`), or for one cell its row as a table (`pred.loc[[cell]]`)."
            )
        return values.to_frame(), True
    if not isinstance(values, pd.DataFrame):
        raise TypeError(
            "values must be the cells x drugs DataFrame `predict()` returns, or one drug's "
            f"column of it (a Series named by the drug), got {type(values).__name__}."
        )
    return values, False
