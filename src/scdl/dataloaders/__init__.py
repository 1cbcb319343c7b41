"""Data splitters and minibatch loaders that feed the models (scvi-tools' ``dataloaders``).

Importing this module imports torch and scvi-tools.
"""

from ._contrastive import ContrastiveSplitter

__all__ = ["ContrastiveSplitter"]
