"""How much each cell resembles the drug model's training lines: the largest Pearson
correlation of its profile with a training line's, over the genes the query holds, in the
model's own input space.

The model predicts a response for any profile; one unlike every cancer line it was trained
on (an immune or stromal cell of a tumour sample, another tissue) still gets one, and the
ensemble's spread does not flag it. This score does: such cells correlate less with their
nearest line than the query's cancer cells do.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _standardised_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows centred and scaled to unit norm (computed in float64, returned as float32 for the
    products: half their time on a query of many cells), and which rows vary at all."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1, keepdims=True))
    varies = norm.ravel() > 0
    out = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    return out.astype(np.float32), varies


class LineSimilarity:
    """Nearest training line of profiles, over the genes ``present`` in the query.

    Parameters
    ----------
    lines
        The training lines' profiles (lines x model genes), as the model reads them.
    line_names
        Their names.
    present
        Boolean mask of the model's genes the query holds (absent genes hold a constant that
        would pass for shared signal).
    """

    def __init__(self, lines: np.ndarray, line_names, present: np.ndarray):
        self.present = np.asarray(present, dtype=bool)
        self.lines, varies = _standardised_rows(np.asarray(lines)[:, self.present])
        self.lines = self.lines[varies]
        self.names = np.asarray(line_names, dtype=object)[varies]
        self.similarity: list[np.ndarray] = []
        self.nearest: list[np.ndarray] = []

    def add(self, block: np.ndarray) -> None:
        """Score a block of profiles (cells x model genes)."""
        z, varies = _standardised_rows(np.asarray(block)[:, self.present])
        corr = z @ self.lines.T
        best = corr.argmax(axis=1) if len(self.names) else np.zeros(len(z), dtype=int)
        sim = corr[np.arange(len(z)), best] if len(self.names) else np.full(len(z), np.nan)
        # a profile constant over the genes (no counts in them) resembles nothing: undefined
        self.similarity.append(np.where(varies, sim, np.nan))
        names = self.names[best] if len(self.names) else np.full(len(z), "", dtype=object)
        self.nearest.append(np.where(varies, names, ""))

    def table(self, index: pd.Index) -> pd.DataFrame:
        """``similarity`` (float32; NaN for a profile constant over the genes) and
        ``nearest_line`` (``""`` there) of every profile added, indexed by ``index``."""
        sim = np.concatenate(self.similarity) if self.similarity else np.zeros(0)
        near = np.concatenate(self.nearest) if self.nearest else np.zeros(0, dtype=object)
        return pd.DataFrame(
            {"similarity": sim.astype(np.float32), "nearest_line": near.astype(str)},
            index=index.copy(),
        )
