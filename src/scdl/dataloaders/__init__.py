"""Minibatches for scdl's models: loaders and splitters (scvi-tools' ``DataSplitter`` API).

:class:`FastDataSplitter` is the base every scdl splitter builds on; each special loader
(sparse CSR minibatches, bulk lines with target cells) has its own file.
"""

from ._csr_loader import CSRBatchLoader, CSRDataSplitter, gather_csr_rows
from ._drug_loader import DomainSplitter
from ._loader import CSRBatches, FastDataSplitter, TensorBatchLoader, dense_rows

__all__ = [
    "CSRBatchLoader",
    "CSRBatches",
    "CSRDataSplitter",
    "DomainSplitter",
    "FastDataSplitter",
    "TensorBatchLoader",
    "dense_rows",
    "gather_csr_rows",
]
