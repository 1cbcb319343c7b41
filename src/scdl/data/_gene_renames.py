"""Gene names other tools write mechanically (R's make.names, Ensembl version suffixes,
scater's 'SYMBOL_ENSG...', a multi-genome reference's prefix, another case) and the fix that
restores a model's genes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from scdl._warnings import warn_user

_CASES = ("upper", "lower", "capitalize")


#: what ``genes`` is in the fixes below: a user annotating with a pretrained name holds no
#: model object to read them from, and a drug model's cells are matched to its bulk's genes
GENES_ARE = (
    " (`genes`: the reference's gene names: `model.get_var_names()` of a trained model, "
    "`scdl.pretrained.load(name).get_var_names()` of a pretrained annotator, the bulk's "
    "`var_names` for a drug model's cells)"
)


def _case_fix(genes: pd.Index) -> str:
    """The rewrite of ``adata.var_names`` that spells them as ``genes`` are spelled: one case
    method that every model gene follows, else a lookup through the model's own names (human
    symbols such as 'C1orf112', mouse 'mt-Co1', worm 'WBGene00000001')."""
    # a method most genes follow loses the others ('C15orf48' under .upper(), 'mt-Co1' under
    # .capitalize()), silently: only one that every gene follows is offered
    for method in _CASES:
        if (genes == getattr(genes.str, method)()).all():
            return f"`adata.var_names = adata.var_names.str.{method}()`"
    return (
        "`spelling = {g.upper(): g for g in genes}; adata.var_names = "
        "[spelling.get(g.upper(), g) for g in adata.var_names]`" + GENES_ARE
    )


#: an Ensembl identifier with its version suffix (GENCODE, STARsolo, alevin; Cell Ranger's
#: have none)
_ENSEMBL_VERSION = r"^(ENS[A-Z]*\d+)\.\d+$"


#: scater's uniquifyFeatureNames suffix: an Ensembl ID after '_'
_SCATER_SUFFIX = r"_ENS[A-Z]*\d+(?:\.\d+)?$"

#: a multi-genome reference's prefix (Cell Ranger: 'GRCh38_', 'mm10___'); symbols hold no '_'
_GENOME_PREFIX = r"^([A-Za-z][A-Za-z0-9.]*?\d[A-Za-z0-9.]*_+)([^_].*)$"


def _r_names(genes: pd.Index) -> pd.Index:
    """``genes`` as R's ``make.names`` writes them (Seurat objects, CSV exports): characters
    other than letters, digits, '.' and '_' as '.', and an 'X' before a name that does not
    start with a letter (or a '.' not followed by a digit)."""
    made = genes.str.replace(r"[^A-Za-z0-9._]", ".", regex=True)
    return made.where(made.str.match(r"^([A-Za-z]|\.(?![0-9]))"), "X" + made)


def renamed_hint(genes, var_names, *, model_renamed: bool = True) -> str | None:
    """How to restore the model's ``genes`` when most of those ``var_names`` lacks are there
    under a mechanical rename (R's ``make.names``: 'HLA-DRA' as 'HLA.DRA'; an Ensembl ID with
    or without its version suffix; scater's 'HLA-DRA_ENSG00000204287'; a multi-genome
    reference's 'GRCh38_HLA-DRA'); ``None`` when no rename explains them.
    ``model_renamed``: also when the model's own names are R's (a model trained on an R
    export)."""
    return _renamed(genes, var_names, model_renamed)[0]


def _renamed(genes, var_names, model_renamed: bool) -> tuple[str | None, int]:
    """:func:`renamed_hint` and how many of the lacking genes its rename finds."""
    genes, names = pd.Index(genes).astype(str), pd.Index(var_names).astype(str)
    lacking = genes[~genes.isin(names)]
    if len(lacking) == 0:
        return None, 0
    made = _r_names(lacking)
    as_made = made.isin(names)
    bare_names = names.str.replace(_ENSEMBL_VERSION, r"\1", regex=True)
    bare = lacking.str.replace(_ENSEMBL_VERSION, r"\1", regex=True)
    as_bare = bare.isin(bare_names)
    as_r = np.zeros(len(lacking), bool)
    if model_renamed:
        # only when writing the data's names as R does matches more of the model's genes (R's
        # duplicate suffixes, 'CRYBG3.1', also occur in models whose names R never touched)
        r_names = _r_names(names)
        if genes.isin(r_names).sum() > len(genes) - len(lacking):
            as_r = lacking.isin(r_names)
    # scater's uniquifyFeatureNames (Bioconductor exports): 'HLA-DRA_ENSG00000204287' for a
    # symbol several IDs share, in the data or in the model's own names
    unsuffixed = names.str.replace(_SCATER_SUFFIX, "", regex=True)
    as_sfx = lacking.isin(unsuffixed[unsuffixed != names]) | (
        lacking.str.contains(_SCATER_SUFFIX, regex=True)
        & lacking.str.replace(_SCATER_SUFFIX, "", regex=True).isin(names)
    )
    # Cell Ranger's multi-genome references: 'GRCh38_CD3E' beside 'mm10___Cd3e'
    split = names.str.extract(_GENOME_PREFIX)
    prefix, n_pre = None, 0
    if split[0].notna().any():
        found = split[split[1].isin(lacking)]
        if len(found):
            prefix = str(found[0].value_counts().index[0])
            n_pre = int(lacking.isin(found.loc[found[0] == prefix, 1]).sum())
    # a spreadsheet's trailing blanks, a CRLF features file's '\r', R's write.table quotes,
    # a non-breaking space: the names hold the genes inside other characters
    stripped = names.str.strip().str.strip("\"'").str.strip()
    n_strip = int(lacking.isin(stripped[stripped != names]).sum())
    n_made, n_bare, n_r = int(as_made.sum()), int(as_bare.sum()), int(as_r.sum())
    n_sfx = int(as_sfx.sum())
    if max(n_made, n_bare, n_r, n_sfx, n_pre, n_strip) < min(10, max(1, 0.5 * len(lacking))):
        return None, 0
    if n_strip > max(n_made, n_bare, n_r, n_sfx, n_pre):
        k = int(np.flatnonzero(stripped != names)[0])
        return (
            f"{n_strip} of the model's genes the data lack are in adata.var_names inside "
            f"spaces, quotes or line ends (e.g. {names[k]!r}): strip them, `adata.var_names = "
            'adata.var_names.str.strip().str.strip("\\"\'").str.strip()`'
        ), n_strip
    if n_pre > max(n_made, n_bare, n_r, n_sfx):
        return (
            f"{n_pre} of the model's genes the data lack are in adata.var_names behind the "
            f"genome prefix {prefix!r} (a multi-genome reference): keep that genome's genes "
            f"without it, `adata = adata[:, adata.var_names.str.startswith({prefix!r})].copy(); "
            f"adata.var_names = adata.var_names.str.removeprefix({prefix!r})` "
            "(`.to_memory()` instead of `.copy()` for a backed AnnData)"
        ), n_pre
    if n_sfx > max(n_made, n_bare, n_r):
        k = int(np.flatnonzero(as_sfx)[0])
        return (
            f"{n_sfx} of the model's genes the data lack differ from adata.var_names by an "
            f"Ensembl ID after '_' (e.g. {lacking[k]!r}; scater's uniquifyFeatureNames writes "
            "'SYMBOL_ENSG...' for a symbol several IDs share): match them without it, `import "
            f"re; cut = lambda g: re.sub(r'{_SCATER_SUFFIX}', '', g); plain = {{cut(g): g for g "
            "in genes}; adata.var_names = [plain.get(cut(g), g) for g in adata.var_names]`, "
            "then `adata.var_names_make_unique()`" + GENES_ARE
        ), n_sfx
    if n_r > max(n_made, n_bare):
        k = int(np.flatnonzero(as_r)[0])
        return (
            f"{n_r} of the model's genes the data lack are the data's names as R's make.names "
            f"writes them (e.g. the model's {lacking[k]!r}: it was trained on an R export): "
            "write the data's names the same way, `import re; adata.var_names = "
            "[re.sub(r'^(?![A-Za-z]|\\.(?!\\d))', 'X', re.sub(r'[^A-Za-z0-9._]', '.', g)) for g "
            "in adata.var_names]`, then `adata.var_names_make_unique()`"
        ), n_r
    if n_made >= n_bare:
        k = int(np.flatnonzero(as_made)[0])
        return (
            f"{n_made} of the model's genes the data lack are in adata.var_names as R's "
            f"make.names writes them (e.g. {lacking[k]!r} as {made[k]!r}: a Seurat object or "
            "a CSV export): restore the model's names, `import re; made = {re.sub(r'^(?![A-Za-z]"
            "|\\.(?!\\d))', 'X', re.sub(r'[^A-Za-z0-9._]', '.', g)): g for g in genes}; "
            "adata.var_names = [made.get(g, g) for g in adata.var_names]`" + GENES_ARE
        ), n_made
    k = int(np.flatnonzero(as_bare)[0])
    return (
        f"{n_bare} of the model's genes the data lack are in adata.var_names with another "
        f"version suffix (e.g. {lacking[k]!r}): the same Ensembl IDs, so match them without "
        "it (Ensembl IDs only): `import re; cut = lambda g: re.sub(r'^(ENS[A-Z]*\\d+)\\.\\d+$', "
        "r'\\1', g); bare = {cut(g): g for g in genes}; adata.var_names = "
        "[bare.get(cut(g), g) for g in adata.var_names]`" + GENES_ARE
    ), n_bare


def warn_renamed_genes(genes, var_names, present: np.ndarray) -> None:
    """Warn, however few genes the data lack, when a mechanical rename
    (:func:`~scdl.data.renamed_hint`) or a change of case explains them: their counts are in
    the file."""
    if present.all():
        return
    # a model trained on R's names too (a bulk file read from an R export, or GDSC's as
    # scdl.datasets.gdsc read it before it restored the names): its genes are in the cells
    hint = renamed_hint(genes, var_names)
    if hint is None:
        # the genes a whole-file case change would lose ('C15orf48' under .upper())
        genes, names = pd.Index(genes).astype(str), pd.Index(var_names).astype(str)
        lacking = genes[~np.asarray(present, bool)]
        cased = lacking[lacking.str.upper().isin(names[~names.isin(genes)].str.upper())]
        if len(cased) >= min(10, max(1, 0.5 * len(lacking))):
            hint = (
                f"{len(cased)} of the genes it lacks are in adata.var_names in another case "
                f"(e.g. {cased[:3].tolist()}): match them, {_case_fix(genes)}"
            )
    if hint is not None:
        warn_user(
            f"The query holds {int(present.sum())} of the model's {len(present)} genes; {hint}.",
            UserWarning,
        )
