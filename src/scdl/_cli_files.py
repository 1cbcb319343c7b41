"""The command line's files: reading IN (an .h5ad or a Cell Ranger .h5), checking OUT and
the model folder before any work, and ``--layer raw``."""

from __future__ import annotations

import os
from pathlib import Path

from scdl._paths import user_path, written_path


def check_input_path(path: str) -> Path:
    """IN.h5ad is a file that exists (said before anything heavy is imported)."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"input {path!r} is a folder; give an .h5ad file.")
    if not p.is_file():
        raise FileNotFoundError(f"input file {path!r} does not exist.")
    return p


def check_paths(args) -> int:
    """The files a command reads and writes (OUT, ``--save-model``, then IN), checked once, by
    ``main`` before the seconds-long import of torch, Lightning and scvi-tools: a mistyped
    path is said at once. Returns 0 (a problem raises)."""
    if getattr(args, "input", None) is None:  # e.g. the demo, which writes a folder
        return 0
    check_output(args.output, overwrite=args.overwrite)
    check_model_folder(
        getattr(args, "save_model", None), overwrite=args.overwrite, output=args.output
    )
    check_input_path(args.input)
    return 0


def read_input(path: str, *, quiet: bool = False):
    """Read IN.h5ad with a one-line error for a missing or unreadable file."""
    import anndata

    p = check_input_path(path)
    how = ""
    kind = _hdf5_kind(p)
    if kind == "mudata":  # anndata's reader fails on it with a long traceback
        raise ValueError(
            f"{path!r} is a MuData (.h5mu) file; give the gene expression modality as an .h5ad: "
            "`mudata.read_h5mu(IN).mod['rna'].write_h5ad(OUT)`."
        )
    try:
        if kind == "cellranger":  # often a lab's first file: read as scanpy reads it
            import warnings

            import scanpy as sc

            with warnings.catch_warnings():  # repeated symbols: made unique just below
                warnings.filterwarnings("ignore", message="Variable names are not unique")
                adata = sc.read_10x_h5(p)
            how = " (a Cell Ranger .h5, read with scanpy.read_10x_h5"
            if not adata.var_names.is_unique:  # as scanpy's tutorials do next
                adata.var_names_make_unique()
                how += "; repeated gene names made unique"
            how += ")"
        else:
            adata = anndata.read_h5ad(p)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"could not read {path!r} as an .h5ad file ({e}).") from e
    if not quiet:
        print(f"read {path}{how}: {adata.n_obs} cells x {adata.n_vars} genes")
    return adata


def _hdf5_kind(path: Path) -> str | None:
    """What an HDF5 file holds, read in one open: ``"mudata"`` (a ``mod`` group of modalities),
    ``"cellranger"`` (Cell Ranger's matrix, v3: a ``matrix`` group; v2: one group per genome,
    which anndata cannot read as an .h5ad), or ``None`` (an .h5ad, or not HDF5: anndata's
    reader says so)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "mod" in f and isinstance(f["mod"], h5py.Group):
                return "mudata"
            if "obs" in f or "X" in f:  # an .h5ad
                return None
            groups = [f[name] for name in f if isinstance(f[name], h5py.Group)]
            if any({"barcodes", "data", "indices", "indptr"} <= set(g) for g in groups):
                return "cellranger"
    except (OSError, KeyError):  # not HDF5, or a broken link inside: anndata's reader says so
        pass
    return None


def _require_raw(adata) -> None:
    if adata.raw is None:
        raise ValueError("--layer raw: the input has no .raw; name one of its layers instead.")


def raw_as_layer(adata) -> None:
    """``--layer raw`` (integrate): ``adata.raw``'s values of X's genes as the layer ``raw``
    (removed again before the output is written)."""
    _require_raw(adata)
    missing = adata.var_names.difference(adata.raw.var_names)
    if len(missing):
        raise ValueError(
            f"--layer raw: .raw lacks {len(missing)} of X's genes (e.g. {list(missing[:3])})."
        )
    adata.layers["raw"] = adata.raw[:, adata.var_names].X


def raw_as_adata(adata):
    """``--layer raw`` (annotate): ``adata.raw`` with every gene (scanpy keeps them there
    before selecting genes), its values also as the layer ``raw`` so that messages name them
    as the user chose them."""
    _require_raw(adata)
    target = adata.raw.to_adata()
    target.layers["raw"] = target.X  # the same matrix, not a copy
    return target


def check_output(path: str, *, overwrite: bool) -> None:
    """Fail before any work if OUT cannot be written: a missing or unwritable folder, a
    folder given as OUT, or an existing file without ``--overwrite``."""
    import tempfile

    if path.endswith(("/", os.sep)) or Path(path).is_dir():
        raise ValueError(f"output {path!r} is a folder; give a file name ending in .h5ad.")
    if Path(path).suffix.lower() != ".h5ad":  # an AnnData file is written, whatever the name
        raise ValueError(f"output {path!r} must be a file name ending in .h5ad.")
    target = written_path(path)  # the file write_h5ad_atomic writes
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {str(parent)!r} does not exist.")
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"output {path!r} already exists; pass --overwrite to replace it, or another name."
        )
    try:  # the folder must take a new file (the output is written beside it, then renamed)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".scdl-", suffix=".tmp"):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write to the output folder {str(parent)!r} ({e}).") from e


def check_model_folder(path: str | None, *, overwrite: bool, output: str) -> None:
    """``--save-model``: checked before training, like OUT (what ``save()`` would refuse)."""
    if path is None:
        return
    folder = user_path(path)  # as save() reads it (bash leaves ~ in --save-model=~/x)
    if folder.resolve() == user_path(output).resolve():
        raise ValueError(f"--save-model {path!r} is the output file; give a folder of its own.")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--save-model {path!r} is a file; give a folder.")
    held = [name for name in ("config.json", "model.safetensors") if (folder / name).exists()]
    if held and not overwrite:
        raise FileExistsError(
            f"--save-model {path!r} already holds {' and '.join(held)}; pass --overwrite to "
            "replace it, or another folder."
        )
    if not folder.resolve().parent.is_dir():
        raise FileNotFoundError(
            f"--save-model: folder {str(folder.resolve().parent)!r} does not exist."
        )
    import tempfile

    existing = folder if folder.is_dir() else folder.resolve().parent
    try:  # found now, not after training (the model is saved last)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".scdl-", suffix=".tmp"):
            pass
    except OSError as e:
        raise PermissionError(f"cannot write --save-model {path!r} ({e}).") from e


def copy_annotation(source, adata, key: str) -> None:
    """The fields ``tl.annotate`` wrote into ``source`` (a copy of ``adata``'s cells), copied
    into ``adata``: obs columns and obsm entries named from ``key``, and ``uns[key]``; those an
    earlier run left under ``key`` and this one removed are removed too."""
    for col in [c for c in adata.obs.columns if c == key or c.startswith(f"{key}_")]:
        if col not in source.obs.columns:
            del adata.obs[col]
    for col in source.obs.columns:
        if col == key or col.startswith(f"{key}_"):
            adata.obs[col] = source.obs[col].values  # the same cells in the same order
    for name in source.obsm:
        if name.startswith(f"{key}_"):
            adata.obsm[name] = source.obsm[name]
    adata.uns[key] = source.uns[key]


def _refuses_slashes() -> bool:
    """Whether anndata refuses to write '/' in a key: its setting where it has one (0.12.19
    and later; on by default from 0.13), else whether it is 0.13 or later."""
    import importlib.metadata

    import anndata
    from packaging.version import Version

    setting = getattr(anndata.settings, "disallow_forward_slash_in_h5ad", None)
    if setting is not None:
        return bool(setting)
    return Version(importlib.metadata.version("anndata")).release >= (0, 13)


def slashed_keys(adata) -> list[str]:
    """Where ``adata`` holds a key with '/' that an .h5ad file cannot store: obs, var and
    raw.var columns, the keys of layers, obsm, varm, obsp, varp and uns (nested too), and the
    columns of tables in obsm, varm and uns."""
    import pandas as pd

    found = []  # (where, the key) pairs

    def add(where: str, key, *, column: bool = False) -> None:
        if "/" in str(key):
            found.append(f"column {str(key)!r} of {where}" if column else f"{where}[{str(key)!r}]")

    for attr in ("obs", "var"):
        for column in getattr(adata, attr).columns:
            add(attr, column)
    if adata.raw is not None:
        for column in adata.raw.var.columns:
            add("raw.var", column)
    for attr in ("layers", "obsm", "varm", "obsp", "varp"):
        for key, value in getattr(adata, attr).items():
            add(attr, key)
            if isinstance(value, pd.DataFrame):
                for column in value.columns:
                    add(f"{attr}[{key!r}]", column, column=True)

    def walk(mapping, where: str) -> None:
        for key, value in mapping.items():
            add(where, key)
            if isinstance(value, dict):
                walk(value, f"{where}[{key!r}]")
            elif isinstance(value, pd.DataFrame):
                for column in value.columns:
                    add(f"{where}[{key!r}]", column, column=True)

    walk(adata.uns, "uns")
    return found


def check_input_names(adata, path: str) -> None:
    """Refuse, before any work, an input whose keys hold '/' where this anndata cannot write
    them back: the output would fail after all the computing."""
    if not _refuses_slashes():
        return
    keys = slashed_keys(adata)
    if keys:
        raise ValueError(
            f"{path} holds '/' in {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}: "
            "anndata cannot write '/' in a key (from 0.13, or with "
            "`anndata.settings.disallow_forward_slash_in_h5ad`), so OUT.h5ad could not be "
            "written. "
            "Rename them in Python first (e.g. `adata.obs.columns = "
            "adata.obs.columns.str.replace('/', '|')`) and save the input again."
        )


def slash_free_columns(adata, key: str) -> list[str]:
    """The columns of ``obsm[key]`` holding '/' renamed with '|', as .h5ad files need
    (``tl.annotate`` names a column after each cell type); returns the names it changed."""
    table = adata.obsm.get(key)
    if table is None or not hasattr(table, "columns"):
        return []
    slashed = [str(c) for c in table.columns if "/" in str(c)]
    if slashed:
        table = table.copy()
        table.columns = [str(c).replace("/", "|") for c in table.columns]
        adata.obsm[key] = table
    return slashed
