"""The annotator on a query of several samples: each sample read as a dataset of its own.

What the annotator reads from a query as a whole (the shift it shares with the reference, its
own gene statistics for ``adapt_to_query``, its clusters for the Unknown call and for majority
voting) is one sample's where samples differ by chemistry or protocol: a cluster of
one chemistry's cells in a query of two is unlike the shift the whole query shares and can
be called Unknown for it. With a ``batch_key`` each sample is annotated apart and the calls
are joined in the cells' order, as ``anndata.concat`` of separate calls would give them.
"""

from __future__ import annotations

import warnings
from contextvars import ContextVar

import numpy as np
import pandas as pd
from scipy import sparse

from ._mixing import MIN_QUERY_CELLS

#: set while one sample of a ``batch_key`` query is read, so that advice given to a small
#: query ("annotate these cells with more cells of their sample") fits a sample read apart
READING_ONE_SAMPLE: ContextVar[bool] = ContextVar("scdl_reading_one_sample", default=False)

#: ``calls.attrs`` entries that describe how one dataset was read (written per sample)
READING_ATTRS = (
    "adapt_to_query",
    "recentre_steps",
    "median_reference_share",
    "mixing_level",
    "composition_read",
)


def sample_codes(batches: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each cell's sample (an index into the names) and the samples' names, in a categorical's
    order, else sorted; samples without cells are left out."""
    cat = batches.astype("category").cat.remove_unused_categories()  # a categorical keeps its order
    return cat.cat.codes.to_numpy(), [str(c) for c in cat.cat.categories]


def annotate_by_batch(model, adata, batches: pd.Series, *, over_clustering_graph=None, **kwargs):
    """``model.annotate_cells`` on each sample of ``adata`` apart, joined in the cells' order.

    Cluster ids (the Unknown call's ``cluster`` and the ``over_cluster`` of majority voting)
    are numbered on from one sample to the next, so that no two samples share one. A user's
    graph is cut to each sample's cells. ``calls.attrs["batches"]`` maps each sample's name to
    its cells, the share called Unknown and how it was read (:data:`READING_ATTRS`).

    Warnings pass the user's filters as each sample raises them (an "error" filter stops at
    the sample that raised it); each is then said once, where it was raised, with the samples
    that raised it named unless every sample did.
    """
    codes, names = sample_codes(batches)
    if not names:  # no cells: refused as a query without samples is
        return model.annotate_cells(adata, over_clustering_graph=over_clustering_graph, **kwargs)
    graph = None
    if over_clustering_graph is not None:
        n = adata.n_obs
        if getattr(over_clustering_graph, "shape", None) != (n, n):
            raise ValueError(
                f"over_clustering_graph must be a cells x cells matrix ({n} x {n}), got shape "
                f"{getattr(over_clustering_graph, 'shape', None)}."
            )
        graph = sparse.csr_matrix(over_clustering_graph)
    calls_parts, probs_parts, positions, table = [], [], [], {}
    said: dict[tuple, list[str]] = {}
    offsets = {"cluster": 0, "over_cluster": 0}
    try:
        for code, name in enumerate(names):
            idx = np.flatnonzero(codes == code)
            # recorded as the user's filters let them through, to be said once for all samples
            with warnings.catch_warnings(record=True) as caught:
                # one sample of several, which with the others would be read as a whole
                token = READING_ONE_SAMPLE.set(len(names) > 1 and adata.n_obs >= MIN_QUERY_CELLS)
                try:
                    calls, probs = model.annotate_cells(
                        adata[idx],
                        over_clustering_graph=None if graph is None else graph[idx][:, idx],
                        **kwargs,
                    )
                finally:
                    READING_ONE_SAMPLE.reset(token)
            for w in caught:
                where = said.setdefault((w.category, str(w.message), w.filename, w.lineno), [])
                if name not in where:
                    where.append(name)
            for column in offsets:  # -1: not clustered
                ids = calls[column].to_numpy()
                if (ids >= 0).any():
                    calls[column] = np.where(ids >= 0, ids + offsets[column], -1)
                    offsets[column] = int(calls[column].max()) + 1
            row = {"n_cells": len(idx), "unknown_fraction": float(calls["is_unknown"].mean())}
            # "" for a reading not made: a text column with NaN cannot be written to .h5ad
            for k in READING_ATTRS:
                row[k] = calls.attrs.get(k, "" if k == "composition_read" else np.nan)
            table[name] = row
            calls_parts.append(calls)
            probs_parts.append(probs)
            positions.append(idx)
    finally:  # the samples' warnings, also where a later sample fails
        _say(said, len(names))
    back = np.argsort(np.concatenate(positions))
    calls = pd.concat(calls_parts).iloc[back]
    probs = pd.concat(probs_parts).iloc[back]
    # a dict, not a DataFrame: pandas compares attrs when concatenating calls
    calls.attrs = {"batches": table}
    return calls, probs


def _say(said: dict, n_samples: int) -> None:
    """Each recorded warning once, where it was raised, naming its samples unless all."""
    for (category, message, filename, lineno), where in said.items():
        if len(where) < n_samples:
            shown = ", ".join(repr(w) for w in where[:5]) + (", ..." if len(where) > 5 else "")
            message = f"{message} (sample{'s' * (len(where) > 1)} {shown})"
        warnings.warn_explicit(message, category, filename, lineno)
