"""Torch networks (scvi-tools ``BaseModuleClass`` subclasses), one file per model."""

from ._contrastive import ContrastiveModule
from ._vae import VAEModule

__all__ = ["ContrastiveModule", "VAEModule"]
