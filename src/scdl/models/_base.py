"""Safe save/load shared by every scdl model: JSON config + safetensors weights.

scvi-tools' own ``save``/``load`` pickle the model's attributes and call
``torch.load(weights_only=False)``, which can execute code from the file. scdl models write
``config.json`` (init parameters, AnnData registry, gene names, training history; JSON only)
and ``model.safetensors`` (tensors only), so loading a model file never runs code from it.
Each file records the other's SHA-256 (the weights' in ``config.json``, the config's in the
safetensors header), so a file edited, corrupted or swapped after saving is refused.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._warnings import warn_user

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

FORMAT = "scdl-model"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ANNDATA_NAME = "adata.h5ad"


def _encode(obj):
    """Make scvi-tools' registry/attributes JSON-serialisable, tagging what must come back."""
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_encode(v) for v in obj]
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
    raise TypeError(f"Cannot save attribute of type {type(obj).__name__} to JSON.")


_NUMERIC_DTYPES = {"bool", *(f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64))}
_NUMERIC_DTYPES |= {"float16", "float32", "float64"}


def _decode(obj):
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return np.array(_decode(obj["__ndarray__"]), dtype=obj["dtype"])
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
    return {k: _decode(v) for k, v in obj.items()}


def read_config(dir_path: str | os.PathLike) -> dict:
    """Read and check a saved model's ``config.json`` (JSON only, no code)."""
    path = Path(dir_path) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No {CONFIG_NAME} in {str(dir_path)!r}: not a folder written by an scdl model's "
            "`.save()`."
        )
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
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


def _check_genes_agree(config: dict, registry: dict, dir_path) -> None:
    """The genes ``config.json`` lists must be those its registry registered (an edited
    file can change one and not the other)."""
    x_state = registry.get("field_registries", {}).get("X", {}).get("state_registry", {})
    registered = x_state.get("column_names")
    if registered is not None and [str(g) for g in registered] != list(config["var_names"]):
        raise ValueError(
            f"{str(dir_path)!r}: the {len(config['var_names'])} genes in {CONFIG_NAME}'s "
            f"var_names differ from the {len(registered)} its registry holds: the file was "
            "edited or is corrupt. Save the model again with `.save()`."
        )


def _load_state(model, state: dict, dir_path) -> None:
    try:
        model.module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"The weights in {str(dir_path)!r} do not fit the model its {CONFIG_NAME} "
            f"describes ({str(e).splitlines()[0]}): the files come from different saves or "
            "were edited. Save the model again with `.save()`."
        ) from e


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


def _check_checksums(dir_path: str | os.PathLike, config: dict) -> bool:
    """Refuse weights or a config edited after saving. Each file holds the other's checksum:
    ``config.json`` the weights' (``weights_sha256``), the weights' header the config's.
    Earlier saves record neither or only the first (the bundled annotator is checked by its
    registry). Returns whether the save records both (so it also records its AnnData's)."""
    from safetensors import safe_open

    weights = Path(dir_path) / WEIGHTS_NAME
    expected = config.get("weights_sha256")
    if expected is not None and _sha256(weights) != expected:
        raise ValueError(
            f"{str(dir_path)!r}: {WEIGHTS_NAME} does not match the checksum its "
            f"{CONFIG_NAME} recorded at saving: the file was edited, swapped or is corrupt. "
            "Save the model again with `.save()`."
        )
    with safe_open(str(weights), framework="pt") as f:
        digest = (f.metadata() or {}).get(CONFIG_DIGEST_KEY)
    if digest is not None and (expected is None or _config_digest(config) != digest):
        raise ValueError(
            f"{str(dir_path)!r}: {CONFIG_NAME} does not match the checksum {WEIGHTS_NAME} "
            "recorded at saving: the config was edited or comes from another save. Save the "
            "model again with `.save()`."
        )
    return digest is not None


#: the fields of ``config.json`` that ``load`` reads (an edited file may lack one)
_REQUIRED = ("model_class", "var_names", "attrs")


def _check_fields(dir_path: str | os.PathLike, config: dict) -> None:
    missing = [k for k in _REQUIRED if k not in config]
    if not missing and not (isinstance(config["attrs"], dict) and "registry_" in config["attrs"]):
        missing = ["attrs.registry_"]
    if missing:
        raise ValueError(
            f"{str(dir_path)!r}: {CONFIG_NAME} lacks {missing}: the file was edited or is "
            "corrupt. Save the model again with `.save()`."
        )


def _check_anndata_checksum(dir_path: str | os.PathLike, config: dict) -> None:
    """Refuse an ``adata.h5ad`` edited or swapped after saving (saves before its checksum was
    recorded are read as they are)."""
    expected = config.get(ANNDATA_DIGEST_KEY)
    if expected is not None and _sha256(Path(dir_path) / ANNDATA_NAME) != expected:
        raise ValueError(
            f"{str(dir_path)!r}: {ANNDATA_NAME} does not match the checksum its {CONFIG_NAME} "
            "recorded at saving: the file was edited, swapped or is corrupt. Pass the data as "
            "`load(dir_path, adata=...)`, or save the model again with `save_anndata=True`."
        )


def _saved_anndata(dir_path: str | os.PathLike, config: dict, checksummed: bool):
    """The AnnData saved with the model (``save_anndata=True``), or ``None``.

    A save that records its AnnData's checksum must hold the file; a save that records both
    files' checksums but not the AnnData's was made without ``save_anndata``, so an
    ``adata.h5ad`` beside it is someone else's and is not attached. Saves older than the
    checksums attach the file as they always did."""
    import anndata

    path = Path(dir_path) / ANNDATA_NAME
    if ANNDATA_DIGEST_KEY in config:
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(dir_path)!r} was saved with its AnnData, but {ANNDATA_NAME} is missing. "
                "Restore the file, or pass the data as `load(dir_path, adata=...)`."
            )
        _check_anndata_checksum(dir_path, config)
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


def load_weights(dir_path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load tensors from ``model.safetensors`` (the format cannot hold code)."""
    from safetensors.torch import load_file

    path = Path(dir_path) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No {WEIGHTS_NAME} in {str(dir_path)!r}.")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from e


class SafeSaveLoadMixin:
    """``save``/``load`` through JSON + safetensors instead of pickle."""

    #: said first when ``load(adata=)`` gets data with other genes (what ``adata`` must be)
    _load_adata_hint = ""
    #: how to use cells of categories the model was not trained on, said by ``load(adata=)``
    #: (and by the model's methods, see :class:`CheckedQueryMixin`)
    _unseen_categories_fix = "keep only cells of known categories"
    #: whether the registered data are raw counts (checked as such by ``load(adata=)``)
    _reads_counts = True

    def _extra_config(self) -> dict:
        """Further JSON fields a model writes for readers of ``config.json``."""
        return {}

    def _on_load(self) -> None:
        """Called by :meth:`load` once the saved attributes are restored."""

    def _require_adata(self, what: str = "train", *, takes_adata: bool = False):
        """The AnnData the model was set up with; a model loaded without data has none."""
        if self.adata is None:
            name = type(self).__name__
            raise ValueError(
                f"This {name} was loaded without data, so it has no cells to {what}: load it "
                f"with `{name}.load(dir_path, adata=...)` (cells with the model's genes)"
                + (", or pass them as `adata=`." if takes_adata else ".")
            )
        return self.adata

    def save(
        self,
        dir_path: str | os.PathLike,
        *,
        overwrite: bool = False,
        save_anndata: bool = False,
    ) -> None:
        """Save the model to a folder: ``config.json`` and ``model.safetensors``.

        Parameters
        ----------
        dir_path
            Folder to write; created if needed.
        overwrite
            Replace the files of an existing save in ``dir_path``. Without it, a folder
            already holding ``config.json``, ``model.safetensors`` or (with
            ``save_anndata``) ``adata.h5ad`` is refused, whatever wrote them. Overwriting a
            save without ``save_anndata`` removes the earlier save's ``adata.h5ad``.
        save_anndata
            Also write the model's AnnData as ``adata.h5ad``; ``config.json`` records its
            checksum and :meth:`load` refuses the file edited after saving.
        """
        from safetensors.torch import save_file

        from scdl._version import __version__

        dir_path = Path(dir_path)
        if save_anndata:
            self._require_adata("save")
        if dir_path.exists() and not dir_path.is_dir():
            raise FileExistsError(
                f"{str(dir_path)!r} is a file; `save()` writes a folder (config.json + "
                "model.safetensors). Pass a folder path, e.g. without the file extension."
            )
        # as scvi-tools: without overwrite nothing in the folder is replaced (a user's
        # adata.h5ad or weights of another tool included)
        written = [CONFIG_NAME, WEIGHTS_NAME, *([ANNDATA_NAME] if save_anndata else [])]
        existing = [name for name in written if (dir_path / name).exists()]
        if existing and not overwrite:
            what = "a saved model" if CONFIG_NAME in existing else " and ".join(existing)
            raise ValueError(
                f"{str(dir_path)!r} already holds {what}; pass `overwrite=True` to replace it."
            )
        # an earlier save's AnnData, which load() would attach to this model (removed once
        # the new save is written; a user's file in a folder without a save is kept)
        had_save = (dir_path / CONFIG_NAME).exists()
        stale_anndata = had_save and not save_anndata and (dir_path / ANNDATA_NAME).is_file()
        dir_path.mkdir(parents=True, exist_ok=True)
        attrs = {a: v for a, v in self._get_user_attributes() if a.endswith("_")}
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "scdl_version": __version__,
            "model_class": type(self).__name__,
            "var_names": [str(v) for v in self.get_var_names()],
            "attrs": _encode(attrs),
            **self._extra_config(),
        }
        if save_anndata:  # written first: the config records its checksum, load() checks it
            from scdl.data import write_h5ad_atomic

            write_h5ad_atomic(self.adata, dir_path / ANNDATA_NAME)
            config[ANNDATA_DIGEST_KEY] = _sha256(dir_path / ANNDATA_NAME)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        # each file records the other's checksum: load() refuses either edited after saving
        save_file(
            state,
            str(dir_path / WEIGHTS_NAME),
            metadata={CONFIG_DIGEST_KEY: _config_digest(config)},
        )
        config["weights_sha256"] = _sha256(dir_path / WEIGHTS_NAME)
        with open(dir_path / CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(config, f)
        if stale_anndata:
            (dir_path / ANNDATA_NAME).unlink()

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        *,
        accelerator: str = "auto",
        device: int | str = "auto",
    ):
        """Load a model saved with :meth:`save`, without unpickling anything.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData to attach, with the same genes in the same order as at training. If
            ``None``, ``adata.h5ad`` in the folder is used when present; otherwise the model
            is built from its saved registry and takes data in its methods' ``adata=``.
        accelerator, device
            Where to put the model (as in Lightning).
        """
        from scvi.model._utils import parse_device_args
        from scvi.model.base._save_load import _initialize_model

        config = read_config(dir_path)
        state = load_weights(dir_path)  # before adata is registered; malformed: named
        checksummed = _check_checksums(dir_path, config)
        _check_fields(dir_path, config)
        if config["model_class"] != cls.__name__:
            raise ValueError(
                f"{str(dir_path)!r} holds a {config['model_class']} model; load it with "
                f"scdl.models.{config['model_class']}.load."
            )
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        attrs = _decode(config["attrs"])
        registry = attrs.pop("registry_")
        _check_genes_agree(config, registry, dir_path)
        if adata is None:
            adata = _saved_anndata(dir_path, config, checksummed)
        if adata is not None:
            from scdl.data import gene_mismatch_message, same_gene_names

            ref = pd.Index(config["var_names"])
            if not same_gene_names(adata.var_names, ref):
                message = gene_mismatch_message(ref, adata.var_names)
                raise ValueError(f"{cls._load_adata_hint} {message}".strip())
            # counts and categories, named as in the model's methods (scvi-tools' transfer
            # names an option load lacks, and registers labels before it fails)
            from scdl.data import check_query

            check_query(
                adata,
                registry,
                model=cls.__name__,
                unseen_fix=cls._unseen_categories_fix,
                counts=cls._reads_counts,
            )
            # the weights must fit before adata is registered (a failing load leaves it as it was)
            probe = _initialize_model(cls, None, registry, copy.deepcopy(attrs), None)
            _load_state(probe, state, dir_path)
            cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        model = _initialize_model(cls, adata, registry, attrs, None)
        model._on_load()
        _load_state(model, state, dir_path)
        model.to_device(torch_device)
        model.module.eval()
        return model

    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The scvi-tools registry saved with a model, read from ``config.json`` (JSON only).

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            Not used (scdl saves carry no file-name prefix).
        """
        return _decode(read_config(dir_path)["attrs"])["registry_"]

    @classmethod
    def convert_legacy_save(cls, *args, **kwargs):
        """Not supported: scvi-tools' legacy saves are pickles, which scdl never loads."""
        raise NotImplementedError(
            "scdl does not read scvi-tools' pickled (legacy) saves: loading them can run code "
            "from the file. Retrain the model, or load it with scvi-tools in a trusted "
            "environment and save it with scdl."
        )


class CheckedQueryMixin:
    """Check a new AnnData passed to a trained model's methods before scvi-tools uses it.

    scvi-tools transfers the registration to a new AnnData without comparing gene names (the
    same number of genes in another order is accepted) or checking the counts; this runs
    :func:`scdl.data.check_query` first, once per AnnData. The error for unseen categories
    says the model class's ``_unseen_categories_fix`` (see :class:`SafeSaveLoadMixin`).
    """

    def _registered_here(self, adata) -> bool:
        """Whether ``adata`` itself (not a copy) is registered with this model instance."""
        from scvi.data._constants import _SCVI_UUID_KEY

        uns = getattr(adata, "uns", None)
        if uns is None or _SCVI_UUID_KEY not in uns:
            return False
        store = type(self)._per_instance_manager_store.get(self.id, {})
        manager = store.get(uns[_SCVI_UUID_KEY])
        return manager is not None and manager.adata is adata

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is None:
            self._require_adata("use", takes_adata=True)
        if adata is not None and adata is not self.adata and not self._registered_here(adata):
            from scdl.data import check_query

            check_query(
                adata,
                self.registry_,
                model=type(self).__name__,
                unseen_fix=self._unseen_categories_fix,
            )
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)
