"""Safe save/load shared by every scdl model: JSON config + safetensors weights.

scvi-tools' own ``save``/``load`` pickle the model's attributes and call
``torch.load(weights_only=False)``, which can execute code from the file. scdl models write
``config.json`` (init parameters, AnnData registry, gene names, training history; JSON only)
and ``model.safetensors`` (tensors only), so loading a model file never runs code from it.
Each file records the other's SHA-256 (the weights' in ``config.json``, the config's in the
safetensors header), so a file edited, corrupted or swapped after saving is refused; a save
whose checksums were both removed loads with a warning that edits go unnoticed. Whatever a
config holds, it can set only the model's own ``*_`` attributes and arrays of plain dtypes.
"""

from __future__ import annotations

import copy
import json
import os
import weakref
from typing import TYPE_CHECKING, Literal

import pandas as pd

from scdl._paths import as_user_created
from scdl._warnings import registering_quietly, warn_user

from ._arguments import check_registry
from ._registrations import forget_registrations
from ._saved_checks import check_saved_attrs, config_errors, probe_weights
from ._saved_files import (
    ANNDATA_DIGEST_KEY,
    CONFIG_DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    SavedFiles,
    _check_checksums,
    _check_fields,
    _check_genes_agree,
    _config_digest,
    _decode,
    _encode,
    _initialize_model,
    _load_state,
    _saved_anndata,
    _sha256,
    load_weights,
    read_config,
)

if TYPE_CHECKING:
    from anndata import AnnData

# where scvi-tools' setup_anndata stores an AnnData's registration id (part of the AnnData it
# writes, so stable across releases; its constant lives in a private module)
SCVI_UUID = "_scvi_uuid"
_MANAGER_UUID = "_scvi_manager_uuid"  # the manager that last registered an AnnData


def fresh_registration_id(adata: AnnData) -> None:
    """Drop the registration ids an AnnData scdl made carries from the one it was made from
    (a copy's uns, a save's file): registered, it gets its own, and releasing it with its
    model never touches the original's registration."""
    adata.uns.pop(SCVI_UUID, None)
    adata.uns.pop(_MANAGER_UUID, None)


class SafeSaveLoadMixin:
    """``save``/``load`` through JSON + safetensors instead of pickle."""

    #: said first when ``load(adata=)`` gets data with other genes (what ``adata`` must be)
    _load_adata_hint = ""
    #: how to use cells of categories the model was not trained on, said by ``load(adata=)``
    #: (and by the model's methods, see :class:`CheckedQueryMixin`)
    _unseen_categories_fix = "keep only cells of known categories"
    #: whether the registered data are raw counts (checked as such by ``load(adata=)``)
    _reads_counts = True
    #: what ``load(adata=)`` takes, as a model loaded without data names it
    _load_adata_what = "cells with the model's genes"
    #: the keyword a second AnnData belongs to, named where one is passed as ``registry``
    _second_adata = ""

    def __init__(self, adata=None, registry=None, **kwargs):
        # every scdl model's second positional argument, checked once here for all of them
        check_registry(registry, type(self).__name__, second=self._second_adata)
        super().__init__(adata, registry, **kwargs)
        # scvi-tools keeps every registration in class-level stores for the session: the
        # model's own entry, and those of AnnData scdl made for it (a tool's training copy, a
        # query's gene subset, a saved AnnData read back), go when the model does
        self._own_adata: dict = {}
        weakref.finalize(self, forget_registrations, type(self), self.id, self._own_adata)

    def __getstate__(self) -> dict:
        # weak references do not pickle (a model sent to spawned training processes); the
        # release belongs to the process that registered the AnnData
        state = self.__dict__.copy()
        state["_own_adata"] = {}
        return state

    @classmethod
    def _release_adata(cls, adata: AnnData) -> None:
        """Drop the registration of an AnnData scdl made for a model that was not built (a
        half-built one registered it in its own store too)."""
        uuid = adata.uns.get(SCVI_UUID)
        stores = [*cls._per_instance_manager_store.values(), cls._setup_adata_manager_store]
        for store in stores:
            store.pop(uuid, None)

    def _owns_adata(self, adata: AnnData) -> None:
        """Mark ``adata`` as made by scdl for this model alone: its registration is dropped
        from scvi-tools' class store with the model (never the user's own AnnData, which
        ``Model(adata)`` may be given again)."""
        uuid = adata.uns.get(SCVI_UUID)
        manager = type(self)._setup_adata_manager_store.get(uuid)
        if uuid is not None and manager is not None:
            self._own_adata[uuid] = (id(manager), weakref.ref(adata))

    @classmethod
    def _refuse_setup_options(cls, kwargs: dict) -> None:
        """Refuse ``setup_anndata`` keywords this model does not take (scvi-tools' other
        models' options, e.g. ``size_factor_key``) by name, before anything is written;
        scvi-tools' own transfer keywords (``source_registry``, ...) pass."""
        import inspect

        unknown = sorted(
            set(kwargs) - {"source_registry", "extend_categories", "allow_missing_labels"}
        )
        if unknown:
            params = inspect.signature(cls.setup_anndata).parameters
            options = [n for n, p in params.items() if n != "adata" and p.kind != p.VAR_KEYWORD]
            raise TypeError(
                f"{cls.__name__}.setup_anndata() does not take {unknown} (an option of other "
                f"scvi-tools models?); its options are {options}. Drop "
                f"{'it' if len(unknown) == 1 else 'them'}, or use the scvi-tools model that "
                "has it."
            )

    def _warn_if_unsavable(self) -> None:
        """Say when the model is built, not after training, that an option's value (a
        callable that is not one of torch's activations) cannot be saved."""
        try:
            _encode(self.init_params_, "init_params_")
        except TypeError as err:
            warn_user(f"{err} The model trains, but `save()` refuses it.", UserWarning)

    def _extra_config(self) -> dict:
        """Further JSON fields a model writes for readers of ``config.json``."""
        return {}

    def _on_load(self) -> None:
        """Called by :meth:`load` once the saved attributes are restored."""

    def _require_adata(self, what: str = "train", *, takes_adata: bool = False):
        """The AnnData the model was set up with; a model loaded without data has none. To
        train on it, it is registered again if another model's setup has since."""
        if self.adata is None:
            name = type(self).__name__
            raise ValueError(
                f"This {name} was loaded without data, so it has no cells to {what}: load it "
                f"with `{name}.load(dir_path, adata=...)` ({self._load_adata_what})"
                + (", or pass them as `adata=`." if takes_adata else ".")
            )
        if what == "train":
            self._replay_if_registered_elsewhere(self.adata)
        return self.adata

    def _replay_if_registered_elsewhere(self, adata: AnnData) -> None:
        """Register ``adata`` again with this model's categories when another model's setup
        (scdl's or scvi-tools') has registered it since: that setup rewrote the shared copies
        (``obs["_scvi_batch"]``, ...), which the model reads and the edit check compares with.
        scvi-tools replays a registration the same way (``AnnDataManager.validate``); here the
        model's own category mappings are kept, so a value outside them is refused."""
        from scdl.data import check_query

        manager = self.get_anndata_manager(adata)
        rekey = False
        if manager is None and adata is self.adata and self.adata_manager is not None:
            # another model given a copy of this AnnData found the copy's id in its own store
            # and gave this AnnData a new id (scvi-tools' copy rule), writing its own fields:
            # the model's manager is then under the old id only
            manager, rekey = self.adata_manager, True
        if manager is None or adata.uns.get(_MANAGER_UUID) == manager.id:
            return
        check_query(
            adata,
            self.registry_,
            model=type(self).__name__,
            unseen_fix=self._unseen_categories_fix,
            counts=self._reads_counts,
        )
        # a copy: registering rebuilds the manager's registry, which is the source read here
        source = copy.deepcopy(manager.registry)
        manager.adata = None  # as AnnDataManager.validate does before registering again
        with registering_quietly():  # small batches do not matter to a trained model
            manager.register_fields(adata, source)
        if rekey:
            self._register_manager_for_instance(manager)

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        *,
        overwrite: bool = False,
        save_anndata: bool = False,
    ) -> None:
        """Save the model to a folder: ``config.json`` and ``model.safetensors``.

        Parameters
        ----------
        dir_path
            Folder to write; created if needed.
        prefix
            Put before each file name (``{prefix}config.json``, ...), so that one folder can
            hold several saves; :meth:`load` then takes the same ``prefix``.
        overwrite
            Replace the files of an existing save in ``dir_path``. Without it, a folder
            already holding ``{prefix}config.json``, ``{prefix}model.safetensors`` or (with
            ``save_anndata``) ``{prefix}adata.h5ad`` is refused, whatever wrote them.
            Overwriting a save without ``save_anndata`` removes the earlier save's
            ``{prefix}adata.h5ad``.
        save_anndata
            Also write the model's AnnData as ``{prefix}adata.h5ad``; the config records its
            checksum and :meth:`load` refuses the file edited after saving.
        """
        from safetensors.torch import save_file

        from scdl._version import __version__
        from scdl.data import check_bool

        # a string such as "no" would be taken as true (and replace an earlier save)
        overwrite = check_bool(overwrite, "overwrite", truthy=True)
        save_anndata = check_bool(save_anndata, "save_anndata", truthy=True)
        files = SavedFiles(dir_path, prefix)
        dir_path = files.dir
        if save_anndata:
            self._require_adata("save")
        if dir_path.exists() and not dir_path.is_dir():
            name = dir_path.name
            pair = {"config.json": "model.safetensors", "model.safetensors": "config.json"}
            # a save's own file: its partner under the same prefix lies beside it
            saved = next(
                (
                    n
                    for n, other in pair.items()
                    if name.endswith(n) and (dir_path.parent / (name[: -len(n)] + other)).exists()
                ),
                "",
            )
            raise FileExistsError(
                f"{str(dir_path)!r} is a file; `save()` writes a folder (config.json + "
                "model.safetensors). "
                + (  # a saved model's own file: its folder (and prefix) is what was meant
                    f"Pass the folder that holds it, `{str(dir_path.parent)!r}`"
                    + (f", with `prefix={name[: -len(saved)]!r}`" if name != saved else "")
                    + " (and `overwrite=True` to replace that save)."
                    if saved
                    else "Pass a folder path, e.g. without the file extension."
                )
            )
        # as scvi-tools: without overwrite nothing in the folder is replaced (a user's
        # adata.h5ad or weights of another tool included)
        written = [files.config, files.weights, *([files.anndata] if save_anndata else [])]
        existing = [path.name for path in written if path.exists()]
        if existing and not overwrite:
            saved = files.config_name in existing
            what = "a saved model" if saved else " and ".join(existing)
            what += f" with prefix {prefix!r}" if saved and prefix else ""
            raise ValueError(
                f"{str(dir_path)!r} already holds {what}; pass `overwrite=True` to replace it."
            )
        # an earlier save's AnnData, which load() would attach to this model (removed once
        # the new save is written; a user's file in a folder without a save is kept)
        had_save = files.config.exists()
        stale_anndata = had_save and not save_anndata and files.anndata.is_file()
        attrs = {a: v for a, v in self._get_user_attributes() if a.endswith("_")}
        config = {  # encoded before the folder is made: an option that cannot be saved
            "format": FORMAT,  # leaves nothing behind
            "format_version": FORMAT_VERSION,
            "scdl_version": __version__,
            "model_class": type(self).__name__,
            "var_names": [str(v) for v in self.get_var_names()],
            "attrs": _encode(attrs),
            **self._extra_config(),
        }
        dir_path.mkdir(parents=True, exist_ok=True)
        if save_anndata:  # written first: the config records its checksum, load() checks it
            from scdl.data import write_h5ad_atomic

            write_h5ad_atomic(self.adata, files.anndata)
            config[ANNDATA_DIGEST_KEY] = _sha256(files.anndata)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        # each file records the other's checksum: load() refuses either edited after saving
        save_file(
            state,
            str(files.weights),
            metadata={CONFIG_DIGEST_KEY: _config_digest(config)},
        )
        # safetensors writes through a private temporary file (mode 0600): the weights get
        # the permissions of any file the user creates, as config.json does (a model shared
        # on a cluster or in an image stays readable)
        as_user_created(files.weights)
        config["weights_sha256"] = _sha256(files.weights)
        with open(files.config, "w", encoding="utf-8") as f:
            json.dump(config, f)
        if stale_anndata:
            files.anndata.unlink()

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | Literal[False] | None = None,
        *,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
    ):
        """Load a model saved with :meth:`save`, without unpickling anything.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        adata
            AnnData to attach, with the same genes in the same order as at training. As in
            scvi-tools, it is registered in place: it gains the ``_scvi_*`` fields
            ``setup_anndata`` writes (``obs`` columns, ``uns["_scvi_uuid"]``,
            ``uns["_scvi_manager_uuid"]``). If ``None``, the save's ``{prefix}adata.h5ad`` is
            used when present; otherwise, or with ``False`` (as in scvi-tools), the model is
            built from its saved registry without data and takes data in its methods'
            ``adata=``.
        accelerator, device
            Where to put the model (as in Lightning: ``device`` is one device's index), or
            ``device`` as torch writes it (``"cuda:1"``, ``"mps"``, ``"cpu"``) with
            ``accelerator="auto"``.
        prefix
            The ``prefix`` the model was saved with.
        backup_url
            Accepted as in scvi-tools, where it names a single model file to download when
            the save is missing. An scdl save is a folder of files, so nothing is downloaded:
            a missing save is a :class:`FileNotFoundError` that names the files to fetch.
        """
        from ._devices import resolve_device

        without_data = adata is False  # scvi-tools' "load without AnnData"
        if adata is not None and not without_data:
            from scdl.data import check_is_anndata

            check_is_anndata(adata)
        files = SavedFiles(dir_path, prefix)
        if backup_url is not None and not files.config.is_file():
            raise FileNotFoundError(
                f"No {files.config_name} in {files}, and an scdl save is not downloaded from "
                f"`backup_url` ({backup_url!r}): it is a folder of {files.config_name} and "
                f"{files.weights_name} (each checks the other). Download both into the "
                "folder, then load it."
            )
        config = read_config(dir_path, prefix, cls.__name__)
        state = load_weights(files)  # before adata is registered; malformed: named
        checksummed = _check_checksums(files, config)
        _check_fields(files, config)
        if config["model_class"] != cls.__name__:
            raise ValueError(
                f"{files} holds a {config['model_class']} model; load it with "
                f"scdl.models.{config['model_class']}.load."
            )
        _, _, torch_device = resolve_device(accelerator, device, single=True)
        with config_errors(files, values=True):
            attrs = _decode(config["attrs"])
        with config_errors(files):
            registry = attrs.pop("registry_")
            _check_genes_agree(config, registry, files)
            check_saved_attrs(files, attrs, registry, cls.__name__, len(config["var_names"]))
        if without_data:
            adata = None
        read_back = False  # an AnnData of the save's own (none in a save without one)
        if not without_data and adata is None:
            adata = _saved_anndata(files, config, checksummed)
            read_back = adata is not None
        if adata is not None:
            from scdl.data import gene_mismatch_message, same_gene_names

            ref = pd.Index(config["var_names"])
            if not same_gene_names(adata.var_names, ref):
                message = gene_mismatch_message(
                    ref,
                    adata,
                    genes_from=f"{cls.__name__}.load(path, adata=False).get_var_names()",
                    pad=cls.__name__ == "VAE",
                )
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
        probe_weights(cls, registry, attrs, state, files)
        if read_back:  # a new object: not under the saved (the user's) AnnData's id
            fresh_registration_id(adata)
        if adata is not None:
            cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        with config_errors(files):
            model = _initialize_model(cls, adata, registry, attrs)
            model._on_load()
        _load_state(model, state, files)
        if read_back:
            model._owns_adata(adata)
        model.to_device(torch_device)
        model.module.eval()
        return model

    def view_anndata_setup(
        self, adata: AnnData | None = None, hide_state_registries: bool = False
    ) -> None:
        """Print the setup of the model's AnnData, as scvi-tools does (its printer uses
        ``rich.pretty`` without importing it).

        Parameters
        ----------
        adata
            An AnnData the model has seen (default: the model's own; a model loaded without
            data has none and says so).
        hide_state_registries
            Leave out the fields' state registries.
        """
        import rich.pretty  # noqa: F401

        if adata is None:
            self._require_adata("show the setup of", takes_adata=True)
        return super().view_anndata_setup(adata, hide_state_registries=hide_state_registries)

    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The scvi-tools registry saved with a model, read from ``config.json`` (JSON only).

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            The ``prefix`` the model was saved with.
        """
        return _decode(read_config(dir_path, prefix)["attrs"])["registry_"]

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the arguments a saved model's AnnData was set up with (from :meth:`load_registry`;
        scvi-tools' version reads a pickled ``model.pt``).

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        prefix
            The ``prefix`` the model was saved with.
        """
        import rich.pretty  # noqa: F401  (scvi-tools' printer uses it without importing it)
        from scvi.data import AnnDataManager

        AnnDataManager.view_setup_method_args(SafeSaveLoadMixin.load_registry(dir_path, prefix))

    @classmethod
    def convert_legacy_save(cls, *args, **kwargs):
        """Not supported: scvi-tools' legacy saves are pickles, which scdl never loads."""
        raise NotImplementedError(
            "scdl does not read scvi-tools' pickled (legacy) saves: loading them can run code "
            "from the file, and scvi-tools' networks differ from scdl's. Keep using it with "
            "scvi-tools, or train the scdl model on the data."
        )
