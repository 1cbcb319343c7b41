"""The fast training data path: registered arrays gathered into dense minibatch tensors.

scvi-tools' ``AnnDataLoader`` goes through a torch ``Dataset``/``DataLoader`` pair per
minibatch (index sampler, collate, per-key AnnData lookups). For in-memory data, scdl reads
the registered arrays once and gathers each minibatch directly: sorted CSR rows of X to one
dense float32 tensor, covariates by fancy indexing. It plugs into scvi-tools' own
``DataSplitter`` (same train/validation split, same training plan). Backed (on-disk) X works
too: rows are read per minibatch, in sorted order, so memory holds one minibatch at a time.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter

from scdl.data import check_positive_int

# the integer fields of a registry, as in scvi-tools' AnnTorchDataset; every other field float32
_INT_KEYS = (
    REGISTRY_KEYS.BATCH_KEY,
    REGISTRY_KEYS.LABELS_KEY,
    REGISTRY_KEYS.CAT_COVS_KEY,
    REGISTRY_KEYS.INDICES_KEY,
)


def _as_array(data, dtype):
    if isinstance(data, pd.DataFrame):
        return data.to_numpy().astype(dtype, copy=False)
    if isinstance(data, pd.Series):
        return data.to_numpy().astype(dtype, copy=False)
    if isinstance(data, np.ndarray):
        return data.astype(dtype, copy=False)
    return data  # sparse matrix or backed dataset: gathered per minibatch


def check_loader_options(kwargs: dict, cls: str) -> None:
    """Refuse a data-loader option neither scvi-tools' ``AnnDataLoader`` nor torch's
    ``DataLoader`` takes (a typo in ``datasplitter_kwargs``), as scvi-tools' loader does; the
    options they take are accepted, and worker options (the in-memory path has no worker
    processes to start) are said to do nothing."""
    import inspect

    from scvi.dataloaders import AnnDataLoader
    from torch.utils.data import DataLoader

    known = set(inspect.signature(AnnDataLoader.__init__).parameters)
    known |= set(inspect.signature(DataLoader.__init__).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"{cls}() got unexpected data-loader option(s) {unknown} (from "
            "`datasplitter_kwargs`?); it takes the options of scvi-tools' AnnDataLoader and "
            "torch's DataLoader."
        )
    workers = {k: kwargs[k] for k in ("num_workers", "persistent_workers") if kwargs.get(k)}
    if workers:  # accepted as scvi-tools' splitter takes them, but there is nothing to start
        from scdl._warnings import warn_user

        warn_user(
            f"{workers} (`datasplitter_kwargs`) have no effect in training: scdl's loader "
            "gathers each minibatch from memory in the training process, with no worker "
            "processes. Inference loaders follow `scvi.settings.dl_num_workers`.",
            UserWarning,
        )


class TensorBatchLoader:
    """Iterable of minibatches (dicts of tensors keyed like scvi-tools' registry).

    Accepts the arguments scvi-tools' ``DataSplitter`` passes to its loader class (an option
    no data loader takes is refused).
    Shuffling uses torch's global generator, so ``scvi.settings.seed`` makes it reproducible.
    Under DDP each process takes its own equal share of every epoch's permutation.
    """

    def __init__(
        self,
        adata_manager,
        indices=None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        load_sparse_tensor: bool = False,
        pin_memory: bool = False,
        **kwargs,
    ):
        check_loader_options(kwargs, type(self).__name__)
        n_obs = adata_manager.adata.n_obs
        self.indices = np.arange(n_obs) if indices is None else np.asarray(indices)
        if self.indices.dtype == bool:
            self.indices = np.flatnonzero(self.indices)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.arrays = {}
        for key in adata_manager.data_registry:
            dtype = np.int64 if key in _INT_KEYS else np.float32
            self.arrays[key] = (_as_array(adata_manager.get_from_registry(key), dtype), dtype)

    def _shard(self, order: np.ndarray) -> np.ndarray:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            per_rank = len(order) // world
            return order[rank * per_rank : (rank + 1) * per_rank]
        return order

    def _n_cells(self) -> int:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return len(self.indices) // torch.distributed.get_world_size()
        return len(self.indices)

    def __len__(self) -> int:
        n = self._n_cells()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _gather(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            key: self._to_tensor(key, data[rows], dtype)
            for key, (data, dtype) in self.arrays.items()
        }

    def _to_tensor(self, key: str, part, dtype) -> torch.Tensor:
        """One registered array's minibatch rows as a dense tensor."""
        if sparse.issparse(part):
            part = part.toarray()
        elif not isinstance(part, np.ndarray):  # backed dense/sparse datasets
            part = part.toarray() if hasattr(part, "toarray") else np.asarray(part)
        t = torch.from_numpy(np.ascontiguousarray(part, dtype=dtype))
        return t.pin_memory() if self.pin_memory else t

    def __iter__(self):
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order)).numpy()]
        order = self._shard(order)
        for i in range(len(self)):
            rows = order[i * self.batch_size : (i + 1) * self.batch_size]
            # sorted rows: contiguous CSR/HDF5 reads; order within a minibatch is irrelevant
            yield self._gather(np.sort(rows))


class FastDataSplitter(DataSplitter):
    """scvi-tools' ``DataSplitter`` (same split logic) feeding :class:`~.TensorBatchLoader`.

    With no validation cells (fewer than 10 cells at the default ``train_size=0.9``) the
    validation loader is an empty list, which Lightning skips, instead of scvi-tools'
    ``None``, which Lightning refuses once validation is scheduled.
    """

    data_loader_cls = TensorBatchLoader

    def val_dataloader(self):
        loader = super().val_dataloader()
        return [] if loader is None else loader


class LabelledSplitter(FastDataSplitter):
    """:class:`~scdl.dataloaders.FastDataSplitter` whose training cells hold every registered
    label.

    scvi-tools' split is random, so a type of one or two cells can fall wholly into the
    validation cells; a classifier then never trains on it, yet its output for that type is
    set by the rest of training (with a linear path fitted without the type, the network
    learns to offset its absence, and a linear path refitted on every cell afterwards left a
    type that took most of a query's calls). Such a type gets one of its held-out cells back in
    training (the first in the split's order, so the split stays seeded), taken from the test
    cells when they hold one; one taken from the validation cells is replaced there by the last
    training cell of a type with other training cells, so validation keeps its size (early
    stopping and the Unknown call's calibration read it). A split given as
    ``external_indexing`` is kept as given.
    """

    def setup(self, stage: str | None = None):
        super().setup(stage)
        if self.external_indexing is not None:
            return
        labels = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY))
        labels = labels.ravel()
        missing = np.setdiff1d(np.unique(labels), np.unique(labels[self.train_idx]))
        if not len(missing):  # the usual case: the split stays scvi-tools' own
            return
        train = list(np.asarray(self.train_idx))
        held = {"val": np.asarray(self.val_idx), "test": np.asarray(self.test_idx)}
        for label in missing:  # every cell of it is held out: one goes back to training
            name = "test" if (labels[held["test"]] == label).any() else "val"
            cell = held[name][labels[held[name]] == label][0]
            held[name] = held[name][held[name] != cell]
            if name == "val":  # a training cell of a type that keeps others takes its place
                counts = pd.Series(labels[train]).value_counts()
                spare = next((j for j in reversed(range(len(train)))
                              if counts[labels[train[j]]] > 1), None)  # fmt: skip
                if spare is not None:
                    held["val"] = np.r_[held["val"], train.pop(spare)]
            train.append(cell)
        self.train_idx = np.asarray(train)
        self.val_idx, self.test_idx = held["val"], held["test"]


class CSRBatches:
    """Minibatches ``{X_KEY: dense tensor}`` from a cells x genes matrix (CSR or dense).

    For training on data that is not registered with the model (e.g. unlabelled cells for
    pretraining, aligned to the model's genes). Shuffles with torch's global generator.
    """

    def __init__(self, x, *, batch_size: int = 256, shuffle: bool = True, drop_last: bool = False):
        from scvi import REGISTRY_KEYS

        self.x, self.key = x, REGISTRY_KEYS.X_KEY
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shuffle, self.drop_last = shuffle, drop_last

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = self.x.shape[0]
        order = torch.randperm(n).numpy() if self.shuffle else np.arange(n)
        for i in range(len(self)):
            rows = np.sort(order[i * self.batch_size : (i + 1) * self.batch_size])
            yield {self.key: dense_rows(self.x, rows)}


def dense_rows(x, rows) -> torch.Tensor:
    """Rows of a sparse, dense or backed matrix as a dense float32 tensor."""
    part = x[rows]
    if sparse.issparse(part) or hasattr(part, "toarray"):
        part = part.toarray()
    return torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
