"""Gene alignment between a reference (a trained model) and a query AnnData."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._checks import get_matrix


def same_gene_names(a, b) -> bool:
    """Whether two gene lists hold the same names in the same order, whatever their dtype.

    pandas 2 reads a ``string``-dtype Index (what anndata 0.12 gives for a file written by
    anndata 0.13 / pandas 3) as unequal to the same names as ``object``.
    """
    a, b = pd.Index(a), pd.Index(b)
    return len(a) == len(b) and a.astype(object).equals(b.astype(object))


def gene_mismatch_message(reference: pd.Index, query: pd.Index) -> str:
    """Explain how a query's genes differ from the reference's, and how to fix it."""
    ref, qry = pd.Index(reference), pd.Index(query)
    missing = ref.difference(qry)
    extra = qry.difference(ref)
    if len(missing):
        return (
            f"The query lacks {len(missing)} of the model's {len(ref)} genes "
            f"(e.g. {missing[:5].tolist()}). Use the same gene identifiers as the reference "
            "(symbols vs Ensembl IDs?), or pad the missing genes with zeros with "
            "`VAE.prepare_query_anndata(query, model)` if only a few are absent."
        )
    if len(extra):
        return (
            f"The query has {len(extra)} genes the model was not trained on. Subset it to the "
            "model's genes: `query = query[:, model.get_var_names()].copy()`."
        )
    return (
        "The query has the model's genes in a different order. Reorder them: "
        "`query = query[:, model.get_var_names()].copy()`."
    )


def gene_positions(var_names, genes, *, what: str = "model") -> np.ndarray:
    """Where each of ``genes`` sits in ``var_names`` (``-1``: absent). Duplicated names are
    allowed (scanpy warns) unless one of ``genes`` is among them.

    Raises
    ------
    ValueError
        One of ``genes`` occurs more than once in ``var_names``.
    """
    names, genes = pd.Index(var_names), pd.Index(genes)
    if names.is_unique:
        return names.get_indexer(genes)
    clash = names[names.duplicated()].unique().intersection(genes)
    if len(clash):
        raise ValueError(
            f"adata.var_names has duplicates among the {what}'s genes (e.g. "
            f"{clash[:5].tolist()}), which cannot be matched by name. Call "
            "`adata.var_names_make_unique()` first (or keep the right copy of each)."
        )
    single = ~names.duplicated(keep=False)
    pos = names[single].get_indexer(genes)
    return np.where(pos >= 0, np.flatnonzero(single)[pos], -1)


def gene_columns(adata, genes, *, min_overlap: float = 0.5, what: str = "model"):
    """Where each of ``genes`` sits in ``adata.var_names`` (``-1``: absent) and which occur.

    Duplicated names in ``adata.var_names`` are allowed (scanpy warns) unless one of
    ``genes`` is among them: it could not be matched by name.

    Raises
    ------
    ValueError
        One of ``genes`` occurs more than once in ``adata.var_names``, or fewer than
        ``min_overlap`` of ``genes`` occur.
    """
    if isinstance(min_overlap, bool) or not 0 <= min_overlap <= 1:
        raise ValueError(
            f"min_gene_overlap must be a fraction in [0, 1] (e.g. 0.5: half of the {what}'s "
            f"genes), got {min_overlap!r}."
        )
    genes = pd.Index(genes)
    col = gene_positions(adata.var_names, genes, what=what)
    present = col >= 0
    n_present = int(present.sum())
    if n_present < min_overlap * len(genes):
        example = adata.var_names[:3].tolist()
        raise ValueError(
            f"Only {n_present} of the {what}'s {len(genes)} genes ({n_present / len(genes):.1%}) "
            f"occur in adata.var_names (e.g. {example}); at least "
            f"{int(np.ceil(min_overlap * len(genes) - 1e-9))} ({min_overlap:.0%}) are needed. "
            f"Use the same gene identifiers as the {what} (symbols, e.g. {genes[:3].tolist()}, "
            "vs Ensembl IDs?), or set adata.var_names from the right var column. If the data "
            "simply holds fewer of them, lower `min_gene_overlap` (`scdl.tl.annotate`, "
            "`predict`; `scdl annotate --min-gene-overlap`)."
        )
    return col, present


def align_to_genes(
    adata,
    genes,
    *,
    layer: str | None = None,
    min_overlap: float = 0.5,
    what: str = "model",
):
    """Put ``adata``'s counts in the column order of ``genes`` (matched by name).

    Returns a CSR matrix (cells x ``len(genes)``, float32) with zeros for genes the data
    lacks, and a boolean mask of the genes it holds. ``adata`` itself is not modified.

    Raises
    ------
    ValueError
        Fewer than ``min_overlap`` of ``genes`` occur in ``adata.var_names``.
    """
    import numpy as np
    from scipy import sparse

    col, present = gene_columns(adata, genes, min_overlap=min_overlap, what=what)
    n_present = int(present.sum())
    x = get_matrix(adata, layer)
    # a 0/1 selection matrix maps query columns to the model's, without densifying
    sel = sparse.csr_matrix(
        (np.ones(n_present, dtype=np.float32), (col[present], np.flatnonzero(present))),
        shape=(adata.n_vars, len(genes)),
    )
    if sparse.issparse(x):
        out = sparse.csr_matrix(x, dtype=np.float32) @ sel
    elif isinstance(x, np.ndarray):
        out = sparse.csr_matrix(np.asarray(x, dtype=np.float32)) @ sel
    else:  # backed: read in row chunks
        out = sparse.vstack(
            [
                sparse.csr_matrix(x[i : i + 10_000], dtype=np.float32) @ sel
                for i in range(0, adata.n_obs, 10_000)
            ],
            format="csr",
        )
    return sparse.csr_matrix(out, dtype=np.float32), present
