"""Torch networks (scvi-tools ``BaseModuleClass`` subclasses), one file per model, and the
small pure pieces they are fitted with."""

from ._calibration import drug_table, heldout_predictions
from ._contrastive import ContrastiveModule
from ._drug import RESPONSE_KEY, DrugResponseModule
from ._vae import VAEModule

__all__ = [
    "RESPONSE_KEY",
    "ContrastiveModule",
    "DrugResponseModule",
    "VAEModule",
    "drug_table",
    "heldout_predictions",
]
