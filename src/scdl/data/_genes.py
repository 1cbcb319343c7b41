"""Gene alignment between a reference (a trained model) and a query AnnData."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._gene_renames import _case_fix, _renamed
from ._rows import get_matrix, row_blocks


def same_gene_names(a, b) -> bool:
    """Whether two gene lists hold the same names in the same order, whatever their dtype.

    pandas 2 reads a ``string``-dtype Index (what anndata 0.12 gives for a file written by
    anndata 0.13 / pandas 3) as unequal to the same names as ``object``.
    """
    a, b = pd.Index(a), pd.Index(b)
    return len(a) == len(b) and a.astype(object).equals(b.astype(object))


def gene_mismatch_message(
    reference: pd.Index, query, *, genes_from: str = "model.get_var_names()", pad: bool = True
) -> str:
    """Explain how a query's genes differ from the reference's, and how to fix it.

    ``query`` is the query's gene names, or its AnnData (then a var column holding the
    reference's identifiers is named). ``genes_from`` is the code giving the reference's genes
    in the fix; ``pad`` offers the VAE's zero padding of a few missing genes.
    """
    var = getattr(query, "var", None)
    ref, qry = pd.Index(reference), pd.Index(query.var_names if var is not None else query)
    missing = ref.difference(qry)
    extra = qry.difference(ref)
    if len(missing):
        found, hint, _ = identifier_fix(ref, qry, var, raw=getattr(query, "raw", None))
        # padding genes that are there under another name or case would zero their counts
        pad_fix = (
            ", or pad the missing genes with zeros with `VAE.prepare_query_anndata(query, "
            "model)` if only a few are absent"
            if pad and found not in FOUND_ELSEWHERE
            else ""
        )
        return (
            f"The query lacks {len(missing)} of the model's {len(ref)} genes "
            f"(e.g. {missing[:5].tolist()}). {hint}{pad_fix}."
        )
    # a backed query's subset is read with to_memory(): copy() of a backed view fails
    into = "to_memory()" if getattr(query, "isbacked", False) else "copy()"
    if len(extra):
        return (
            f"The query has {len(extra)} genes the model was not trained on. Subset it to the "
            f"model's genes: `query = query[:, {genes_from}].{into}`."
        )
    return (
        "The query has the model's genes in a different order. Reorder them: "
        f"`query = query[:, {genes_from}].{into}`."
    )


#: below this share of a model's genes, a query's predictions are said to be less reliable
LOW_GENE_OVERLAP = 0.9


#: what to do with data of another species or panel: an annotator is trained on labelled
#: cells of that kind; a drug model's bulk lines are human, so genes are mapped to them
_OTHER_KIND_FIX = {
    "train": "train a model on labelled cells of that species",
    "human": "map them to human orthologue symbols first (the drug model's bulk lines are "
    "human cell lines)",
}


def best_var_column(
    genes, var: pd.DataFrame, *, floor: int = 0, any_case: bool = False
) -> tuple[str | None, int]:
    """The text column of ``var`` holding the most of ``genes`` (more than ``floor``), and how
    many it holds; ``(None, floor)`` when none holds more. ``any_case``: matched whatever the
    case ('Cd3e' holds 'CD3E')."""
    genes = pd.Index(genes).astype(str)
    if any_case:
        genes = genes.str.upper()
    best, best_n = None, floor
    for column in var.columns:
        values = var[column]
        if values.dtype.kind in "biufc":  # identifiers are text
            continue
        values = pd.Index(values.astype(str))
        n = int(genes.isin(values.str.upper() if any_case else values).sum())
        if n > best_n:
            best, best_n = column, n
    return best, best_n


#: what identifier_fix found: the genes are in the file under another name, so neither
#: padding them with zeros nor lowering the overlap the call needs is the fix
FOUND_ELSEWHERE = frozenset({"column", "rename", "case"})


def identifier_fix(
    genes: pd.Index,
    var_names: pd.Index,
    var: pd.DataFrame | None,
    *,
    other_kind: str = "train",
    raw=None,
) -> tuple[str, str, int]:
    """:func:`identifier_hint` with what it found: ``"column"`` (a var column holds them),
    ``"rename"`` (a mechanical rename), ``"case"``, ``"numbers"`` (the names are row
    numbers), ``"none"`` (no gene in common), ``"panel"`` (a query cut to a few genes) or
    ``"other"``; and how many of ``genes`` the data hold once its fix is made. ``raw``: the
    AnnData's ``.raw`` (named in a panel's fix only where it holds more of ``genes``)."""
    other = _OTHER_KIND_FIX[other_kind]
    genes = pd.Index(genes).astype(str)
    names = pd.Index(var_names).astype(str)
    n_names = int(genes.isin(names).sum())
    n_case = int(genes.str.upper().isin(names.str.upper()).sum())
    species = (
        f"if the data are of the model's species written in another case, match them: "
        f"{_case_fix(genes)}; if they are another species' genes (mouse Isg15 vs human "
        f"ISG15), {other}"
    )
    if var is not None:
        best, best_n = best_var_column(genes, var, floor=max(n_names, n_case))
        # CELLxGENE's layout for mouse data: Ensembl IDs as names, 'Cd3e' in a column
        cased, cased_n = best_var_column(
            genes, var, floor=max(n_names, n_case, best_n), any_case=True
        )
        if cased is not None:
            as_written = int(genes.isin(pd.Index(var[cased].astype(str))).sum())
            return (
                "case",
                (
                    f"adata.var[{cased!r}] holds {cased_n} of them in another case "
                    f"({as_written} as written): use it as the names, "
                    f"`adata.var_names = adata.var[{cased!r}].astype(str)`, then "
                    f"`adata.var_names_make_unique()`; then, {species}"
                ),
                cased_n,
            )
        if best is not None:
            return (
                "column",
                (
                    f"adata.var[{best!r}] holds {best_n} of them: use it as the names, "
                    f"`adata.var_names = adata.var[{best!r}].astype(str)`, then "
                    "`adata.var_names_make_unique()`"
                ),
                best_n,
            )
    n_raw = 0 if raw is None else int(genes.isin(pd.Index(raw.var_names).astype(str)).sum())
    panel = (
        f"The data hold {len(names)} genes: if they were cut to highly variable genes (or a "
        + (
            f"panel), pass every gene the file holds: adata.raw holds {n_raw} of them "
            "(`adata.raw.to_adata()`); the model reads its own genes"
            if n_raw > n_names
            else "panel), start again from the file with every gene (this AnnData keeps no "
            "more of them, in adata.raw or elsewhere); the model reads its own genes"
        )
    )
    renamed, n_renamed = _renamed(genes, names, True)
    n_found = n_names + n_renamed
    cut = len(names) < 0.5 * len(genes) or (len(names) <= 5_000 and n_found < 0.5 * len(genes))
    if renamed is not None:
        # a rename that finds a few genes of a panel: the panel is the larger problem
        return ("panel" if cut else "rename"), (f"{renamed}. {panel}" if cut else renamed), n_found
    if n_case > max(n_names, 0.5 * len(genes)):
        # the exact matches are counted in n_case too: the message counts the others
        return (
            "case",
            (
                f"{n_case - n_names} more of them occur in adata.var_names in another case (e.g. "
                f"{genes[:2].tolist()}). {species[0].upper()}{species[1:]}"
            ),
            n_case,
        )
    if n_names == 0 and _row_numbers(names):
        return (
            "numbers",
            (
                f"adata.var_names are row numbers (e.g. {names[:3].tolist()}): the matrix was read "
                "without its gene names. Set them from the file's gene list (e.g. 10x's "
                "features.tsv.gz, or read the folder with `sc.read_10x_mtx`)"
            ),
            0,
        )
    if n_names == 0 and n_case == 0:  # nothing in common, in any var column or case
        then = (
            "Then train a model on labelled cells of the same kind"
            if other_kind == "train"
            else f"Then {other}"
        )
        return (
            "none",
            (
                "None of its genes occur in the data under any name in var_names or a var column: "
                f"is the data from another species or gene panel? {then} (or convert the "
                "identifiers, e.g. symbols vs Ensembl IDs)"
            ),
            0,
        )
    if cut:
        return "panel", panel, n_names
    return (
        "other",
        (
            "Use the same gene identifiers as the model (symbols vs Ensembl IDs?), or set "
            "adata.var_names from the var column that holds them"
        ),
        n_names,
    )


def _row_numbers(names: pd.Index) -> bool:
    """Names that are the rows' positions ('0', '1', ...; or from '1'), not identifiers such
    as Entrez IDs, which are numbers too but not consecutive."""
    if not len(names) or not names.str.fullmatch(r"\d+").all():
        return False
    values = np.sort(names.astype(np.int64))
    return int(values[0]) in (0, 1) and bool((np.diff(values) == 1).all())


def identifier_hint(
    genes: pd.Index,
    var_names: pd.Index,
    var: pd.DataFrame | None,
    *,
    other_kind: str = "train",
    query_name: str = "adata",
) -> str:
    """How to give the query the model's gene identifiers: a var column holding more of them
    than ``var_names`` (and than a change of case would; in any case), a mechanical rename,
    names that differ in case only, row numbers for names, a query cut to a few genes, or a
    generic hint. ``other_kind``: the fix for data of another species (``"train"``: a model of
    its own; ``"human"``: orthologues of the human genes). ``query_name``: the name the data
    go by in the caller's arguments (the fixes' code reads ``adata.var...`` otherwise)."""
    hint = identifier_fix(genes, var_names, var, other_kind=other_kind)[1]
    return hint.replace("adata.var", f"{query_name}.var")


def gene_positions(var_names, genes, *, what: str = "model") -> np.ndarray:
    """Where each of ``genes`` sits in ``var_names`` (``-1``: absent). Duplicated names are
    allowed (scanpy warns) unless one of ``genes`` is among them.

    Raises
    ------
    ValueError
        One of ``genes`` occurs more than once in ``var_names``.
    """
    # from arrays: inferring a dtype from a pandas object is deprecated (pandas 2's infer_string)
    names = pd.Index(np.asarray(var_names, dtype=object), dtype=object)
    genes = pd.Index(np.asarray(genes, dtype=object), dtype=object)
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


def gene_columns(
    adata,
    genes,
    *,
    min_overlap: float = 0.5,
    what: str = "model",
    lower_hint: str | None = None,
):
    """Where each of ``genes`` sits in ``adata.var_names`` (``-1``: absent) and which occur.

    Duplicated names in ``adata.var_names`` are allowed (scanpy warns) unless one of
    ``genes`` is among them: it could not be matched by name. ``lower_hint`` ends the
    too-few-genes message (default: the annotating calls' ``min_gene_overlap``), for callers
    without that option.

    Raises
    ------
    ValueError
        One of ``genes`` occurs more than once in ``adata.var_names``, or fewer than
        ``min_overlap`` of ``genes`` occur.
    """
    if isinstance(min_overlap, bool) or not 0 <= min_overlap <= 1:
        # named as the public callers name it (tl.annotate, predict, the CLI)
        raise ValueError(
            f"min_gene_overlap (min_overlap) must be a fraction in [0, 1] (e.g. 0.5: half of "
            f"the {what}'s genes), got {min_overlap!r}."
        )
    genes = pd.Index(genes)
    if len(genes) == 0:
        raise ValueError(f"No genes given to look up in adata.var_names: pass the {what}'s genes.")
    col = gene_positions(adata.var_names, genes, what=what)
    present = col >= 0
    n_present = int(present.sum())
    if n_present == 0 or n_present < min_overlap * len(genes):
        example = adata.var_names[~adata.var_names.isin(genes)][:3].tolist()
        needed = int(np.ceil(min_overlap * len(genes) - 1e-9))
        needed = f"{needed} ({min_overlap:.0%}) are" if needed else "one is"
        if lower_hint is None:
            lower_hint = (
                " If the data simply holds fewer of them, lower `min_gene_overlap` "
                "(`scdl.tl.annotate`, `predict`; `scdl annotate --min-gene-overlap`)."
            )
        found, hint, n_after = identifier_fix(genes, adata.var_names, adata.var, raw=adata.raw)
        # the genes are in the file under another name, enough of them once named so: fewer
        # of them is not the fix
        enough = found in FOUND_ELSEWHERE and n_after >= min_overlap * len(genes)
        lower = lower_hint if n_present and not enough else ""
        raise ValueError(
            f"Only {n_present} of the {what}'s {len(genes)} genes ({n_present / len(genes):.1%}) "
            f"occur in adata.var_names ({f'e.g. {example}; ' if example else ''}the {what}'s "
            f"missing ones: {genes[~present][:3].tolist()}); "
            f"at least {needed} needed. {hint}.{lower}"
        )
    return col, present


def align_to_genes(
    adata,
    genes,
    *,
    layer: str | None = None,
    min_overlap: float = 0.5,
    what: str = "model",
    lower_hint: str | None = None,
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

    col, present = gene_columns(
        adata, genes, min_overlap=min_overlap, what=what, lower_hint=lower_hint
    )
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
        blocks = [sparse.csr_matrix(b, dtype=np.float32) @ sel for b in row_blocks(x)]
        out = sparse.vstack(blocks, format="csr")
    return sparse.csr_matrix(out, dtype=np.float32), present
