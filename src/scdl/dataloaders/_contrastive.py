"""Mixed minibatches of background and target cells, each cell carrying its target flag."""

from __future__ import annotations

import math
import warnings

import numpy as np
from scvi.external.contrastivevi import ContrastiveDataSplitter

from scdl.data import MIN_GROUP_CELLS
from scdl.module import TARGET_KEY

from ._loader import TensorBatchLoader


class _FlaggedLoader(TensorBatchLoader):
    """scdl's fast minibatch loader, plus each cell's target flag under ``TARGET_KEY``."""

    def __init__(self, adata_manager, indices=None, *, is_target: np.ndarray, **kwargs):
        super().__init__(adata_manager, indices, **kwargs)
        self.arrays[TARGET_KEY] = (is_target.astype(np.float32).reshape(-1, 1), np.float32)


#: a training epoch holds at most this many target cells per background cell: beyond it the
#: background's cells are repeated (30 controls beside 806 stimulated cells gave 4-5 controls a
#: minibatch, and the salient genes lost half their interferon genes). A small target is not
#: repeated: 30 stimulated cells repeated beside 750 controls lost 17 of 42 (one seed)
MAX_GROUP_RATIO = 4


class ContrastiveSplitter(ContrastiveDataSplitter):
    """contrastiveVI's split, fed through the fast loader in mixed minibatches.

    Background and target cells are split into training and validation sets separately (so
    both groups are in each); cells in neither group are not used. Minibatches mix the two
    groups and carry a per-cell flag, so the model trains with scvi-tools' standard
    ``TrainingPlan``. When the target's training cells outnumber the background's more than
    ``MAX_GROUP_RATIO`` times, each epoch repeats every background cell the same number of
    times, to that ratio (contrastiveVI pairs equal numbers of each group in every minibatch);
    not with fewer than ``MIN_GROUP_CELLS`` background cells, where the model warns that its
    result may be noise (copies of a few cells would also pass the shared space's MMD guard,
    4 cells a minibatch, and pull every target cell towards them).
    """

    def __init__(self, adata_manager, background_indices, target_indices, **kwargs):
        with warnings.catch_warnings():
            # scvi-tools' remainder rule, which the counts below replace: nothing moves
            warnings.filterwarnings(
                "ignore", ".*moved from training set to validation set", UserWarning
            )
            super().__init__(
                adata_manager,
                background_indices=[int(i) for i in background_indices],
                target_indices=[int(i) for i in target_indices],
                **kwargs,
            )
        if self.external_indexing is None:
            # scvi-tools moves a group's last 1-2 training cells (its remainder in minibatches)
            # to validation, which left a group of 1-2 cells out of training entirely; the
            # minibatches here mix both groups, so a group's remainder is no minibatch's size
            n_bg, n_tg = self.n_background, self.n_target
            self.n_background_train, self.n_background_val = self._split(n_bg)
            self.n_target_train, self.n_target_val = self._split(n_tg)
            self.n_train = self.n_background_train + self.n_target_train
            self.n_val = self.n_background_val + self.n_target_val
        self.is_target = np.zeros(adata_manager.adata.n_obs, dtype=bool)
        self.is_target[self.target_indices] = True

    def _split(self, n: int) -> tuple[int, int]:
        """Training and validation cells of a group of ``n``, as scvi-tools counts them
        (``train_size`` rounded up, ``validation_size`` down) without its remainder rule."""
        n_train = math.ceil(self.train_size * n)
        if self.validation_size is None:
            return n_train, n - n_train
        return n_train, math.floor(n * self.validation_size)

    def _loader(self, indices, *, shuffle: bool, drop_last):
        if len(indices) == 0:
            return None
        return _FlaggedLoader(
            self.adata_manager,
            indices=np.asarray(indices, dtype=np.int64),
            is_target=self.is_target,
            shuffle=shuffle,
            drop_last=drop_last,
            pin_memory=self.pin_memory,
            **self.data_loader_kwargs,
        )

    def train_dataloader(self):
        return self._loader(self.balanced_train_idx(), shuffle=True, drop_last=self.drop_last)

    def balanced_train_idx(self) -> np.ndarray:
        """The training cells of an epoch (positions in the AnnData): the target's, then the
        background's repeated (each cell equally often) where the target outnumbers them more
        than ``MAX_GROUP_RATIO`` times and the background holds at least ``MIN_GROUP_CELLS``
        cells; else ``train_idx`` as split."""
        train = np.asarray(self.train_idx, dtype=np.int64)
        is_target = self.is_target[train]
        target, background = train[is_target], train[~is_target]
        few = self.n_background < MIN_GROUP_CELLS or len(background) == 0
        if few or len(target) <= MAX_GROUP_RATIO * len(background):
            return train
        times = math.ceil(len(target) / (MAX_GROUP_RATIO * len(background)))
        return np.concatenate([target, np.tile(background, times)])

    def val_dataloader(self):
        # the groups' cells in one fixed mixed order (the split lists them group by group): each
        # minibatch, and each process's share of a multi-process run, then holds both groups
        val = np.asarray(self.val_idx, dtype=np.int64)
        val = val[np.random.default_rng(0).permutation(len(val))]
        # no validation cells (a tiny group): an empty list, which Lightning skips
        loader = self._loader(val, shuffle=False, drop_last=False)
        return [] if loader is None else loader

    def test_dataloader(self):
        return self._loader(self.test_idx, shuffle=False, drop_last=False)
