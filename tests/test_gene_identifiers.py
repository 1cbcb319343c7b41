"""Gene identifiers other tools write: the refusals and warnings name what the file holds and
the printed fix, run as written, finds the model's genes."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import assert_unchanged, read_shared, snapshot
from scipy import sparse

import scdl
from scdl.models import VAE

# what scater's uniquifyFeatureNames writes for a symbol several Ensembl IDs share
SCATER = re.compile(r"_ENS[A-Z]*\d+$")


def _run_fix(hint: str, names, genes) -> list[str]:
    """The fix a hint prints (``adata.var_names = ...``), run on ``names``."""
    code = re.search(r"`(import re;[^`]+|spelling = [^`]+)`", hint).group(1)
    scope = {"genes": list(genes), "names": list(names)}
    exec(code.replace("adata.var_names = ", "out = ").replace("adata.var_names", "names"), scope)
    return list(scope["out"])


@pytest.fixture(scope="module")
def scater_names() -> pd.Index:
    """The bundled Kang 1.5k file's genes (muscat's example_sce): 91 written
    'SYMBOL_ENSG...' by scater."""
    names = read_shared("kang_pbmc_1.5k.h5ad").var_names
    assert names.str.contains(SCATER).sum() > 50
    return names


def test_scater_suffix_is_found_both_ways_and_its_fix_restores_the_genes(scater_names):
    plain = scater_names.str.replace(SCATER, "", regex=True)
    for model, data in ((plain, scater_names), (scater_names, plain)):
        hint = scdl.data.renamed_hint(model, data)
        assert hint is not None and "an Ensembl ID after '_'" in hint, hint
        restored = pd.Index(_run_fix(hint, data, model))
        assert model.isin(restored).all()


def test_scater_names_warn_on_a_query_that_otherwise_holds_the_genes(scater_names):
    """A full-gene query in scater's names: the genes it lacks are in the file; the warning
    says so instead of their counting as unmeasured in silence."""
    genes = scater_names.str.replace(SCATER, "", regex=True)
    present = genes.isin(scater_names)
    assert 0.9 < present.mean() < 1
    with pytest.warns(
        UserWarning,
        match=r"91 of the model's genes the data lack differ .* an Ensembl ID after '_'",
    ):
        scdl.data.warn_renamed_genes(genes, scater_names, present)


def test_multi_genome_prefix_names_the_genome_to_keep(scater_names):
    genes = scater_names[:300]
    names = ("GRCh38_" + genes).append("mm10___" + genes.str.capitalize())
    hint = scdl.data.renamed_hint(genes, names)
    assert "genome prefix 'GRCh38_'" in hint, hint
    adata = ad.AnnData(sparse.csr_matrix((2, len(names)), dtype=np.float32))
    adata.var_names = names
    code = re.search(r"`(adata = [^`]+)`", hint).group(1)
    scope = {"adata": adata}
    exec(code, scope)
    assert list(scope["adata"].var_names) == list(genes)


def _query(edit) -> ad.AnnData:
    query = scdl.datasets.kang_pbmc_heldout()[:100].copy()
    return edit(query) or query


def _mouse_ids_with_symbols_in_var(query):
    """CELLxGENE's layout for mouse data: Ensembl IDs as names, 'Cd3e' in a column."""
    query.var["feature_name"] = query.var_names.str.capitalize().to_numpy()
    query.var_names = [f"ENSMUSG{i:011d}" for i in range(query.n_vars)]


def _row_numbers(query):
    query.var_names = [str(i) for i in range(query.n_vars)]


def _mouse_cased(query):
    query.var_names = query.var_names.str.capitalize()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            _mouse_ids_with_symbols_in_var,
            r"adata.var\['feature_name'\] holds \d+ of them in another case \(\d+ as written\).*"
            r"another species",
        ),
        (_row_numbers, r"adata.var_names are row numbers .*read without its gene names"),
        (_mouse_cased, r"in another case.*another species"),
    ],
)
def test_refusal_names_where_the_genes_are_and_not_a_lower_overlap(edit, match):
    query = _query(edit)
    snap = snapshot(query)
    with pytest.raises(ValueError, match=match) as err:
        scdl.tl.annotate(query)
    if edit is not _row_numbers:  # the genes are in the file: fewer of them is not the fix
        assert "min_gene_overlap" not in str(err.value)
    assert_unchanged(query, snap)


def test_case_fix_keeps_genes_a_case_method_would_lose():
    """The shipped annotator's genes are upper case bar a few ('C15orf48'): the fix is a
    lookup through its names, which finds them all; a whole-file .upper() would not, and
    the few it loses are warned about."""
    query = _query(lambda q: setattr(q, "var_names", q.var_names.str.lower()))
    with pytest.raises(ValueError, match="another case") as err:
        scdl.tl.annotate(query)
    model = scdl.pretrained.load("pbmc_kang2018")
    genes = pd.Index(model.get_var_names())
    assert not (genes == genes.str.upper()).all()
    assert genes.isin(_run_fix(str(err.value), query.var_names, genes)).all()
    upper = query.var_names.str.upper()
    present = genes.isin(upper)
    with pytest.warns(UserWarning, match=r"of the genes it lacks are in adata.var_names in"):
        scdl.data.warn_renamed_genes(genes, upper, present)


def test_vae_query_refusal_offers_no_zero_padding_for_genes_in_another_case(kang):
    ref = kang[:, :300].copy()
    VAE.setup_anndata(ref, batch_key="sample")
    model = VAE(ref, n_latent=4)
    model.train(max_epochs=1, enable_progress_bar=False)
    query = ref[:50].copy()
    query.var_names = query.var_names.str.lower()
    with pytest.raises(ValueError, match="another case") as err:
        VAE.load_query_data(query, model)
    assert "pad" not in str(err.value)


def test_drug_model_names_the_target_with_duplicated_genes():
    bulk = ad.AnnData(np.random.default_rng(0).normal(size=(20, 150)).astype(np.float32))
    bulk.var_names = [f"G{i}" for i in range(150)]
    bulk.obsm["ln_ic50"] = pd.DataFrame({"d": np.arange(20.0)}, index=bulk.obs_names)
    cells = ad.AnnData(sparse.csr_matrix(np.ones((5, 150), dtype=np.float32)))
    cells.var_names = ["G0"] + [f"G{i}" for i in range(149)]
    scdl.models.DrugResponseModel.setup_anndata(bulk, response_key="ln_ic50")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"target.var_names has duplicates.*target.var_names_"):
            scdl.models.DrugResponseModel(bulk, target=cells)


def _refusal(names, genes) -> str:
    adata = ad.AnnData(sparse.csr_matrix((2, len(names)), dtype=np.float32))
    adata.var_names = names
    with pytest.raises(ValueError) as err:
        scdl.data.align_to_genes(adata, pd.Index(genes))
    return str(err.value)


def test_numeric_identifiers_are_not_called_row_numbers():
    rng = np.random.default_rng(0)
    entrez = [str(g) for g in rng.choice(90_000, 600, replace=False) + 1_000]
    assert "row numbers" not in _refusal(entrez[300:], entrez[:300])
    assert "row numbers" in _refusal([str(i) for i in range(300)], entrez[:300])


@pytest.mark.parametrize(("n_renamed", "lower"), [(400, False), (200, True)])
def test_a_rename_that_finds_too_few_genes_keeps_the_lower_overlap_fix(n_renamed, lower):
    genes = [f"G{i}-x" for i in range(400)] + [f"H{i}" for i in range(600)]
    names = [f"G{i}.x" for i in range(n_renamed)] + [f"H{i}" for i in range(100)]
    text = _refusal(names, genes)
    assert "make.names" in text
    assert ("min_gene_overlap" in text) == lower, text


def test_a_model_trained_on_r_names_warns_on_cells_with_the_original_names():
    """A drug model trained on GDSC's file as read before scdl.datasets.gdsc restored its names
    ('HLA.DRA'): the cells' 'HLA-DRA' is the same gene, said with the fix."""
    original = pd.Index([f"HLA-D{c}A" for c in "ABCDEFGHJKLM"] + [f"G{i}" for i in range(300)])
    model_genes = original.str.replace("-", ".", regex=False)
    present = model_genes.isin(original)
    with pytest.warns(UserWarning, match=r"12 of the model's genes .*trained on an R export"):
        scdl.data.warn_renamed_genes(model_genes, original, present)


@pytest.mark.parametrize("damage", [" ", "\r", "\xa0", '"'])
def test_names_inside_spaces_quotes_or_line_ends_are_named_with_a_fix_that_works(damage):
    """A spreadsheet's trailing blank, a CRLF features file, a non-breaking space, R's
    write.table quotes: the genes are there inside other characters (the hint asked whether
    the data were of another species)."""
    query = _query(lambda q: setattr(q, "var_names", q.var_names.map(lambda g: f"{damage}{g}")))
    with pytest.raises(ValueError, match="inside spaces, quotes or line ends") as err:
        scdl.tl.annotate(query)
    assert "another species" not in str(err.value)
    code = re.search(r"`(adata\.var_names = [^`]+)`", str(err.value)).group(1)
    scope = {"adata": query}
    exec(code, scope)
    genes = pd.Index(scdl.pretrained.load("pbmc_kang2018").get_var_names())
    assert genes.isin(query.var_names).mean() > 0.5
