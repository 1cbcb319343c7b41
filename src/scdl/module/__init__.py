"""Torch networks (scvi-tools ``BaseModuleClass`` subclasses), one file per model, and the
small pure pieces they are fitted with."""

from ._annotator import CellTypeTransformerModule
from ._calibration import drug_table, heldout_predictions
from ._contrastive import ContrastiveModule
from ._drug import FOLD_KEY, REFERENCE_X_KEY, RESPONSE_KEY, TARGET_X_KEY, DrugResponseModule
from ._vae import VAEModule

__all__ = [
    "FOLD_KEY",
    "REFERENCE_X_KEY",
    "RESPONSE_KEY",
    "TARGET_X_KEY",
    "CellTypeTransformerModule",
    "ContrastiveModule",
    "DrugResponseModule",
    "VAEModule",
    "drug_table",
    "heldout_predictions",
]
