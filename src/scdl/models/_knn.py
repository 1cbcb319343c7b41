"""Exact k-nearest neighbours with torch, as a transformer for :func:`scanpy.pp.neighbors`.

The query's Unknown call clusters its cells on a kNN graph. On the model's GPU it is this
exact search, as chunked matrix products in float64. On a CPU it is scikit-learn's brute
force up to ``scdl._neighbors.QUERY_EXACT_NEIGHBORS_MAX_CELLS`` cells, which gives the same
neighbours (this search is slower than scikit-learn's there), and scanpy's approximate search
above, where brute force grows with the square of the cells: a query of more cells can get
slightly other clusters on a CPU than on a GPU.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

#: rows of the query searched at once (bounds the distance block to ~rows x cells float64)
_CHUNK_ROWS = 1024
#: share of the GPU's free memory the distance blocks may take (a block and ~2 temporaries)
_BLOCK_SHARE = 0.25


def chunk_rows(n_cells: int, device: torch.device) -> int:
    """Query rows per distance block: :data:`_CHUNK_ROWS`, fewer on a GPU whose free memory
    would not hold three float64 blocks of that many rows against ``n_cells`` cells."""
    if device.type != "cuda":
        return _CHUNK_ROWS
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(_CHUNK_ROWS, _BLOCK_SHARE * free // (3 * 8 * max(n_cells, 1)))))


class TorchKNN:
    """Exact Euclidean kNN graph in scikit-learn's ``KNeighborsTransformer`` form.

    ``fit_transform(x)`` returns a CSR matrix (cells x cells) holding, in each row, the cell
    itself (distance 0) and then its ``n_neighbors`` nearest other cells by increasing
    distance, as ``KNeighborsTransformer(mode="distance", algorithm="brute")`` does.

    Parameters
    ----------
    n_neighbors
        Neighbours per cell besides itself.
    device
        Device of the search (``"cpu"`` or ``"cuda"``).
    """

    def __init__(self, n_neighbors: int = 15, device: torch.device | str = "cpu"):
        self.n_neighbors = int(n_neighbors)
        self.device = torch.device(device)

    def get_params(self, deep: bool = True) -> dict:
        return {"n_neighbors": self.n_neighbors, "device": self.device}

    def fit_transform(self, x) -> sparse.csr_matrix:
        pts = torch.as_tensor(np.asarray(x, dtype=np.float64), device=self.device)
        n = pts.shape[0]
        k = min(self.n_neighbors + 1, n)
        sq = (pts * pts).sum(1)
        idx, dist = [], []
        step = chunk_rows(n, self.device)
        for start in range(0, n, step):
            block = pts[start : start + step]
            d2 = sq[start : start + step, None] - 2.0 * block @ pts.T + sq[None]
            rows = torch.arange(block.shape[0], device=self.device)
            d2[rows, rows + start] = -1.0  # the cell itself comes first, at distance 0
            top, j = torch.topk(d2, k, dim=1, largest=False, sorted=True)
            idx.append(j)
            dist.append(top.clamp(min=0.0).sqrt())
        j = torch.cat(idx).cpu().numpy()
        d = torch.cat(dist).cpu().numpy().astype(np.float32)
        return sparse.csr_matrix((d.ravel(), j.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
