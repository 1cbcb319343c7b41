"""Property-based tests of registration: it succeeds exactly when the input is valid.

Over small random AnnData (random counts, dtypes, sparse or dense, injected NaN/inf, negative
or fractional values, random obs categories with missing values, gene names with
duplicates, typo'd keys and layers), ``setup_anndata`` either registers valid data, or raises
``ValueError``/``TypeError``/``KeyError`` and leaves the AnnData unchanged.
"""

from __future__ import annotations

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
from conftest import assert_unchanged, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import sparse

from scdl.models import VAE, CellTypeTransformer

# a few seconds in the suite; SCDL_HYPOTHESIS_EXAMPLES=500 for a longer search
SETTINGS = settings(
    max_examples=int(os.environ.get("SCDL_HYPOTHESIS_EXAMPLES", 25)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
BAD = {"nan": np.nan, "inf": np.inf, "negative": -1.0, "fraction": 0.5}


FAULTS = [
    *BAD,
    "empty",
    "duplicate_gene",
    "zero_cell",
    "zero_gene",
    "layer_typo",
    "key_typo",
    "missing_batch",
    "single_batch",
    "single_label",
]
# words of the error message that name each fault (any one suffices)
NAMED_BY = {
    "nan": ("nan or infinite",),
    "inf": ("nan or infinite",),
    "negative": ("negative",),
    "fraction": ("non-integer",),
    "empty": ("empty",),
    "duplicate_gene": ("duplicates",),
    "zero_cell": (),  # valid: all-zero cells and genes are kept (cells with a warning)
    "zero_gene": (),
    "layer_typo": ("layer 'count' not found",),
    "key_typo": ("'btach'",),
    "missing_batch": ("missing values",),
    "single_batch": (),  # valid: registered as one batch, with a warning
    "single_label": ("1 category",),
}


@st.composite
def random_anndata(draw):
    """A valid random AnnData with zero, one or two random faults injected."""
    faults = draw(st.sets(st.sampled_from(FAULTS), max_size=2))
    n_obs = 0 if "empty" in faults else draw(st.integers(2, 12))
    n_vars = draw(st.integers(2, 6))
    size = n_obs * n_vars
    counts = np.array(
        draw(st.lists(st.integers(0, 5), min_size=size, max_size=size)), dtype=np.float64
    ).reshape(n_obs, n_vars)
    if n_obs:
        counts[:, 0] += 1  # every cell expressed ...
        counts[0] += 1  # ... and every gene
    cell = draw(st.integers(0, max(n_obs - 1, 0)))
    gene = draw(st.integers(0, n_vars - 1))
    for fault in faults & set(BAD):
        if n_obs:
            counts[cell, gene] = BAD[fault]
    if "zero_cell" in faults and n_obs:
        counts[cell] = 0
    if "zero_gene" in faults and n_obs:
        counts[:, gene] = 0
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
    if not np.isfinite(counts).all() or (counts != np.round(counts)).any():
        dtype = np.float32  # an int matrix cannot hold them
    x = counts.astype(dtype)
    if draw(st.booleans()):
        x = sparse.csr_matrix(x)
    genes = [f"gene{i}" for i in range(n_vars)]
    if "duplicate_gene" in faults:
        genes[gene] = genes[(gene + 1) % n_vars]
    n_batches = 1 if "single_batch" in faults else draw(st.integers(2, 3))
    batch = pd.Series(np.resize(["a", "b", "c"][:n_batches], n_obs), dtype=object)
    # a copy: pandas >= 3 (copy-on-write) hands out read-only arrays
    batch = batch.sample(frac=1, random_state=draw(st.integers(0, 9))).to_numpy().copy()
    if "missing_batch" in faults and n_obs:
        batch[cell] = None
    labels = np.resize(["T"] if "single_label" in faults else ["T", "B"], n_obs)
    obs = pd.DataFrame(
        {"batch": pd.Categorical(batch), "label": pd.Categorical(labels)},
        index=[f"cell{i}" for i in range(n_obs)],
    )
    in_layer = draw(st.booleans()) or "layer_typo" in faults
    adata = ad.AnnData(
        X=np.zeros((n_obs, n_vars), np.float32) if in_layer else x,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(genes, dtype=object)),
    )
    layer = None
    if in_layer:
        adata.layers["counts"] = x
        layer = "count" if "layer_typo" in faults else "counts"
    batch_key = "btach" if "key_typo" in faults else draw(st.sampled_from([None, "batch"]))
    return adata, counts, layer, batch_key, faults


def _valid(adata, counts, layer, batch_key, *, need_labels: bool) -> bool:
    """An independent statement of what registration accepts."""
    if layer == "count" or counts.size == 0:
        return False
    if need_labels and not adata.var_names.is_unique:  # the annotator matches genes by name
        return False
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts != np.round(counts)).any():
        return False
    # all-zero genes and cells are valid (as in scvi-tools)
    if batch_key is not None:
        if batch_key not in adata.obs or adata.obs[batch_key].isna().any():
            return False
        # one batch is valid, with a warning (as scvi-tools registers it)
    return not need_labels or adata.obs["label"].nunique() >= 2


def _check(setup, data, *, need_labels: bool) -> None:
    adata, counts, layer, batch_key, faults = data
    valid = _valid(adata, counts, layer, batch_key, need_labels=need_labels)
    event("valid" if valid else "invalid")
    snap = snapshot(adata)
    try:
        with warnings.catch_warnings():  # an all-zero cell is said in a warning
            warnings.simplefilter("ignore", UserWarning)
            setup(adata, layer=layer, batch_key=batch_key)
    except (ValueError, TypeError, KeyError) as e:
        assert not valid, f"valid input refused: {e}"
        message = str(e).lower()
        named = [f for f in faults if any(word in message for word in NAMED_BY[f])]
        assert named, f"the message names none of the faults {sorted(faults)}: {e}"
        assert_unchanged(adata, snap)
        return
    assert valid, "invalid input accepted"
    assert "_scvi_uuid" in adata.uns


@SETTINGS
@given(random_anndata())
def test_vae_registration_accepts_exactly_valid_input(data):
    _check(VAE.setup_anndata, data, need_labels=False)


@SETTINGS
@given(random_anndata())
def test_annotator_registration_accepts_exactly_valid_input(data):
    def setup(adata, **kw):
        CellTypeTransformer.setup_anndata(adata, labels_key="label", **kw)

    _check(setup, data, need_labels=True)
