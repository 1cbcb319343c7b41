"""A call says each thing once, and only what applies to it."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import scanpy as sc

import scdl


@pytest.fixture(scope="module")
def annotator():
    return scdl.pretrained.load("pbmc_kang2018")


@pytest.fixture()
def query():
    return scdl.datasets.kang_pbmc_heldout()[:300].copy()


def _messages(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_attributions_of_log_normalised_cells_say_so_once(annotator, query):
    sc.pp.normalize_total(query, target_sum=1e4)
    sc.pp.log1p(query)
    said = _messages(lambda: annotator.gene_attributions(query, n_top=5, n_steps=4))
    assert sum("not raw counts but log1p" in m for m in said) == 1, said


def test_no_mixing_check_warning_without_an_unknown_call(annotator, query):
    """A query lacking a fifth of the genes: the Unknown call's mixing check is skipped, which
    matters only where there is an Unknown call."""
    genes = annotator.get_var_names()
    cut = query[:, query.var_names[~query.var_names.isin(genes[:400])]].copy()
    said = _messages(lambda: annotator.predict(cut, unknown=False))
    assert not any("mixing check is skipped" in m for m in said), said
    said = _messages(lambda: annotator.predict(cut))
    assert any("mixing check is skipped" in m for m in said), said


def test_types_absent_from_the_query_are_left_out_without_warnings(annotator, query, caplog):
    keep = query.obs["cell_type"].astype(str).isin(["B", "CD14+Mono"]).to_numpy()
    sub = query[keep].copy()
    with caplog.at_level(logging.WARNING, logger="scdl"):
        table = annotator.gene_attributions(sub, n_top=3, n_steps=4)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert set(table["label"]) < set(annotator.labels)
    assert np.isfinite(table["attribution"]).all()
