"""The user's global random states (and torch's thread count), kept as they were by scdl's steps.

Importing scvi-tools sets ``scvi.settings.seed = 0``, which runs Lightning's
``seed_everything``: Python's, numpy's and torch's global generators restart from 0 and
``PL_GLOBAL_SEED`` is set; importing scikit-learn's metrics draws from Python's ``random``. A
scvi-tools user meets that at ``import scvi``, before seeding the session; scdl imports these
libraries lazily, at the first step that needs them, when the user may already have seeded.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np

#: a decorated function's own type, kept for type checkers (IDE completion of its options)
F = TypeVar("F", bound=Callable[..., Any])

#: what Lightning's ``seed_everything`` writes into the environment
SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextlib.contextmanager
def python_numpy_env_kept(env_keys: tuple[str, ...] = SEED_ENV):
    """Python's and numpy's global random states and the environment variables ``env_keys``
    as they were before the block."""
    py_state, np_state = random.getstate(), np.random.get_state()
    env = {k: os.environ.get(k) for k in env_keys}
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def import_scvi_keeping_rng() -> None:
    """Import scvi-tools once, then put back the global random states its import changed."""
    if "scvi" in sys.modules:
        return
    import torch

    with torch.random.fork_rng(devices=[]), python_numpy_env_kept():  # CUDA not started
        import scvi  # noqa: F401


def keeps_torch_threads(func: F) -> F:
    """Run ``func`` with torch's CPU thread count put back afterwards.

    scanpy's neighbours (UMAP's numba code) and HVG steps set the OpenMP thread count, which
    torch shares, to every core: a user's ``torch.set_num_threads(n)`` or ``OMP_NUM_THREADS``
    would be dropped for the rest of the session, and the next training would sum in another
    order (the same seed giving other weights in the same session).
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        torch = sys.modules.get("torch")
        n_threads = None if torch is None else torch.get_num_threads()
        try:
            return func(*args, **kwargs)
        finally:
            if n_threads is not None and torch.get_num_threads() != n_threads:
                torch.set_num_threads(n_threads)

    return cast("F", wrapper)


def keeps_rng(func: F) -> F:
    """Run ``func`` with Python's ``random`` and torch's CPU generator put back afterwards.

    The tools seed their own work (``random_state``); a lazy import, a model's weight
    initialisation or a data loader's shuffling seed would otherwise advance the user's
    generators. numpy's global generator is not touched here: ``random_state=None`` in scanpy
    means drawing from it. torch's thread count is kept too (:func:`keeps_torch_threads`).
    """

    @keeps_torch_threads
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        torch = sys.modules.get("torch")
        py_state = random.getstate()
        torch_state = None if torch is None else torch.random.get_rng_state()
        try:
            return func(*args, **kwargs)
        finally:
            random.setstate(py_state)
            torch = sys.modules.get("torch")  # imported during the call: its state then
            if torch is not None and torch_state is not None:  # is fresh, nothing to keep
                torch.random.set_rng_state(torch_state)

    return cast("F", wrapper)
