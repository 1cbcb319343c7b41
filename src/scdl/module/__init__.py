"""Torch networks (scvi-tools ``BaseModuleClass`` subclasses), one file per model; closed-form
solvers, kernels and calibration statistics in small pure files."""

from .. import _quiet_import  # noqa: F401  (first: importing scvi-tools re-seeds)
from ._annotator import CellTypeTransformerModule
from ._calibration import drug_table, heldout_predictions
from ._contrastive import TARGET_KEY, ContrastiveModule
from ._drug import FOLD_KEY, REFERENCE_X_KEY, RESPONSE_KEY, TARGET_X_KEY, DrugResponseModule
from ._vae import VAEModule

__all__ = [
    "FOLD_KEY",
    "REFERENCE_X_KEY",
    "RESPONSE_KEY",
    "TARGET_KEY",
    "TARGET_X_KEY",
    "CellTypeTransformerModule",
    "ContrastiveModule",
    "DrugResponseModule",
    "VAEModule",
    "drug_table",
    "heldout_predictions",
]
