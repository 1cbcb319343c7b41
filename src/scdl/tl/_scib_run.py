"""What ``tl.integration_metrics`` changes while scib-metrics runs, and why: each part makes
scib-metrics' own result reproducible, exact or quick without changing what it computes, and is
put back when the last running call ends."""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import contextmanager

import numpy as np

from scdl._neighbors import METRICS_EXACT_NEIGHBORS_MAX_CELLS


def sklearn_neighbors(x: np.ndarray, k: int, n_jobs: int = 1):
    """Exact neighbours (scikit-learn) in scib-metrics' ``NeighborsResults``."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k, n_jobs=n_jobs).fit(x).kneighbors(x)
    return NeighborsResults(indices=idx, distances=dist)


#: calls of integration_metrics running (threads) per function replaced, and the original:
#: a replaced function is put back when the last call that needs it ends
_PATCH_LOCK = threading.Lock()
_PATCHES: dict[tuple[str, str], list] = {}


@contextmanager
def _replaced(module, name: str, replacement):
    """``module.name`` is ``replacement(original)`` while any call in the block runs."""
    key = (module.__name__, name)
    with _PATCH_LOCK:
        entry = _PATCHES.setdefault(key, [0, None])
        if entry[0] == 0:
            entry[1] = getattr(module, name)
            setattr(module, name, replacement(entry[1]))
        entry[0] += 1
    try:
        yield
    finally:
        with _PATCH_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                setattr(module, name, entry[1])


def fixed_arpack_start():
    """scib-metrics' kBET embeds each type by diffusion, through ``scipy.sparse.linalg.eigsh``
    without a start vector: ARPACK's random one (from the process's earlier calls, from the OS
    since SciPy 1.18) flips eigenvectors' signs, which moves the exact neighbours and kBET
    (0.455 or 0.505 for the same input). A fixed start vector, while the metrics run, gives the
    same scores for the same input; scipy's own function is put back after the last call."""
    import scipy.sparse.linalg as linalg

    def seeded_from(eigsh):
        def seeded(A, k=6, *args, v0=None, **kwargs):  # scipy's own signature
            if v0 is None:
                v0 = np.random.default_rng(0).uniform(-1.0, 1.0, A.shape[0])
            return eigsh(A, k, *args, v0=v0, **kwargs)

        return seeded

    return _replaced(linalg, "eigsh", seeded_from)


def exact_diffusion_neighbors():
    """kBET searches each type's diffusion embedding with scib-metrics' ``pynndescent`` (looked
    up on ``scib_metrics.nearest_neighbors`` at every call, with no option to pass another
    search). numba compiles pynndescent on its first call in a process, about 35 s on a laptop
    core for a few hundred cells, and its search is approximate: up to the same cell limit as the
    main neighbour search, it is exact here (scikit-learn), as the neighbours of the
    embeddings are; above it, scib-metrics' own search runs. Asked for more neighbours than
    there are cells (kBET asks 11 of a type of 10), it returns every cell and pads the rest
    with index -1 and an infinite distance, as pynndescent does (scikit-learn refuses, and kBET
    then scored the type 0)."""
    import scib_metrics.nearest_neighbors as nn

    def exact_from(pynndescent):
        def search(X, n_neighbors, random_state=0, n_jobs=1):  # scib-metrics' own signature
            n = X.shape[0]
            if n > METRICS_EXACT_NEIGHBORS_MAX_CELLS:
                return pynndescent(X, n_neighbors, random_state=random_state, n_jobs=n_jobs)
            found = sklearn_neighbors(X, min(n_neighbors, n), n_jobs=n_jobs)
            missing = n_neighbors - found.indices.shape[1]
            if missing <= 0:
                return found
            return type(found)(
                indices=np.pad(found.indices, ((0, 0), (0, missing)), constant_values=-1),
                distances=np.pad(found.distances, ((0, 0), (0, missing)), constant_values=np.inf),
            )

        return search

    return _replaced(nn, "pynndescent", exact_from)


@contextmanager
def session_objects_frozen():
    """scib-metrics runs a full ``gc.collect()`` before every metric of every embedding, each
    one walking every object of the session (a notebook's AnnDatas and models): the session's
    objects until then are frozen (``gc.freeze``), so those collections walk only the metrics'
    own, and thawed after. Left alone where objects are frozen already (a user's ``gc.freeze``;
    Python 3.12.1 starts with some), since unfreezing would thaw those too."""
    mine = gc.get_freeze_count() == 0
    if mine:
        gc.freeze()
    try:
        yield
    finally:
        if mine:
            gc.unfreeze()


@contextmanager
def root_logger_left_alone():
    """scib-metrics logs through ``logging.info`` itself, whose first call gives an unset root
    logger a stderr handler for the rest of the session (every later record printed twice,
    the user's ``logging.basicConfig`` ignored): a placeholder handler keeps it unset."""
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        if placeholder is not None:
            root.removeHandler(placeholder)
