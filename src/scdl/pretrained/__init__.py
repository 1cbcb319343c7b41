"""Pretrained annotators: a registry, offline and checksum-verified loading.

A pretrained annotator is a folder (or a .zip / .tar.gz archive of one) holding
``config.json`` (architecture, gene vocabulary, cell-type labels; JSON only),
``model.safetensors`` (weights; tensors only) and a ``README.md`` model card. Loading never
unpickles anything.
"""

from ._registry import available, load

__all__ = ["available", "load"]
