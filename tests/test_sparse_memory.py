"""A large sparse matrix is checked, registered and mapped without a dense copy of it.

Synthetic counts: the property under test is memory, which does not depend on biology, and a
real file of this size would not fit the repository. numpy's and scipy's allocations are traced
by ``tracemalloc``, so a whole-matrix ``toarray()`` anywhere on these paths shows up in the peak.
"""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from scdl.models import VAE, CellTypeTransformer, ContrastiveVAE

N_CELLS, N_GENES, DENSITY = 100_000, 2_000, 0.005
DENSE_BYTES = N_CELLS * N_GENES * 4  # 800 MB as float32
BOUND = 150e6  # the CSR is ~8 MB; a dense copy of it would be 800 MB


@pytest.fixture(scope="module")
def big() -> ad.AnnData:
    rng = np.random.default_rng(0)
    x = sparse.random(N_CELLS, N_GENES, density=DENSITY, format="csr", rng=rng, dtype=np.float32)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float32)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(rng.choice(["a", "b"], N_CELLS)),
            "label": pd.Categorical(rng.choice(["t1", "t2", "t3"], N_CELLS)),
        },
        index=[f"c{i}" for i in range(N_CELLS)],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


def _peak(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "register",
    [
        lambda a: VAE.setup_anndata(a, batch_key="batch"),
        lambda a: CellTypeTransformer.setup_anndata(a, labels_key="label", batch_key="batch"),
        lambda a: ContrastiveVAE.setup_anndata(a, batch_key="batch"),
    ],
    ids=["VAE", "CellTypeTransformer", "ContrastiveVAE"],
)
def test_setup_checks_a_large_sparse_matrix_without_densifying(big, register):
    adata = big.copy()
    peak = _peak(lambda: register(adata))
    assert sparse.issparse(adata.X)
    assert peak < BOUND, f"peak {peak / 1e6:.0f} MB (dense copy {DENSE_BYTES / 1e6:.0f} MB)"


def test_a_trained_vae_maps_a_large_sparse_matrix_without_densifying(big):
    adata = big.copy()
    VAE.setup_anndata(adata, batch_key="batch")
    model = VAE(adata)
    # two minibatches: the weights do not matter to memory, the full pass below does
    model.train(max_epochs=1, limit_train_batches=2, enable_progress_bar=False)
    peak = _peak(model.get_latent_representation)
    assert peak < BOUND, f"peak {peak / 1e6:.0f} MB (dense copy {DENSE_BYTES / 1e6:.0f} MB)"
