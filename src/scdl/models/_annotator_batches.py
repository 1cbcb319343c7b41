"""The annotator on a query of several samples: each sample read as a dataset of its own.

What the annotator reads from a query as a whole (the shift it shares with the reference, its
own gene statistics for ``adapt_to_query``, its clusters for the Unknown call and for majority
voting) is one sample's where samples differ by chemistry, donor or condition: a cluster of
one chemistry's cells in a query of two is unlike the shift the whole query shares and can
be called Unknown for it. With a ``batch_key`` each sample is annotated apart and the calls
are joined in the cells' order, as ``anndata.concat`` of separate calls would give them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from scdl._warnings import warn_user

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
    graph is cut to each sample's cells. ``calls.attrs["batches"]`` is a table (one row per
    sample: its cells, the share called Unknown and how it was read, :data:`READING_ATTRS`).
    A warning raised for every sample is said once; one raised for some of them names them.
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
    calls_parts, probs_parts, rows, positions, said = [], [], [], [], {}
    offsets = {"cluster": 0, "over_cluster": 0}
    for code, name in enumerate(names):
        idx = np.flatnonzero(codes == code)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            calls, probs = model.annotate_cells(
                adata[idx],
                over_clustering_graph=None if graph is None else graph[idx][:, idx],
                **kwargs,
            )
        for w in caught:
            said.setdefault((w.category, str(w.message)), []).append(name)
        for column in offsets:  # -1: not clustered
            ids = calls[column].to_numpy()
            if (ids >= 0).any():
                calls[column] = np.where(ids >= 0, ids + offsets[column], -1)
                offsets[column] = int(calls[column].max()) + 1
        row = {"n_cells": len(idx), "unknown_fraction": float(calls["is_unknown"].mean())}
        # "" for a reading not made: a text column with NaN in it cannot be written to .h5ad
        row.update(
            {
                k: calls.attrs.get(k, "" if k == "composition_read" else np.nan)
                for k in READING_ATTRS
            }
        )
        rows.append(row)
        calls_parts.append(calls)
        probs_parts.append(probs)
        positions.append(idx)
    back = np.argsort(np.concatenate(positions))
    calls = pd.concat(calls_parts).iloc[back]
    probs = pd.concat(probs_parts).iloc[back]
    calls.attrs = {"batches": pd.DataFrame(rows, index=pd.Index(names, name="batch"))}
    for (category, message), where in said.items():
        if len(where) < len(names):
            shown = ", ".join(repr(w) for w in where[:5]) + (", ..." if len(where) > 5 else "")
            message = f"In sample{'s' * (len(where) > 1)} {shown}: {message}"
        warn_user(message, category)
    return calls, probs
