"""The files of a saved scdl model: JSON config + safetensors weights (+ the AnnData).

Reading and checking them (formats, checksums, fields) is here; :mod:`._base` saves and
loads models through it. Nothing read here can run code.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from scdl._paths import user_path
from scdl._warnings import warn_user

FORMAT = "scdl-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ANNDATA_NAME = "adata.h5ad"


class SavedFiles:
    """The files of one save: ``{prefix}config.json``, ``{prefix}model.safetensors`` and
    ``{prefix}adata.h5ad`` in ``dir_path`` (scvi-tools' ``prefix``: several saves in one
    folder)."""

    def __init__(self, dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, got {type(prefix).__name__}.")
        prefix = prefix or ""
        # ':' names a drive on Windows only; elsewhere it is an ordinary character of a file
        # name (a timestamped prefix "2024-05-01T10:30_"), as scvi-tools takes it
        if os.sep in prefix or (os.altsep and os.altsep in prefix):
            raise ValueError(
                f"prefix {prefix!r} holds a path separator: it starts the file names; pass the "
                "folder as `dir_path`."
            )
        if os.name == "nt" and ":" in prefix:
            raise ValueError(f"prefix {prefix!r} holds ':', which Windows file names cannot.")
        self.dir = user_path(dir_path)
        self.config_name = f"{prefix}{CONFIG_NAME}"
        self.weights_name = f"{prefix}{WEIGHTS_NAME}"
        self.anndata_name = f"{prefix}{ANNDATA_NAME}"
        self.config = self.dir / self.config_name
        self.weights = self.dir / self.weights_name
        self.anndata = self.dir / self.anndata_name

    def __str__(self) -> str:
        return repr(str(self.dir))


@functools.cache
def _torch_callables() -> dict:
    """The activations a model option may name (scvi-tools' ``activation_fn``,
    ``var_activation``, ...), saved by name: a config names one of these, never code."""
    import torch
    from torch.nn.modules import activation

    found = {f"torch.nn.{n}": getattr(torch.nn, n) for n in activation.__all__}
    for name in ("exp", "sigmoid", "tanh", "relu", "softmax", "log_softmax"):
        found[f"torch.{name}"] = getattr(torch, name)
    functional = (
        "softplus", "relu", "relu6", "elu", "celu", "selu", "gelu", "leaky_relu", "silu",
        "mish", "sigmoid", "tanh", "softmax", "log_softmax", "softmin", "hardtanh",
        "hardsigmoid", "hardswish", "logsigmoid", "softsign", "tanhshrink",
    )  # fmt: skip
    for name in functional:
        found[f"torch.nn.functional.{name}"] = getattr(torch.nn.functional, name)
    return found


def _torch_name(obj) -> str | None:
    for name, value in _torch_callables().items():
        if obj is value:
            return name
    return None


def _encode(obj, where: str = "attrs"):
    """Make scvi-tools' registry/attributes JSON-serialisable, tagging what must come back.
    ``where`` (the path to ``obj``) names an option that cannot be saved."""
    if isinstance(obj, dict):
        return {str(k): _encode(v, f"{where}[{str(k)!r}]") for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, pd.DataFrame):
        return {
            "__dataframe__": {
                "index": _encode(obj.index.tolist()),
                "index_name": _encode(obj.index.name),
                "columns": _encode(obj.columns.tolist()),
                "dtypes": [str(t) for t in obj.dtypes],
                "values": _encode(obj.to_numpy().tolist()),
            }
        }
    if isinstance(obj, pd.Index):
        return _encode(obj.tolist())
    if isinstance(obj, np.ndarray):
        kind = "object" if obj.dtype.kind in "OUS" else str(obj.dtype)
        return {"__ndarray__": _encode(obj.tolist()), "dtype": kind}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": str(obj)}
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if callable(obj) and (name := _torch_name(obj)) is not None:
        return {"__torch__": name}
    raise TypeError(
        f"Cannot save {where} = {obj!r} ({type(obj).__name__}): a saved scdl model holds JSON "
        "and weights only, never code, and names only torch's activations "
        "(`torch.nn.ReLU`, `torch.exp`, `torch.nn.functional.softplus`, ...). Build the model "
        "with such a value (or the default) to save it."
    )


_NUMERIC_DTYPES = {"bool", *(f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64))}
_NUMERIC_DTYPES |= {"float16", "float32", "float64"}


def _decode(obj):
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        dtype = obj.get("dtype")
        # only what ``_encode`` writes: a sub-array or structured dtype string would make a
        # few bytes of JSON allocate gigabytes
        if dtype not in _NUMERIC_DTYPES and dtype != "object":
            raise ValueError(
                f"An array in the config has dtype {dtype!r}; scdl saves only "
                f"{sorted(_NUMERIC_DTYPES)} or 'object': the file was edited or is corrupt. "
                "Save the model again with `.save()`."
            )
        return np.array(_decode(obj["__ndarray__"]), dtype=dtype)
    if "__dataframe__" in obj:
        d = obj["__dataframe__"]
        frame = pd.DataFrame(_decode(d["values"]), index=d["index"], columns=d["columns"])
        frame.index.name = d.get("index_name")  # saves before it was recorded: None
        # numeric columns as saved (rows of a frame mixing ints and floats come back floats)
        numeric = {
            c: t
            for c, t in zip(frame.columns, d.get("dtypes", ()), strict=False)
            if t in _NUMERIC_DTYPES
        }
        return frame.astype(numeric) if numeric else frame
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__torch__" in obj:
        known = _torch_callables()
        if obj["__torch__"] not in known:
            raise ValueError(
                f"The config names {obj['__torch__']!r}, not one of the torch activations scdl "
                "saves: the file was edited or is corrupt. Save the model again with `.save()`."
            )
        return known[obj["__torch__"]]
    return {k: _decode(v) for k, v in obj.items()}


def read_config(
    dir_path: str | os.PathLike, prefix: str | None = None, model_name: str | None = None
) -> dict:
    """Read and check a saved model's ``config.json`` (JSON only, no code); ``model_name``,
    the class loading it, is named in the hint when the folder holds saves of other
    prefixes."""
    files = SavedFiles(dir_path, prefix)
    path = files.config
    if not path.is_file():
        # saves with another prefix: a config beside its weights (not any *config.json)
        others = sorted(
            repr(p.name[: -len(CONFIG_NAME)])
            for p in (files.dir.glob(f"*{CONFIG_NAME}") if files.dir.is_dir() else ())
            if p.name != files.config_name
            and (files.dir / f"{p.name[: -len(CONFIG_NAME)]}{WEIGHTS_NAME}").is_file()
        )
        hint = (
            f"; it holds saves with prefix {', '.join(others)}: load one with "
            f"`{f'scdl.models.{model_name}' if model_name else 'the model class'}.load(path, "
            f"prefix={others[0]})`"
            if others
            else ""
        )
        if not others and (files.dir / f"{prefix or ''}model.pt").is_file():
            # scvi-tools' own save: a pickle, and its networks are not scdl's
            hint = (
                f": it holds {prefix or ''}model.pt, a model saved by scvi-tools (a pickle, "
                "which scdl never loads: it can run code from the file, and scvi-tools' "
                "networks differ from scdl's). Load it with scvi-tools (e.g. "
                "`scvi.model.SCVI.load(path, adata)`), or train the scdl model on the data"
            )
        raise FileNotFoundError(
            f"No {files.config_name} in {files}: not a folder written by an scdl model's "
            f"`.save()`{' with this `prefix`' if prefix else ''}{hint}."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # also: a 100k-digit int
        raise ValueError(
            f"{path} is not valid JSON ({e}): the file is corrupt or not an scdl model config. "
            "Save the model again with `.save()`."
        ) from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(
            f"{path} is not an scdl model config (format={found!r}, expected {FORMAT!r}). "
            "Load folders written by an scdl model's `.save()`."
        )
    version = config.get("format_version")
    if version is None:
        raise ValueError(
            f"{path} records no format_version; this scdl reads scdl model format "
            f"{FORMAT_VERSION}. The file was not written by scdl's `.save()` or was edited: "
            "save the model again with `.save()`, or retrain."
        )
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in scdl model format {version}; this scdl reads format "
            f"{FORMAT_VERSION}. Load it with the scdl version that saved it "
            f"(scdl {config.get('scdl_version')}), or retrain."
        )
    return config


def _check_genes_agree(config: dict, registry: dict, files: SavedFiles) -> None:
    """The genes ``config.json`` lists must be those its registry registered (an edited
    file can change one and not the other)."""
    x_state = registry.get("field_registries", {}).get("X", {}).get("state_registry", {})
    registered = x_state.get("column_names")
    if registered is not None and [str(g) for g in registered] != list(config["var_names"]):
        raise ValueError(
            f"{files}: the {len(config['var_names'])} genes in {files.config_name}'s "
            f"var_names differ from the {len(registered)} its registry holds: the file was "
            "edited or is corrupt. Save the model again with `.save()`."
        )


def _load_state(model, state: dict, files: SavedFiles) -> None:
    import torch

    saved = {t.dtype for t in state.values() if t.is_floating_point()}
    if saved == {torch.float32}:  # built under a session's float64 default: as it was saved
        model.module.to(torch.float32)
    try:
        model.module.load_state_dict(state)
    except RuntimeError as e:
        # torch's first line names only the module; the next one names the tensor and why
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ValueError(
            f"The weights in {files} do not fit the model its {files.config_name} "
            f"describes ({' '.join(lines[:2])[:500]}): the files come from different saves or "
            "were edited. Save the model again with `.save()`."
        ) from e
    except ValueError as e:  # a part the module checks itself (the annotator's buffers)
        raise ValueError(f"{files}: {e}") from e


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: key of the config's checksum in the safetensors header, so that each file checks the other
CONFIG_DIGEST_KEY = "scdl_config_sha256"
#: key of ``adata.h5ad``'s checksum in ``config.json`` (saves with ``save_anndata=True``)
ANNDATA_DIGEST_KEY = "anndata_sha256"


def _config_digest(config: dict) -> str:
    """SHA-256 of the config as canonical JSON, without ``weights_sha256`` (which the weights'
    header cannot hold: it is the checksum of that file)."""
    import hashlib

    body = {k: v for k, v in config.items() if k != "weights_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _check_checksums(files: SavedFiles, config: dict) -> bool:
    """Refuse weights or a config edited after saving. Each file holds the other's checksum:
    ``config.json`` the weights' (``weights_sha256``), the weights' header the config's.
    Earlier saves record neither or only the first (the bundled annotator is checked by its
    registry); a save that records neither loads with a warning. Returns whether the save
    records both (so it also records its AnnData's)."""
    from safetensors import safe_open

    weights = files.weights
    expected = config.get("weights_sha256")
    if expected is not None and _sha256(weights) != expected:
        raise ValueError(
            f"{files}: {files.weights_name} does not match the checksum its "
            f"{files.config_name} recorded at saving: the file was edited, swapped or is corrupt. "
            "Save the model again with `.save()`."
        )
    with safe_open(str(weights), framework="pt") as f:
        digest = (f.metadata() or {}).get(CONFIG_DIGEST_KEY)
    if digest is not None and (expected is None or _config_digest(config) != digest):
        raise ValueError(
            f"{files}: {files.config_name} does not match the checksum {files.weights_name} "
            "recorded at saving: the config was edited or comes from another save. Save the "
            "model again with `.save()`."
        )
    if expected is None and digest is None:
        # Only an integrity gap (safetensors and JSON cannot run code), but an edited save
        # would load unnoticed: say so once per load rather than silently.
        warn_user(
            f"{files} records no checksums (written by an early scdl, or both removed), so "
            "edits to its files cannot be detected. Load it and `.save()` it again to record "
            "them.",
            UserWarning,
        )
    return digest is not None


#: the fields of ``config.json`` that ``load`` reads (an edited file may lack one)
_REQUIRED = ("model_class", "var_names", "attrs")


def _check_fields(files: SavedFiles, config: dict) -> None:
    missing = [k for k in _REQUIRED if k not in config]
    attrs = config.get("attrs")
    if not missing and not isinstance(attrs, dict):
        missing = ["attrs"]
    if not missing:
        missing = [f"attrs.{k}" for k in ("registry_", "init_params_") if k not in attrs]
    if not missing:
        init = attrs["init_params_"]
        # ``save`` writes the model's own ``*_`` attributes only; any other name (a method,
        # ``module``, a dunder) would replace part of the model on load
        odd = sorted(
            k for k in attrs if not (k.isidentifier() and k.endswith("_") and not k.startswith("_"))
        )
        if odd:
            raise ValueError(
                f"{files}: {files.config_name} sets the attributes {odd}, which no scdl save "
                "writes (only names ending in '_'): the file was edited or is corrupt. Save "
                "the model again with `.save()`."
            )
        if not isinstance(init, dict) or not all(
            isinstance(init.get(k), dict) for k in ("non_kwargs", "kwargs")
        ):
            missing = ["attrs.init_params_.non_kwargs/kwargs"]
        elif not all(isinstance(group, dict) for group in init["kwargs"].values()):
            missing = ["attrs.init_params_.kwargs (groups of options)"]
    if not missing:
        missing = _wrong_types(config)
    if missing:
        raise ValueError(
            f"{files}: {files.config_name} lacks {missing}, or holds them in another form: the "
            "file was edited or is corrupt. Save the model again with `.save()`."
        )


def _wrong_types(config: dict) -> list[str]:
    """The fields ``load`` reads before decoding that do not have the type ``save`` writes."""
    registry = config["attrs"]["registry_"]
    wrong = []
    if not isinstance(config["model_class"], str):
        wrong.append("model_class (text)")
    names = config["var_names"]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        wrong.append("var_names (a list of gene names)")
    if not (
        isinstance(registry, dict)
        and isinstance(registry.get("setup_args"), dict)
        and isinstance(registry.get("field_registries"), dict)
    ):
        wrong.append("attrs.registry_ (setup_args and field_registries)")
    return wrong


def _initialize_model(cls, adata, registry: dict, attrs: dict):
    """A model of ``cls`` built from its saved ``init_params_`` (the options ``__init__`` took,
    as scvi-tools' ``_get_init_params`` records them: ``non_kwargs`` and ``kwargs`` grouped by
    the ``**`` argument), with the other saved attributes set on it; ``attrs`` is consumed.
    ``adata=None`` builds it from ``registry`` alone (scvi-tools' load without data)."""
    import inspect

    init = attrs.pop("init_params_")
    if hasattr(cls, "_saved_init_params"):  # options whose meaning changed since the save
        init = cls._saved_init_params(init)
    kwargs = {k: v for group in init["kwargs"].values() for k, v in group.items()}
    if "registry" in inspect.signature(cls).parameters:
        kwargs["registry"] = registry
    model = cls(adata, **init["non_kwargs"], **kwargs)
    for name, value in attrs.items():
        setattr(model, name, value)
    return model


def _check_anndata_checksum(files: SavedFiles, config: dict) -> None:
    """Refuse an ``adata.h5ad`` edited or swapped after saving (saves before its checksum was
    recorded are read as they are)."""
    expected = config.get(ANNDATA_DIGEST_KEY)
    if expected is not None and _sha256(files.anndata) != expected:
        raise ValueError(
            f"{files}: {files.anndata_name} does not match the checksum its {files.config_name} "
            "recorded at saving: the file was edited, swapped or is corrupt. Pass the data as "
            "`load(dir_path, adata=...)`, or save the model again with `save_anndata=True`."
        )


def _saved_anndata(files: SavedFiles, config: dict, checksummed: bool):
    """The AnnData saved with the model (``save_anndata=True``), or ``None``.

    A save that records its AnnData's checksum must hold the file; a save that records both
    files' checksums but not the AnnData's was made without ``save_anndata``, so an
    ``adata.h5ad`` beside it is someone else's and is not attached. Saves older than the
    checksums attach the file as they always did."""
    import anndata

    path = files.anndata
    if ANNDATA_DIGEST_KEY in config:
        if not path.is_file():
            raise FileNotFoundError(
                f"{files} was saved with its AnnData, but {files.anndata_name} is missing. "
                "Restore the file, or pass the data as `load(dir_path, adata=...)`."
            )
        _check_anndata_checksum(files, config)
    elif checksummed or not path.is_file():
        if path.is_file():
            warn_user(
                f"{str(path)!r} was not saved with this model (it was saved without "
                "`save_anndata`), so it is not attached; pass data as `load(dir_path, "
                "adata=...)`.",
                UserWarning,
            )
        return None
    return anndata.read_h5ad(path)


def load_weights(files: SavedFiles, device: str = "cpu") -> dict:
    """Load tensors from ``model.safetensors`` (the format cannot hold code)."""
    from safetensors.torch import load_file

    path = files.weights
    if not path.is_file():
        raise FileNotFoundError(
            f"No {files.weights_name} in {files}: the folder holds the model's config but not "
            "its weights. Copy the whole folder the model was saved to, or save the model again."
        )
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(
            f"{path} is not a valid safetensors file ({e}): the file is damaged or was replaced. "
            "Copy the folder the model was saved to again, or save the model again; scdl never "
            "loads pickled weights."
        ) from e
