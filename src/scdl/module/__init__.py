"""Torch networks, one file per model; closed-form solvers and kernels in small pure files."""

from ._annotator import CellTypeTransformerModule
from ._contrastive import TARGET_KEY, ContrastiveModule
from ._drug import DrugResponseModule
from ._vae import VAEModule

__all__ = [
    "TARGET_KEY",
    "CellTypeTransformerModule",
    "ContrastiveModule",
    "DrugResponseModule",
    "VAEModule",
]
