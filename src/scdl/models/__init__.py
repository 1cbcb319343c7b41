"""User-facing model classes (scvi-tools ``BaseModelClass`` subclasses).

Importing this module imports torch and scvi-tools; classes are resolved lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .. import _quiet_import  # noqa: F401  (first: importing scvi-tools re-seeds)

_CLASSES = {
    "CellTypeTransformer": "._annotator",
    "ContrastiveVAE": "._contrastive",
    "DrugResponseModel": "._drug",
    "VAE": "._vae",
}

if TYPE_CHECKING:
    from ._annotator import CellTypeTransformer
    from ._contrastive import ContrastiveVAE
    from ._drug import DrugResponseModel
    from ._vae import VAE


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(importlib.import_module(_CLASSES[name], __name__), name)
    raise AttributeError(f"module 'scdl.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(_CLASSES)


__all__ = ["CellTypeTransformer", "ContrastiveVAE", "DrugResponseModel", "VAE"]
