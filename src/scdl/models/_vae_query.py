"""Reference mapping with :class:`~scdl.models.VAE` (scArches, as scvi-tools' ``ArchesMixin``):
a query's genes padded into the reference's order, and a query model that trains only its new
batches' weights. What scdl adds: a saved reference is read with the safe loader, and the
query's genes and batch categories are checked by name first.
"""

from __future__ import annotations

import difflib
import logging
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.model.base import ArchesMixin

from scdl._warnings import SMALL_LABEL_MESSAGE, warn_user
from scdl.data import (
    check_category_kind,
    check_is_anndata,
    check_obs_key,
    check_unique_var_names,
    gene_mismatch_message,
    get_matrix,
    pad_to_genes,
    same_gene_names,
)

from ._base import fresh_registration_id

if TYPE_CHECKING:
    from anndata import AnnData

    from ._vae import VAE

logger = logging.getLogger(__name__)


class VAEQueryMixin:
    """Reference-mapping methods of :class:`~scdl.models.VAE` (before scvi-tools'
    ``ArchesMixin`` in the class's bases, whose methods these call)."""

    @staticmethod
    def prepare_query_anndata(
        adata: AnnData,
        reference_model: VAE | str | os.PathLike,
        return_reference_var_names: bool = False,
        inplace: bool = True,
        *,
        prefix: str | None = None,
    ):
        """Pad a query's missing reference genes with zeros and put them in the reference order.

        As scvi-tools' method, but a saved reference is read with scdl's safe loader (the
        scvi-tools version unpickles ``model.pt``), and the padding is sparse zeros of each
        matrix's own dtype (scvi-tools' passes through a dense float64 block and makes the
        query float64); ``uns``, ``obsm``, ``obsp`` and ``raw`` are kept, ``varm`` and
        ``varp`` are dropped when genes are added (see :func:`scdl.data.pad_to_genes`).
        Below 90% of the reference's genes in the query (``LOW_GENE_OVERLAP``), a warning
        says so.

        Parameters
        ----------
        adata
            Query AnnData.
        reference_model
            Trained :class:`VAE`, or the folder it was saved to.
        return_reference_var_names
            Only return the reference's gene names.
        inplace
            Modify ``adata`` in place (``True``) or return a new AnnData. A backed ``adata``
            (``backed="r"``) whose genes are not the reference's in order is padded in a copy
            in memory (``inplace=False``) or refused (``True``: a file cannot gain genes).
        prefix
            The ``prefix`` a saved reference was saved with.
        """
        from ._base import read_config

        if not return_reference_var_names:  # then adata is not read
            check_is_anndata(adata)
        path = isinstance(reference_model, str | os.PathLike)
        if return_reference_var_names:
            if path:
                return pd.Index(read_config(reference_model, prefix, "VAE")["var_names"])
            return pd.Index(reference_model.get_var_names())
        if path:  # our safe loader, without data; scvi-tools' would unpickle a model.pt
            from ._vae import VAE

            with torch.random.fork_rng(devices=[]):  # building it draws from torch's RNG
                reference_model = VAE.load(  # only its genes are read: on the CPU
                    reference_model, adata=False, prefix=prefix, accelerator="cpu"
                )
        ref_genes = pd.Index(reference_model.get_var_names())
        if getattr(adata, "isbacked", False) and not same_gene_names(adata.var_names, ref_genes):
            if inplace:  # genes cannot be added to a matrix on disk
                raise ValueError(
                    "adata is backed (read with backed='r'), and its genes are not the "
                    "reference's in order, so they cannot be padded in place. Pass "
                    "`adata.to_memory()`, or inplace=False for a padded copy in memory."
                )
            adata = adata.to_memory()
        check_unique_var_names(adata)
        if not inplace:  # scvi-tools' returned the caller's AnnData, reordered, on a reorder
            return pad_to_genes(adata, ref_genes)
        if ref_genes.isin(adata.var_names).all():  # a reorder or subset in place: no copy
            return ArchesMixin.prepare_query_anndata(adata, reference_model, inplace=True)
        out = pad_to_genes(adata, ref_genes)
        # anndata has no public way to give an AnnData other genes in place; scvi-tools'
        # prepare_query_anndata re-initialises it the same way
        adata._init_as_actual(out)
        return None

    @staticmethod
    def prepare_query_mudata(*args, **kwargs):
        """Not supported: scdl models take AnnData."""
        raise NotImplementedError("scdl's VAE takes AnnData; use `VAE.prepare_query_anndata`.")

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model: VAE | str | os.PathLike,
        *,
        prefix: str | None = None,
        **kwargs,
    ) -> VAE:
        """Map a new batch onto a trained reference without retraining the reference (scArches).

        Only the weights of the query's batch categories are trained afterwards
        (call ``.train()`` on the returned model, e.g. ``max_epochs=100``,
        ``plan_kwargs={"weight_decay": 0.0}``); with that setting the reference cells' latent
        representation stays as it was, unless the query holds batches the reference was
        trained on (a warning says so): their weights are trained too. As in scvi-tools, a
        reference registered with ``categorical_covariate_keys`` is the other exception: the
        first layers' weights of every covariate category, the reference's too, are trained
        with the query, so the reference cells' representation moves a little. So does a
        reference of one batch (as in scvi-tools: with one category its first layer takes no
        batch input, and mapping adds one, untrained, for the reference's batch too): by a
        few hundredths on the scale of the latent, which leaves nearly every cell's nearest
        neighbours as they were. A reference trained without a ``batch_key`` has no batch
        weights to train (a warning says so): embed the query with
        ``reference_model.get_latent_representation(query)`` instead.

        Parameters
        ----------
        adata
            Query AnnData with raw counts where the reference had them (``adata.X`` for a
            model from :func:`scdl.tl.integrate`, whatever its ``layer``), the reference's
            genes, and the reference's
            ``batch_key`` column holding the new batch name(s). If it holds extra genes or the
            reference's genes in another order, a copy with the reference's genes in order is
            used, as it is for a view (``adata[mask]``; of a backed ``adata``, the subset is
            read into memory); ``adata`` itself is then not modified, and the returned model
            holds the copy (``model.adata``): call its methods without ``adata=``, or pass
            ``adata[:, model.get_var_names()]``. Otherwise ``adata`` is registered in place:
            it gains the ``_scvi_*`` fields :meth:`setup_anndata` writes. With
            ``inplace_subset_query_vars=True`` (scvi-tools' option) ``adata`` itself is subset
            to the reference's genes, in their order, and registered (a view's copy is, as
            above; a backed ``adata`` is refused: a file cannot lose genes). A reference set
            up with ``labels_key`` needs that column in the query too; labels the reference
            does not know are taken.
        reference_model
            Trained :class:`VAE`, or the folder it was saved to.
        prefix
            The ``prefix`` a saved reference was saved with (see :meth:`VAE.save`).
        **kwargs
            Passed to :meth:`scvi.model.base.ArchesMixin.load_query_data` (freezing options).
        """
        check_is_anndata(adata)
        if isinstance(reference_model, str | os.PathLike):
            # building the saved model draws from torch's RNG: without the fork, a folder
            # would map the query otherwise than the same reference in memory, seed for seed
            with torch.random.fork_rng(devices=[]):
                reference_model = cls.load(  # where the caller asked, not the default device
                    reference_model,
                    accelerator=kwargs.get("accelerator", "auto"),
                    device=kwargs.get("device", "auto"),
                    prefix=prefix,
                )
        if not isinstance(reference_model, cls):
            raise TypeError(
                f"reference_model must be a trained {cls.__name__} or a folder it was saved to, "
                f"got {type(reference_model).__name__}."
            )
        copied = adata.is_view and adata.isbacked  # scdl's own copy: released with the model
        if copied:  # anndata neither copies nor subsets it again
            adata = adata.to_memory()
        ref_genes = pd.Index(reference_model.get_var_names())
        subset_genes = not same_gene_names(adata.var_names, ref_genes)
        if subset_genes:
            check_unique_var_names(adata)
            if not ref_genes.is_unique:
                raise ValueError(
                    "The reference's gene names have duplicates, so the query's genes cannot "
                    "be matched to them by name: pass a query with the reference's genes in "
                    "its order (`reference_model.get_var_names()`)."
                )
            if not ref_genes.isin(adata.var_names).all():
                raise ValueError(gene_mismatch_message(ref_genes, adata))
            logger.info(
                "Using the query's %d reference genes, in the reference's order.", len(ref_genes)
            )
            if kwargs.get("inplace_subset_query_vars") and adata.isbacked:
                raise ValueError(
                    "inplace_subset_query_vars=True cannot subset a backed query's genes (a "
                    "file cannot lose genes): leave it out, and scdl maps a copy with the "
                    "reference's genes read into memory."
                )
            if kwargs.get("inplace_subset_query_vars") and not adata.is_view:
                subset_genes = False  # scvi-tools subsets the caller's AnnData, as asked
            else:
                subset = adata[:, ref_genes]
                # a backed query's subset is read into memory (a copy would need a file)
                adata = subset.to_memory() if adata.isbacked else subset.copy()
        elif adata.is_view:  # registering writes into the AnnData: a view gets its own copy
            adata = adata.to_memory() if adata.isbacked else adata.copy()
            copied = True
        setup_args = reference_model.registry_["setup_args"]
        _check_reference_columns(adata, setup_args)
        # from the registry: a model loaded without data has no AnnData manager
        fields = reference_model.registry_["field_registries"]
        covs = fields.get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry", {})
        for key, mapping in (covs.get("mappings") or {}).items():
            # scArches would extend the mapping with the query's 1 beside the reference's "1",
            # and the query model then refuses the reference's own cells
            check_category_kind(adata.obs[key], list(mapping), key, model=cls.__name__)
        labels = fields.get(REGISTRY_KEYS.LABELS_KEY, {}).get("state_registry", {})
        if (
            setup_args.get("labels_key") is not None
            and labels.get("categorical_mapping") is not None
        ):
            key = setup_args["labels_key"]  # new labels are taken, of the reference's kind
            check_category_kind(
                adata.obs[key], list(labels["categorical_mapping"]), key, model=cls.__name__
            )
        # (unfrozen=True trains every weight: the query then moves)
        no_batches = setup_args.get("batch_key") is None and not covs.get("mappings")
        if no_batches and not kwargs.get("unfrozen"):
            warn_user(
                "The reference was trained without a batch_key, so the query model has no "
                "batch weights to train: `.train()` would leave the query where the reference "
                "model places it. Embed it directly with `reference_model."
                "get_latent_representation(query)`, or train the reference with "
                "`batch_key=` (its batches) to map a query as a new batch.",
                UserWarning,
            )
        if setup_args.get("batch_key") is not None:
            key = setup_args["batch_key"]
            col = check_obs_key(adata, key, arg="batch_key (of the reference)")
            state = fields[REGISTRY_KEYS.BATCH_KEY]["state_registry"]
            check_category_kind(col, state["categorical_mapping"], key, model=cls.__name__)
            known = sorted(
                set(col.dropna().astype(str)) & set(map(str, state["categorical_mapping"]))
            )
            if known:  # scArches trains every batch column the query's cells use
                warn_user(
                    f"The query's {key!r} holds batches the reference was trained on "
                    f"({known[:5]}): training the query model also trains their weights, so "
                    "the reference cells of those batches move. To place such cells without "
                    "changing the reference, use `reference_model.get_latent_representation("
                    "query)`; to map them as a new batch, give them a new batch name.",
                    UserWarning,
                )
        if copied or subset_genes:  # scdl's copy: its own registration, released with it
            fresh_registration_id(adata)
        with warnings.catch_warnings():
            # a query of 1-2 cells: scvi-tools names its own labels column (never the user's,
            # and unused by the map); said below where genes were subset: the fix it names is
            # for the copy
            warnings.filterwarnings("ignore", message=SMALL_LABEL_MESSAGE)
            if subset_genes:
                warnings.filterwarnings("ignore", message=r".* cells have no counts in adata")
            model = super().load_query_data(adata, reference_model, **kwargs)
        if not subset_genes:
            if copied:
                model._owns_adata(adata)
            return model
        model._owns_adata(adata)  # the subset scdl made: its registration goes with the model
        x = get_matrix(adata, setup_args.get("layer"))
        n_empty = int(np.count_nonzero(np.asarray(x.sum(axis=1)).ravel() == 0))
        if n_empty:
            warn_user(
                f"{n_empty} of {adata.n_obs} query cells have no counts in the reference's "
                f"{len(ref_genes)} genes (only in the query's other genes); they are kept, with "
                "the representation of an empty cell. To drop them, filter on those genes: "
                "`keep = np.asarray(query[:, model.get_var_names()].X.sum(1)).ravel() > 0`, "
                "then map `query[keep].copy()`.",
                UserWarning,
            )
        return model


def _check_reference_columns(adata, setup_args: dict) -> None:
    """The obs columns the reference was set up with, which a query from another lab often
    names otherwise: named with the fix (scvi-tools: "'donor' not found in adata.obs")."""
    wanted = [("batch_key", setup_args.get("batch_key"))]
    wanted += [
        (arg, k)
        for arg in ("categorical_covariate_keys", "continuous_covariate_keys")
        for k in setup_args.get(arg) or []
    ]
    wanted += [("labels_key", setup_args.get("labels_key"))]
    for arg, key in wanted:
        if key is None or key in adata.obs.columns:
            continue
        # the example copies one of the query's own columns, never the missing one itself
        others = [str(c) for c in adata.obs.columns]
        folded = {c.casefold(): c for c in others}  # "SAMPLE" offered for "sample"
        near = difflib.get_close_matches(str(key).casefold(), list(folded), n=1, cutoff=0.6)
        source = folded[near[0]] if near else "<batch column of the query>"
        what = (
            "the query's batches (a name the reference does not know maps them as a new "
            "batch), e.g. `query.obs[{key!r}] = 'query'` or "
            "`query.obs[{key!r}] = query.obs[{source!r}]`"
            if arg == "batch_key"
            else "each query cell's label, or one for all when they are not known (a label "
            "the reference does not know is taken), e.g. `query.obs[{key!r}] = 'unknown'`"
            if arg == "labels_key"
            else "each query cell's value of it, e.g. `query.obs[{key!r}] = query.obs['...']`"
            + (" (numbers, as in the reference)" if arg == "continuous_covariate_keys" else "")
        ).format(key=key, source=source)
        raise KeyError(
            f"The query's adata.obs lacks {key!r}, which the reference was set up with "
            f"(`{arg}`; columns: {list(map(str, adata.obs.columns))}). Add it, holding {what}."
        )
