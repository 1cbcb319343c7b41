"""Figures for scdl's steps (matplotlib; ``show``/``save`` as in scanpy)."""

from ._contrastive import contrastive
from ._embedding import embedding
from ._history import training_history
from ._metrics import integration_metrics

__all__ = ["contrastive", "embedding", "integration_metrics", "training_history"]
