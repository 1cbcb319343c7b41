"""Rank genes by how much a model's salient latent space changes their decoded expression."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence


#: a gene decoded more than this many log2 units (per ``library_size`` counts, pseudocount 1)
#: from its observed mean in the target cells is a gene the decoder does not fit: a gene of
#: tiny inverse dispersion, whose likelihood barely constrains its mean, drifted 42-fold from
#: the data (Kang 14k PBMCs on every gene) while 99% of genes stayed within 0.16 (review). The
#: same bound holds the decoding without the salient code to the background cells like the
#: target cells (99% of genes within 0.27-0.68 on Kang's PBMCs at the defaults, stop 80)
MAX_FIT_LOG2 = 2.0


def salient_gene_table(
    chunks: Iterable[tuple[np.ndarray, ...]],
    var_names: Sequence[str],
    *,
    library_size: float = 1e4,
    background: np.ndarray | None = None,
) -> pd.DataFrame:
    """Rank genes by how much decoding target cells with their salient code changes them.

    Parameters
    ----------
    chunks
        Pairs ``(with_salient, without_salient)`` of normalised expression (cells x genes,
        rows summing to 1) for target cells: decoded from ``[z, s]`` and from ``[z, 0]``;
        or four arrays: those two, the cells' observed counts (any scale: each row is
        divided by its total; a cell without counts adds zeros) and the normalised expression
        the model expects with the salient code (the first array for a negative binomial,
        ``(1 - zi_probs) * scale`` for a zero-inflated one); or five: also the expression it
        expects without the salient code (the second array for a negative binomial).
    var_names
        Gene names, in column order.
    library_size
        Scale of the expression before the log (counts per ``library_size``); the pseudocount
        of 1 on that scale keeps barely expressed genes from ranking on noise.
    background
        Observed expression (rows summing to 1, averaged) of the background cells like the
        target cells, the data the decoding without the salient code stands for (e.g. each
        target cell's nearest background cells in the shared space, pooled); needs chunks of
        four or five arrays. ``None``: that side is not checked.

    Returns
    -------
    pandas.DataFrame
        ``gene``; ``score``, the mean over target cells of ``|log2 fold change|`` between the
        two decodings; ``lfc_mean``, its signed mean (> 0: the salient space raises the gene);
        ``mean_with_salient`` and ``mean_without_salient`` (mean expression per
        ``library_size`` counts). With the counts also ``mean_observed`` (the same
        scale) and ``fits_data``: whether the expected mean with the salient code is within
        4-fold (``MAX_FIT_LOG2``, pseudocount 1) of the observed one and, with
        ``background``, the one without it no more than 4-fold past ``mean_background``
        (the background's observed mean, same scale), on the side away from the decoding
        with the code; between the two it only understates the change. A gene the decoder
        does not fit has a fold change that says nothing about the data. Sorted by
        ``score``, genes that do not fit the data last.
    """
    n = 0
    sums = None
    for chunk in chunks:
        full, shared = (np.asarray(c, dtype=np.float64) * library_size for c in chunk[:2])
        lfc = np.log2(full + 1) - np.log2(shared + 1)
        rows = [np.abs(lfc).sum(0), lfc.sum(0), full.sum(0), shared.sum(0)]
        if len(chunk) in (4, 5):
            counts = np.asarray(chunk[2], dtype=np.float64)
            total = counts.sum(1, keepdims=True)
            rows.append((counts / np.where(total > 0, total, 1.0)).sum(0) * library_size)
            for expected in chunk[3:]:
                rows.append(np.asarray(expected, dtype=np.float64).sum(0) * library_size)
            if len(chunk) == 4:  # a negative binomial expects the decoding without the code
                rows.append(shared.sum(0))
        elif len(chunk) != 2:
            raise ValueError(
                f"Each chunk holds 2, 4 or 5 arrays (with and without the salient code; then "
                f"the counts and the expected expression with, then without, it), got "
                f"{len(chunk)}."
            )
        part = np.stack(rows)
        sums = part if sums is None else sums + part
        n += full.shape[0]
    if not n:
        raise ValueError("No target cells to score genes on.")
    if background is not None and len(sums) < 5:
        raise ValueError(
            "background needs the counts: pass chunks of 4 or 5 arrays to check the decoding "
            "without the salient code against it."
        )
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
    if len(mean) > 4:
        df["mean_observed"] = mean[4]
        fits = _within_fit(mean[5], mean[4])
        if background is not None:
            background = np.asarray(background, dtype=np.float64).ravel()
            if len(background) != len(df):
                raise ValueError(
                    f"background holds {len(background)} values for {len(df)} genes: pass one "
                    "per gene, in the order of var_names."
                )
            df["mean_background"] = background * library_size
            # the decoding without the code may sit between the background's data and the
            # target cells' (the shared space kept part of the change, which is then
            # understated, as for ISG15 on Kang's PBMCs), not past the background, where it
            # makes up a change the data do not show (MYL12B: 192 decoded, 12.6 observed)
            past = np.sign(mean[1]) * (
                np.log2(df["mean_background"].to_numpy() + 1) - np.log2(mean[6] + 1)
            )
            fits &= past <= MAX_FIT_LOG2
        df["fits_data"] = fits
        order = np.lexsort((-df["score"].to_numpy(), ~df["fits_data"].to_numpy()))
        return df.iloc[order].reset_index(drop=True)
    return df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _within_fit(expected: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Whether each expected mean is within ``MAX_FIT_LOG2`` of the observed one (pseudocount
    1, on the scale of counts per library size)."""
    return np.abs(np.log2(expected + 1) - np.log2(observed + 1)) <= MAX_FIT_LOG2
