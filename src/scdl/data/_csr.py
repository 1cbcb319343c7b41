"""A query's counts as CSR tensors in a model's gene order, built on the model's device.

Aligning a query to a model's genes and checking its counts is, for a fast model, most of an
annotation's cost when done with scipy on the host (a sparse product with a selection matrix
and a pass over every stored value of every gene). Here the stored values are gathered in row
chunks with a lookup table from query columns to model columns, on the device the model runs
on; only the values of the model's genes are checked, since no other value is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from ._checks import MAX_COUNT

if TYPE_CHECKING:
    import torch

#: rows gathered at once (bounds the temporary row-index array on large queries)
_CHUNK_ROWS = 65_536


def inference_batch_size(device: torch.device | str) -> int:
    """Cells per forward pass of a small model at inference: large enough that per-call
    overheads vanish, small enough to keep the working set in a CPU's cache."""
    import torch

    return 16_384 if torch.device(device).type == "cuda" else 1024


def sparse_tensors_on(device: torch.device | str) -> bool:
    """Whether torch builds sparse CSR tensors on ``device`` (the CPU and CUDA GPUs; not
    Apple's MPS, where minibatches are made dense on the host instead)."""
    import torch

    return torch.device(device).type in ("cpu", "cuda")


@dataclass
class CSRTensors:
    """A (cells x genes) CSR matrix as three tensors on one device (column indices sorted
    within each row) and the row pointer on the host, for slicing minibatches without a
    device synchronisation."""

    indptr: torch.Tensor
    indices: torch.Tensor
    data: torch.Tensor
    n_cols: int
    indptr_host: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.indptr_host) - 1

    @classmethod
    def from_scipy(cls, x, device: torch.device | str = "cpu") -> CSRTensors:
        """From any scipy sparse matrix (converted to float32 CSR)."""
        import torch

        x = sparse.csr_matrix(x, dtype=np.float32)
        if not x.has_sorted_indices:
            x = x.sorted_indices()
        indptr = x.indptr.astype(np.int64)
        return cls(  # the column indices keep scipy's dtype (no int64 copy); rows() widens
            torch.from_numpy(indptr).to(device),
            torch.from_numpy(x.indices).to(device),
            torch.from_numpy(x.data).to(device),
            x.shape[1],
            indptr,
        )

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row pointer (from 0), column indices and values of rows ``start:stop``."""
        lo, hi = int(self.indptr_host[start]), int(self.indptr_host[stop])
        return self.indptr[start : stop + 1] - lo, self.indices[lo:hi].long(), self.data[lo:hi]

    def to_scipy(self) -> sparse.csr_matrix:
        """The same matrix as a scipy CSR matrix (float32) on the host."""
        return sparse.csr_matrix(
            (self.data.cpu().numpy(), self.indices.cpu().numpy(), self.indptr_host.copy()),
            shape=(self.n_rows, self.n_cols),
        )


def gather_counts(
    x, columns: np.ndarray, n_cols: int, device: torch.device | str = "cpu"
) -> CSRTensors | None:
    """Columns of a CSR count matrix in a model's gene order, as :class:`~scdl.data.CSRTensors`.

    ``columns[j]`` is the output column of input column ``j`` (``-1``: dropped). On a CPU the
    columns are taken with scipy; on a GPU the stored values are moved once and gathered
    there. Duplicate entries are summed, as scipy does. Returns ``None`` when ``x`` is not a
    scipy CSR matrix or a kept value is not a non-negative finite integer (the caller then
    checks the whole matrix and explains).
    """
    import torch

    if not (sparse.issparse(x) and x.format == "csr"):
        return None
    columns = np.asarray(columns, dtype=np.int64)
    device = torch.device(device)
    if device.type != "cuda":  # the CPU, and devices without sparse tensors (read densely)
        return _gather_host(x, columns, n_cols)
    return _gather_device(x, columns, n_cols, device)


def _counts_ok(values) -> bool:
    """The quick check: non-negative whole numbers up to ``MAX_COUNT`` (else the full check
    names what is wrong)."""
    if values.dtype.kind in "iub":
        return bool(((values >= 0) & (values <= MAX_COUNT)).all())
    whole = np.isfinite(values) & (values >= 0) & (values == np.floor(values))
    return bool((whole & (values <= MAX_COUNT)).all())


def _gather_host(x, columns: np.ndarray, n_cols: int) -> CSRTensors | None:
    kept = np.flatnonzero(columns >= 0)
    query_cols = kept[np.argsort(columns[kept], kind="stable")]  # in the model's order
    sub = x[:, query_cols]
    if not x.has_canonical_format:  # unsorted (a column subset of AnnData) or duplicates
        sub.sum_duplicates()
    if not _counts_ok(sub.data):
        return None
    # positions in ``query_cols`` -> the model's columns: increasing, so rows stay sorted
    # once scipy has sorted the selection's indices
    out = sparse.csr_matrix(
        (
            np.asarray(sub.data, dtype=np.float32),
            columns[query_cols][sub.indices],
            sub.indptr.copy(),
        ),
        shape=(x.shape[0], n_cols),
    )
    if not sub.has_sorted_indices:
        out.has_sorted_indices = False
        out.sort_indices()
    return CSRTensors.from_scipy(out)


def _gather_device(x, columns: np.ndarray, n_cols: int, device: torch.device):
    import torch

    lookup = torch.from_numpy(columns).to(device)
    canonical = x.has_canonical_format
    indptr_in = np.asarray(x.indptr, dtype=np.int64)
    ptr, cols, vals = [np.zeros(1, dtype=np.int64)], [], []
    total = 0
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, x.shape[0])
        lo, hi = int(indptr_in[start]), int(indptr_in[stop])
        new_col = lookup[torch.from_numpy(np.asarray(x.indices[lo:hi])).to(device).long()]
        pos = torch.nonzero(new_col >= 0).squeeze(1)
        val = torch.from_numpy(np.asarray(x.data[lo:hi])).to(device)[pos]
        if val.is_floating_point():
            ok = torch.isfinite(val) & (val >= 0) & (val == torch.floor(val))
        else:
            ok = val >= 0
        ok &= val <= MAX_COUNT  # as the CPU path's check: the refusal must not depend on it
        if not bool(ok.all()):
            return None
        chunk_ptr = torch.from_numpy(indptr_in[start : stop + 1] - lo).to(device)
        row = torch.searchsorted(chunk_ptr, pos, right=True) - 1
        new_col = new_col[pos]
        # the model's column order differs from the query's: sort each row by its new columns
        key = row * n_cols + new_col
        order = torch.argsort(key)
        key, val = key[order], val[order].to(torch.float32)
        if not canonical:  # duplicate entries (now adjacent) are summed, as scipy does
            key, inverse = torch.unique_consecutive(key, return_inverse=True)
            val = torch.zeros(key.numel(), device=device).index_add_(0, inverse, val)
        row, new_col = key // n_cols, key % n_cols
        counts = torch.bincount(row, minlength=stop - start)
        ptr.append(total + torch.cumsum(counts, 0).cpu().numpy())
        total += int(row.numel())
        cols.append(new_col)
        vals.append(val)
    indptr = np.concatenate(ptr)
    empty = torch.zeros(0, device=device)
    return CSRTensors(
        torch.from_numpy(indptr).to(device),
        torch.cat(cols) if cols else empty.long(),
        torch.cat(vals) if vals else empty,
        int(n_cols),
        indptr,
    )
