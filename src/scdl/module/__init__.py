"""Torch networks (scvi-tools ``BaseModuleClass`` subclasses), one file per model."""

from ._vae import VAEModule

__all__ = ["VAEModule"]
