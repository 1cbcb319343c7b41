"""Figures for scdl's steps (matplotlib; ``show``/``save`` as in scanpy)."""

from ._annotation import annotation, attributions
from ._cluster import cluster_resolution
from ._contrastive import contrastive
from ._drug_response import drug_response
from ._embedding import embedding
from ._history import training_history
from ._metrics import integration_metrics

__all__ = [
    "annotation",
    "attributions",
    "cluster_resolution",
    "contrastive",
    "drug_response",
    "embedding",
    "integration_metrics",
    "training_history",
]
