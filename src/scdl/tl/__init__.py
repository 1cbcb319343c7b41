"""One-line analysis steps that write into AnnData (scanpy's ``tl`` convention).

Each function imports torch/scvi-tools only when called.
"""

from ._cluster import cluster
from ._contrastive import contrastive
from ._integrate import integrate
from ._metrics import integration_metrics

__all__ = ["cluster", "contrastive", "integrate", "integration_metrics"]
