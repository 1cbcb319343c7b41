"""Data splitters and minibatch loaders that feed the models (scvi-tools' ``dataloaders``).

:class:`FastDataSplitter` is the base every scdl splitter builds on, except the contrastive
one (scvi-tools' ``ContrastiveDataSplitter``); each special loader (sparse CSR minibatches,
bulk lines with target cells, target/background cells) has its own file. Importing this
module imports torch and scvi-tools.
"""

from .. import _quiet_import  # noqa: F401  (first: importing scvi-tools re-seeds)
from ._contrastive import ContrastiveSplitter
from ._csr_loader import CSRBatchLoader, CSRDataSplitter, gather_csr_rows
from ._drug_loader import DomainSplitter
from ._loader import (
    CSRBatches,
    FastDataSplitter,
    LabelledSplitter,
    TensorBatchLoader,
    dense_rows,
)

__all__ = [
    "CSRBatchLoader",
    "CSRBatches",
    "CSRDataSplitter",
    "ContrastiveSplitter",
    "DomainSplitter",
    "FastDataSplitter",
    "LabelledSplitter",
    "TensorBatchLoader",
    "dense_rows",
    "gather_csr_rows",
]
