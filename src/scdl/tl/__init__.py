"""One-line analysis steps that write into AnnData (scanpy's ``tl`` convention).

Each function imports torch/scvi-tools only when called.
"""

from ._annotate import annotate
from ._cluster import cluster
from ._contrastive import contrastive
from ._drug_response import drug_response
from ._integrate import integrate
from ._map_query import map_query
from ._metrics import integration_metrics

__all__ = [
    "annotate",
    "cluster",
    "contrastive",
    "drug_response",
    "integrate",
    "integration_metrics",
    "map_query",
]
