"""scdl: deep-learning models for single-cell analysis as scanpy-style steps.

Submodules load lazily so that ``import scdl`` does not import torch or scvi-tools;
they load the first time a model is built or a tool that trains one is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from . import data, dataloaders, datasets, models, module, pl, pretrained, tl, train


def __getattr__(name: str):
    if name in _SUBMODULES:  # loaded on first access
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'scdl' has no attribute {name!r}")


def __dir__() -> list[str]:  # what tab completion offers: the public API only
    return sorted(__all__)


__all__ = [
    "__version__",
    "data",
    "dataloaders",
    "datasets",
    "models",
    "module",
    "pl",
    "pretrained",
    "tl",
    "train",
]
# the public namespaces (ruff reads __all__ as a literal list)
_SUBMODULES = frozenset(__all__) - {"__version__"}
