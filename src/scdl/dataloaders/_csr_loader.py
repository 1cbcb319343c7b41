"""Minibatches whose count matrix stays sparse: CSR rows gathered with torch, on the device.

:class:`~.TensorBatchLoader` densifies each minibatch of X on the host.
Models whose module reads a sparse CSR tensor (the VAE: its encoder's first layer and its
likelihood touch only the non-zero counts) use :class:`~.CSRBatchLoader` instead: the CSR
arrays of the registered matrix are wrapped as torch tensors once (no copy where the dtypes
allow) and each minibatch's rows are gathered with ``index_select`` into a
``torch.sparse_csr_tensor``. On a GPU the arrays are moved to the device once when they fit
(:class:`CSRDataSplitter` does it when Lightning asks for the loaders), so a training step
does its gather there, with no host-to-device copy of counts and no host synchronisation:
each minibatch's number of stored entries is known on the host from the row pointers.
Covariates are gathered the same way. The training and validation loaders share one set of
these arrays (each loader wraps the whole registered matrix and reads its own cells), and the
splitter lets go of them when training ends. Backed (on-disk) or dense X falls back to the host
path of :class:`~.TensorBatchLoader` (dense X is yielded dense; backed CSR rows as CSR), as does
a device without sparse CSR tensors (Apple's MPS), where every minibatch is yielded dense.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from scdl.data import sparse_tensors_on

from ._loader import FastDataSplitter, TensorBatchLoader

# keep the matrix on the GPU only if it takes at most this share of the free device memory
_DEVICE_SHARE = 0.5


def _summed(x: sparse.csr_matrix) -> sparse.csr_matrix:
    """``x`` with duplicate entries summed (on a copy: the user's matrix is left as it is).

    Minibatches are gathered entry by entry; a count stored as two entries of one gene was
    read as two observations (the VAE's likelihood and log1p saw 2 + 3, not 5), where
    scvi-tools, densifying, sums them."""
    if x.has_canonical_format:
        return x
    x = x.copy()
    x.sum_duplicates()
    return x


def _csr_tensors(x: sparse.csr_matrix, indptr: np.ndarray | None = None):
    """(indptr int64, indices int32/int64, data float32) of ``x`` as torch tensors.

    No copy where ``x`` already has those dtypes (indices int32 are kept as they are).
    """
    indptr = np.asarray(x.indptr, dtype=np.int64) if indptr is None else indptr
    indptr = torch.from_numpy(indptr)
    idx_dtype = np.int32 if x.indices.dtype == np.int32 else np.int64
    indices = torch.from_numpy(np.asarray(x.indices, dtype=idx_dtype))
    data = torch.from_numpy(np.asarray(x.data, dtype=np.float32))
    return indptr, indices, data


def gather_csr_rows(
    indptr: torch.Tensor,
    indices: torch.Tensor,
    data: torch.Tensor,
    rows: torch.Tensor,
    n_stored: int,
    n_cols: int,
) -> torch.Tensor:
    """Rows ``rows`` of a CSR matrix (torch arrays, any device) as a sparse CSR tensor.

    ``n_stored`` is the number of stored entries in those rows, computed by the caller (on
    the host), so no device value is read back.
    """
    starts = indptr.index_select(0, rows)
    lengths = indptr.index_select(0, rows + 1) - starts
    crow = torch.zeros(len(rows) + 1, dtype=torch.int64, device=indptr.device)
    torch.cumsum(lengths, 0, out=crow[1:])
    shift = torch.repeat_interleave(starts - crow[:-1], lengths, output_size=n_stored)
    src = torch.arange(n_stored, device=indptr.device) + shift
    col = indices.index_select(0, src).long()
    val = data.index_select(0, src)
    return _csr_tensor(crow, col, val, (len(rows), n_cols))


def _csr_tensor(crow, col, val, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support", category=UserWarning)
        return torch.sparse_csr_tensor(crow, col, val, shape, check_invariants=False)


class CSRBatchLoader(TensorBatchLoader):
    """:class:`~.TensorBatchLoader` that yields X as a ``torch.sparse_csr_tensor`` (float32).

    Same order of cells, minibatches and shuffling (torch's global generator) as its parent.
    """

    def __init__(self, adata_manager, *args, **kwargs):
        super().__init__(adata_manager, *args, **kwargs)
        x, _ = self.arrays[REGISTRY_KEYS.X_KEY]
        # the CSR path's arrays are built at first use: a loader that shares another's
        # (the splitter's validation loader) never builds its own
        self.csr_source = x if sparse.issparse(x) and x.format == "csr" else None
        self.csr, self.covariates = None, {}
        self.device = torch.device("cpu")
        self.dense_only = False

    def _csr_arrays(self):
        """The CSR arrays (built now if not yet), or ``None`` on the host path."""
        if self.csr is None and self.csr_source is not None:
            x = _summed(self.csr_source)
            self.n_cols = x.shape[1]
            self.host_indptr = np.asarray(x.indptr, dtype=np.int64)
            self.csr = _csr_tensors(x, self.host_indptr)  # shares the host's row pointers
            # copied (one value per cell): pandas 3 hands out read-only arrays, which torch
            # warns about wrapping
            self.covariates = {
                key: torch.from_numpy(np.array(data, dtype=dtype, order="C"))
                for key, (data, dtype) in self.arrays.items()
                if key != REGISTRY_KEYS.X_KEY
            }
        return self.csr

    def to(self, device: torch.device | str) -> CSRBatchLoader:
        """Keep the CSR arrays and covariates on ``device`` (if they fit there).

        On a device without sparse CSR tensors the loader reads on the host and yields dense
        minibatches instead."""
        device = torch.device(device)
        if not sparse_tensors_on(device):
            self.release()
            self.dense_only = True
            return self
        if device == self.device or self._csr_arrays() is None:
            return self
        if device.type == "cuda":
            nbytes = sum(t.numel() * t.element_size() for t in self.csr)
            nbytes += sum(t.numel() * t.element_size() for t in self.covariates.values())
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > _DEVICE_SHARE * free:
                return self
        self.csr = tuple(t.to(device) for t in self.csr)
        self.covariates = {k: t.to(device) for k, t in self.covariates.items()}
        self.device = device
        return self

    def share_arrays(self, other: CSRBatchLoader) -> None:
        """Read the matrix from ``other``'s arrays (the same registered matrix, wherever they
        are) instead of building this loader's own."""
        if self.csr_source is None or other._csr_arrays() is None:
            return
        self.csr, self.covariates, self.device = other.csr, other.covariates, other.device
        self.host_indptr, self.n_cols = other.host_indptr, other.n_cols

    def release(self) -> None:
        """Let go of the CSR arrays (and their device copy); later passes read on the host."""
        self.csr_source, self.csr, self.covariates = None, None, {}
        self.device = torch.device("cpu")

    def __iter__(self):
        if self._csr_arrays() is None:  # dense, CSC or backed X (or released): on the host
            yield from super().__iter__()
            return
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order)).numpy()]
        order = self._shard(order)
        # stored entries per minibatch, from the host's row pointers (no device read-back)
        per_row = np.diff(self.host_indptr)[order]
        order_t = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64))
        order_t = order_t.to(self.device)  # one copy per epoch
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            # sorted rows, as the parent gathers them
            rows = torch.sort(order_t[part]).values
            yield self._gather_sorted(rows, int(per_row[part].sum()))

    def _gather_sorted(self, rows: torch.Tensor, n_stored: int) -> dict[str, torch.Tensor]:
        out = {REGISTRY_KEYS.X_KEY: gather_csr_rows(*self.csr, rows, n_stored, self.n_cols)}
        for key, values in self.covariates.items():
            out[key] = values.index_select(0, rows)
        return out

    def _to_tensor(self, key: str, part, dtype) -> torch.Tensor:
        if key == REGISTRY_KEYS.X_KEY and sparse.issparse(part) and not self.dense_only:
            crow, col, val = _csr_tensors(_summed(sparse.csr_matrix(part)))
            return _csr_tensor(crow, col.long(), val, part.shape)
        return super()._to_tensor(key, part, dtype)


class CSRDataSplitter(FastDataSplitter):
    """scvi-tools' ``DataSplitter`` feeding :class:`~.CSRBatchLoader`, on the trainer's device.

    Its loaders share one set of arrays (one device copy of the matrix, not one per loader),
    released when training ends: scvi-tools keeps the trainer, and through it the loaders, on
    the model, which would otherwise hold the device copy for the model's lifetime.
    """

    data_loader_cls = CSRBatchLoader

    def _on_device(self, loader):
        if not isinstance(loader, CSRBatchLoader):
            return loader
        loaders = getattr(self, "_csr_loaders", None)
        if loaders is None:
            loaders = self._csr_loaders = []
        elif loaders:
            loader.share_arrays(loaders[0])
        loaders.append(loader)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            loader.to(trainer.strategy.root_device)
        return loader

    def teardown(self, stage: str | None = None) -> None:
        for loader in getattr(self, "_csr_loaders", None) or []:
            loader.release()
        self._csr_loaders = None
        super().teardown(stage)

    def train_dataloader(self):
        return self._on_device(super().train_dataloader())

    def val_dataloader(self):
        return self._on_device(super().val_dataloader())
