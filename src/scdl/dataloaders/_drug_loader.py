"""Minibatches for the drug-response model: bulk lines plus a sample of target cells."""

from __future__ import annotations

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from scdl.module import FOLD_KEY, REFERENCE_X_KEY, TARGET_X_KEY

from ._loader import FastDataSplitter, TensorBatchLoader

# --- minibatches mixing bulk lines with a sample of target cells ---------------------------


class _DomainLoader(TensorBatchLoader):
    """scdl's fast loader over bulk lines, feeding the model's input profiles; for training
    also each line's fold and, per minibatch, random samples of target-cell profiles and of
    reference bulk profiles (``target_batch_size`` each) for the alignment term."""

    def __init__(
        self,
        adata_manager,
        indices=None,
        *,
        profiles: np.ndarray,
        target_x=None,
        reference_p: np.ndarray | None = None,
        folds: np.ndarray | None = None,
        target_batch_size: int = 32,
        **kwargs,
    ):
        super().__init__(adata_manager, indices, **kwargs)
        self.target_batch_size = int(target_batch_size)
        self.arrays[REGISTRY_KEYS.X_KEY] = (profiles, np.float32)
        if folds is not None:
            self.arrays[FOLD_KEY] = (np.asarray(folds, dtype=np.int64).reshape(-1, 1), np.int64)
        # an array, or profiles made by rows on demand (scdl.data.CountProfiles)
        self.target_x = target_x
        self.profiles = torch.from_numpy(profiles)
        self.reference_p = None if reference_p is None else torch.from_numpy(reference_p)

    def __iter__(self):
        for batch in super().__iter__():
            if self.target_x is not None:
                n = self.target_batch_size
                # torch's global generator: reproducible under scvi.settings.seed
                pick = torch.randint(self.target_x.shape[0], (n,))
                rows = np.asarray(self.target_x[pick.numpy()], dtype=np.float32)
                batch[TARGET_X_KEY] = torch.from_numpy(rows)
                if self.reference_p is not None:
                    ref = torch.multinomial(self.reference_p, n, replacement=True)
                    batch[REFERENCE_X_KEY] = self.profiles[ref]
            yield batch


class DomainSplitter(FastDataSplitter):
    """scvi-tools' split of the bulk lines; training minibatches also carry target cells.

    The two domains differ in size and in what is known about them (responses only for
    lines), so the target cells ride along as an extra minibatch key rather than as rows:
    scvi-tools' standard ``TrainingPlan`` then trains the model unchanged. Validation
    minibatches hold bulk lines only. ``profiles`` (lines x the model's genes, on the model's
    common scale) replace the registered expression as the model's input.
    """

    def __init__(
        self, adata_manager, *, profiles, target_x=None, reference_p=None, folds=None, **kwargs
    ):
        super().__init__(adata_manager, **kwargs)
        self.profiles = profiles
        self.target_x = target_x
        self.reference_p = reference_p
        self.folds = folds

    def _loader(self, indices, *, train: bool):
        if len(indices) == 0:
            return None
        return _DomainLoader(
            self.adata_manager,
            indices=indices,
            shuffle=train,
            drop_last=self.drop_last if train else False,
            pin_memory=self.pin_memory,
            profiles=self.profiles,
            target_x=self.target_x if train else None,
            reference_p=self.reference_p if train else None,
            folds=self.folds if train else None,
            **self.data_loader_kwargs,
        )

    def train_dataloader(self):
        return self._loader(self.train_idx, train=True)

    def val_dataloader(self):
        loader = self._loader(self.val_idx, train=False)
        # no validation lines: an empty list, which Lightning skips (None it refuses)
        return [] if loader is None else loader

    def test_dataloader(self):
        return self._loader(self.test_idx, train=False)
