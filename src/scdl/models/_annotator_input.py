"""The query's input to a :class:`~scdl.models.CellTypeTransformer` call: its matrix read
in the model's gene order (raw counts, or log-normalised values read as their counts), and the
warnings about cells that cannot be typed (no count in the model's genes, fewer counts than the
floor) or too few for the Unknown call.

A mixin of :class:`._annotator_predict.AnnotatorPredictionMixin` and functions it calls.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from scvi import REGISTRY_KEYS

from scdl._warnings import warn_user
from scdl.data import (
    LOW_GENE_OVERLAP,
    CSRTensors,
    align_to_genes,
    check_is_anndata,
    counts_from_log1p,
    gather_counts,
    gene_columns,
    get_matrix,
    in_memory,
    input_kind,
    log1p_count_units,
    warn_renamed_genes,
)

from ._annotator_batches import READING_ONE_SAMPLE
from ._mixing import MIN_QUERY_CELLS

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


class AnnotatorInputMixin:
    """Reads a query for a call (:meth:`_query_matrix`)."""

    def _query_matrix(self, adata: AnnData | None, layer: str | None, min_gene_overlap: float):
        """The query's counts in the model's gene order on the model's device, the mask of
        the model's genes it holds (``None``: all), and what the user's matrix holds
        (``"counts"``, or ``"log1p"``: log-normalised values, read as their counts)."""

        if not self.is_trained_:  # scvi-tools' own methods refuse an untrained model too
            raise ValueError(
                "The annotator is not trained: call .train() first (pretrain() alone learns no "
                "cell types; after pretrain(), train() fine-tunes on the labels)."
            )
        dev = self.module.device
        if adata is None:
            self._require_adata("annotate", takes_adata=True)
            x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            return CSRTensors.from_scipy(sparse.csr_matrix(in_memory(x)), dev), None, "counts"
        check_is_anndata(adata)
        if adata.n_obs == 0:
            raise ValueError(
                f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes); there are "
                "no cells to annotate."
            )
        matrix = get_matrix(adata, layer)
        with _naming_raw(adata, layer):
            try:
                col, present = gene_columns(
                    adata, self.get_var_names(), min_overlap=min_gene_overlap, what="model"
                )
            except ValueError:
                input_kind(adata, layer)  # counts that are wrong are the first thing to fix
                raise
        lookup = np.full(adata.n_vars, -1, dtype=np.int64)
        lookup[col[present]] = np.flatnonzero(present)
        # CSR counts: gathered and checked on the device (only the model's genes are read)
        x = gather_counts(matrix, lookup, len(present), dev)
        xs, kind = None, "counts"
        numeric = np.issubdtype(getattr(matrix, "dtype", np.dtype(object)), np.number)
        if x is None and numeric:  # dense or backed: the model's genes checked as for CSR
            xs, present = align_to_genes(
                adata, self.get_var_names(), layer=layer, min_overlap=min_gene_overlap
            )
            x = gather_counts(xs, np.arange(len(present)), len(present), dev)
        if x is None:  # not counts: the full check explains, or finds log1p
            with _naming_raw(adata, layer):
                kind, _ = input_kind(adata, layer)  # raw counts, or log1p of normalised counts
            if xs is None:
                xs, present = align_to_genes(
                    adata, self.get_var_names(), layer=layer, min_overlap=min_gene_overlap
                )
            if kind == "log1p":
                # the counts themselves where each cell's one count shows (its smallest value
                # over all genes): the query then reads exactly as its counts do, also where
                # the order of the cells and float sums steer Leiden (the over-clustering)
                units = log1p_count_units(get_matrix(adata, layer))
                counts = counts_from_log1p(xs, units)
                if counts is None:  # expm1: counts per a constant total, the same log1p(CP10k)
                    counts = sparse.csr_matrix(xs, dtype=np.float32, copy=True)
                    counts.data = np.expm1(counts.data)
                xs = counts
            x = CSRTensors.from_scipy(xs, dev)
        warn_renamed_genes(self.get_var_names(), adata.var_names, present)
        if present.mean() < LOW_GENE_OVERLAP:  # calls lose accuracy: said, not only logged
            warn_user(
                f"The query holds {int(present.sum())} of the model's {len(present)} genes "
                f"({present.mean():.0%}); the rest count as unmeasured, and calls made without "
                "them are less accurate. Check the gene identifiers (symbols vs IDs, a var "
                "column), or use a model trained on the genes the query has.",
                UserWarning,
            )
        elif not present.all():
            logger.info(
                "Query holds %d of the model's %d genes; the rest count as unmeasured.",
                present.sum(),
                len(present),
            )
        return x, (None if present.all() else present), kind


def warn_untyped_cells(
    values: np.ndarray,
    few: np.ndarray,
    floor: float,
    totals: np.ndarray | None,
    *,
    layer: str | None,
    kind: str,
    unknown_call: bool,
) -> None:
    """Warn of the query cells without a count in the model's genes (``values``, their sums,
    0) and of those under the count ``floor`` (``few``; ``totals``: the cells' counts), said
    together with the code that filters them out; nothing when every cell holds counts."""
    untyped = (values == 0) | few
    if untyped.all() and not few.any():
        warn_user(
            f"No cell of the query has a count in the model's genes (every value of "
            f"{'adata.X' if layer is None else repr(layer)} in them is 0): "
            f"{'every cell is Unknown' if unknown_call else 'every call is the same guess'}. "
            "Pass the layer or file that holds the counts.",
            UserWarning,
        )
    elif untyped.any():
        # empty cells and cells under the count floor, said together with one filter
        blank = values == 0
        said = []
        if blank.any():
            said.append(
                f"{int(blank.sum())} of {len(values)} query cells have no count in the "
                f"model's genes (every value of {'adata.X' if layer is None else repr(layer)}"
                " in them is 0): NaN confidence and probabilities"
            )
        if few.any():
            said.append(
                (f"{int(few.sum())} more" if blank.any() else f"{int(few.sum())} of {len(few)}")
                + f" query cells hold fewer than {floor:.3g} counts in the model's genes "
                f"(the floor: 1/16 of the query's median, {np.median(totals[totals > 0]):g}, "
                "at most 10 and at most 1/16 of the reference's shallowest type): too few to "
                "type a cell by"
            )
        warn_user(
            "; ".join(said)
            + (
                ". They are called Unknown and left out of the clusters the Unknown call checks."
                if unknown_call
                else ". Their calls are guesses."
            )
            + _shallow_filter_fix(
                layer,
                int(np.ceil(floor)) if few.any() else 1,
                kind == "counts",  # the user's values (log1p ones are read as counts)
            ),
            UserWarning,
        )


def warn_small_query(typed: int, beyond: np.ndarray) -> None:
    """Warn that a query of ``typed`` cells with counts, fewer than ``MIN_QUERY_CELLS``, gets no
    Unknown call; ``beyond``: whether each of them lies beyond its type's per-cell novelty
    threshold (the call is skipped, so this is the one caveat the user gets)."""
    warn_user(
        f"The query has {typed} cell{'s' * (typed != 1)} with counts; the Unknown call "
        "compares its clusters using the query's own gene statistics and needs at least "
        f"{MIN_QUERY_CELLS}. It is skipped: every cell takes its most probable type. "
        f"{int(beyond.sum())} of them ({beyond.mean():.0%}) lie beyond their type's "
        "per-cell novelty threshold (calibrated on held-out reference cells; the "
        "`novelty` column of `model.annotate_cells`): a few do in a query of the "
        "reference's kind (up to a third under another chemistry), nearly all in cells "
        "of another tissue. "
        + (
            "This sample is read alone (`batch_key`): annotate it without `batch_key`, "
            "with the query's other cells, to have them checked."
            if READING_ONE_SAMPLE.get()
            else "Annotate these cells together with more cells of their sample to have "
            "them checked."
        ),
        UserWarning,
    )


def _shallow_filter_fix(layer: str | None, floor: int, raw_counts: bool) -> str:
    """The code that drops cells under ``floor`` counts in the model's genes, on the matrix
    annotate read: counts summed, or for log-normalised values the genes detected (each
    holds at least one count, so every cell kept passes the floor)."""
    place = "X" if layer is None else f"layers[{layer!r}]"
    kept = f"adata[:, genes].{place}" + (".sum(1)" if raw_counts else " > 0).sum(1)")
    kept = ("np.asarray(" if raw_counts else "np.asarray((") + kept
    return (
        " Filter them out first on the model's genes, e.g. `genes = adata.var_names"
        f".intersection(model.get_var_names()); adata = adata[{kept}).ravel() >= {floor}].copy()`"
        + (
            ""
            if raw_counts  # a gene detected holds one count or more: a few cells just above
            else " (genes detected, as the values are log-normalised: it can also drop a few "
            "cells just above the floor)"
        )
        + " (`model`: the annotator, e.g. `scdl.pretrained.load('pbmc_kang2018')`)."
    )


@contextlib.contextmanager
def _naming_raw(adata, layer):
    """A query refused (neither counts nor log-normalised data, or lacking the model's
    genes) in scanpy's usual layout, scaled highly variable genes in X and the full matrix
    in ``.raw``: the message names ``.raw`` and how to annotate it."""
    try:
        yield
    except ValueError as e:
        if adata.raw is None or layer is not None:
            raise
        raise ValueError(
            f"{e} adata.raw holds {adata.raw.n_vars} genes: if those are the counts (or "
            "log-normalised values) before gene selection and scaling, annotate them: `raw = "
            "adata.raw.to_adata(); scdl.tl.annotate(raw, ...)`, then copy raw.obs's new "
            "columns to adata.obs."
        ) from None
