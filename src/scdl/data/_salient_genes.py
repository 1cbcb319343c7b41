"""Rank genes by how much a model's salient latent space changes their decoded expression."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


def salient_gene_table(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    var_names: Sequence[str],
    *,
    library_size: float = 1e4,
) -> pd.DataFrame:
    """Rank genes by how much decoding target cells with their salient code changes them.

    Parameters
    ----------
    chunks
        Pairs ``(with_salient, without_salient)`` of normalised expression (cells x genes,
        rows summing to 1) for target cells: decoded from ``[z, s]`` and from ``[z, 0]``.
    var_names
        Gene names, in column order.
    library_size
        Scale of the expression before the log (counts per ``library_size``); the pseudocount
        of 1 on that scale keeps barely expressed genes from ranking on noise.

    Returns
    -------
    pandas.DataFrame
        Sorted by ``score``: ``gene``; ``score``, the mean over target cells of
        ``|log2 fold change|`` between the two decodings; ``lfc_mean``, its signed mean (> 0:
        the salient space raises the gene); ``mean_with_salient`` and ``mean_without_salient``
        (mean expression per ``library_size`` counts).
    """
    n = 0
    sums = None
    for full, shared in chunks:
        full = np.asarray(full, dtype=np.float64) * library_size
        shared = np.asarray(shared, dtype=np.float64) * library_size
        lfc = np.log2(full + 1) - np.log2(shared + 1)
        part = np.stack([np.abs(lfc).sum(0), lfc.sum(0), full.sum(0), shared.sum(0)])
        sums = part if sums is None else sums + part
        n += full.shape[0]
    if not n:
        raise ValueError("No target cells to score genes on.")
    mean = sums / n
    df = pd.DataFrame(
        {
            "gene": np.asarray(var_names, dtype=object),
            "score": mean[0],
            "lfc_mean": mean[1],
            "mean_with_salient": mean[2],
            "mean_without_salient": mean[3],
        }
    )
    return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
