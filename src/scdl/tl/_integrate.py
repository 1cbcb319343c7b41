"""``scdl.tl.integrate``: train a VAE and write its latent space into AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from scdl._rng import keeps_rng
from scdl.data import (
    check_categorical,
    check_counts,
    check_is_anndata,
    check_key_added,
    check_not_empty,
    check_positive_int,
    check_random_state,
    check_unique_var_names,
    check_writable,
    get_matrix,
    key_list,
    warn_other_features,
    writable,
)

from ._cluster_graph import VAE_MODEL
from ._hvg import select_genes
from ._train import check_finite, epochs_trained, train_model, training_summary
from ._training_data import training_adata

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData

    from scdl.models import VAE


_NUMERIC_HINT = " (numeric covariates go in `continuous_covariate_keys`)"


@keeps_rng
def integrate(
    adata: AnnData,
    *,
    batch_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | pd.Index | None = None,
    continuous_covariate_keys: list[str] | None = None,
    layer: str | None = None,
    key_added: str = "X_scdl",
    n_latent: int = 10,
    n_top_genes: int | None = 2000,
    max_epochs: int | None = None,
    gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
    batch_size: int = 128,
    accelerator: str = "auto",
    devices: int | list[int] | str = "auto",
    random_state: int | None = 0,
    progress_bar: bool = True,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
) -> VAE:
    """Integrate batches (or embed one batch) with a VAE on raw counts.

    Selects expressed, highly variable genes from the raw counts, trains
    :class:`scdl.models.VAE` on them with ``batch_key`` as the batch covariate, and writes
    the batch-corrected latent space into ``adata``. Use it in place of PCA: clustering,
    neighbours and UMAP then run on ``obsm[key_added]``. With ``batch_key=None`` it is a
    learned embedding of a single-batch dataset.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` or ``layer``.
    batch_key
        obs column of the batches to integrate (sample, donor, technology); ``None`` for no
        batch correction. A column of one category is trained on as one batch, with a
        warning (nothing to correct).
    categorical_covariate_keys, continuous_covariate_keys
        Further obs columns the model conditions on, as in scvi-tools' ``setup_anndata``:
        levels such as donor or chemistry beside the batch, numbers such as the percentage of
        mitochondrial counts (standardised by the model, so their units do not matter). The
        latent then depends on them, as on the batch.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    key_added
        Where the latent space goes (``obsm``) and the training summary (``uns``).
    n_latent
        Dimensionality of the latent space.
    n_top_genes
        Highly variable genes to train on (seurat_v3 on counts, per batch); ``None`` uses all
        expressed genes.
    max_epochs
        Training epochs; ``None`` chooses from the number of cells.
    gene_likelihood
        Count distribution of the decoder. For full-length read counts (Smart-seq2: each
        molecule counted as its copies, hardly any value of 1) ``"zinb"`` fits the reads'
        excess zeros and spread better than ``"nb"``; compare the two on such data.
    batch_size
        Cells per minibatch.
    accelerator, devices
        Passed to Lightning.
    random_state
        Seed for weights, data order and sampling; the same seed gives the same result on CPU.
        ``None``: not seeded (each run differs).
    progress_bar
        Show Lightning's progress bar.
    model_kwargs, train_kwargs
        Further arguments for :class:`scdl.models.VAE` and :meth:`~scdl.models.VAE.train`.

    Returns
    -------
    scdl.models.VAE
        The trained model, attached to an internal AnnData of the selected genes and a copy
        of ``adata.obs`` as it was (``model.adata``, counts in ``X`` whatever ``layer`` was, so
        a query for it holds its counts in ``X`` too), so its methods group cells by those obs
        columns, e.g. ``model.differential_expression(groupby="condition", group1="stim")``;
        a column written later (:func:`scdl.tl.cluster`'s clusters) is copied across first:
        ``model.adata.obs["scdl_cluster"] = adata.obs["scdl_cluster"]``. Save it with
        ``model.save(dir)`` or map new batches onto it with
        :meth:`scdl.models.VAE.load_query_data`.

    ``adata`` gains

    ``adata.obsm[key_added]``
        Latent representation (posterior means), cells x ``n_latent``.
    ``adata.uns[key_added]``
        ``params`` (``batch_key``, ``layer``, ``n_latent``, ``n_genes``, ``max_epochs`` (the
        epochs run), ``gene_likelihood``, ``random_state``, ``model``, and the covariate keys
        when given), ``var_names`` (genes
        used; duplicated names suffixed ``-1``, ``-2``, ... as ``var_names_make_unique``
        does), ``history``
        (per-epoch ``elbo_train``, ``elbo_validation`` (when cells are held out),
        ``reconstruction_loss_train`` and ``kl_local_train``, each with its ``<name>_epoch``
        array; empty when ``train_kwargs`` passes a ``logger``, which records them instead)
        and ``train_time_s``.

    Raises
    ------
    KeyError
        ``layer`` is not in ``adata.layers``, or ``batch_key`` or a covariate key is not a
        column of ``adata.obs``.
    TypeError
        ``batch_key`` holds non-integer numbers (not a category), or an option has the wrong
        type (``n_latent``, ``n_top_genes``, ``random_state``, ``key_added``).
    ValueError
        The values are not raw counts (non-integer, negative, NaN or infinite); ``batch_key``
        has missing values; no gene has counts; ``adata`` has no cells; an option is out of
        range (``n_latent`` or ``n_top_genes`` below 1, a ``gene_likelihood`` other than
        ``"nb"``, ``"zinb"`` or ``"poisson"``, ``key_added`` empty or holding "/"). Every
        refusal listed here leaves ``adata`` unchanged.

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> model = scdl.tl.integrate(adata, batch_key="sample")
    >>> scdl.tl.cluster(adata, use_rep="X_scdl")
    """
    from scdl.models import VAE

    # validate everything before touching adata, so a failing call leaves it unchanged
    check_random_state(random_state)
    summary = _check_inputs(adata, key_added, layer, batch_key, n_top_genes)
    categorical_covariate_keys = key_list(categorical_covariate_keys, "categorical_covariate_keys")
    continuous_covariate_keys = key_list(continuous_covariate_keys, "continuous_covariate_keys")
    # their columns are checked by VAE.setup_anndata on the training copy, before training
    covariates = {
        "categorical_covariate_keys": categorical_covariate_keys,
        "continuous_covariate_keys": continuous_covariate_keys,
    }
    genes = select_genes(
        adata,
        summary.gene_totals,
        layer=layer,
        batch_key=batch_key,
        n_top_genes=n_top_genes,
    )

    # the model trains on its own small AnnData: the user's object gets no _scvi_* columns
    train_adata = training_adata(
        adata,
        genes,
        layer=layer,
        # every obs column, so the model's methods group cells as the user's data does
        # (model.differential_expression(groupby="condition", ...))
        obs_keys=([batch_key] if batch_key is not None else []) + list(adata.obs.columns),
    )

    model, train_time = train_model(
        VAE,
        train_adata,
        random_state=random_state,
        setup_kwargs={
            "batch_key": batch_key,
            "categorical_covariate_keys": categorical_covariate_keys,
            "continuous_covariate_keys": continuous_covariate_keys,
        },
        # dict(): a key given twice is a TypeError, as in a call
        model_kwargs=dict(
            n_latent=n_latent, gene_likelihood=gene_likelihood, **(model_kwargs or {})
        ),
        train_kwargs=dict(
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            enable_progress_bar=progress_bar,
            **(train_kwargs or {}),
        ),
    )
    latent = model.get_latent_representation()
    check_finite(latent)
    # everything read from the model before the first write: a failure leaves adata as it was
    info = {
        "params": {
            "batch_key": batch_key or "",
            "layer": layer or "",
            "n_latent": n_latent,
            "n_genes": len(genes),
            "max_epochs": epochs_trained(model),
            "gene_likelihood": gene_likelihood,
            "random_state": random_state,
            "model": VAE_MODEL,  # tl.cluster reads it, with batch_key, to average in a PCA
            **{
                k: np.asarray([str(c) for c in v], dtype=object)
                for k, v in covariates.items()
                if v is not None
            },
        },
        # as text: integer gene names (a matrix read without names) made the file unwritable
        "var_names": np.asarray([str(g) for g in genes], dtype=object),
        **training_summary(model, train_time),
    }
    adata = writable(adata)
    adata.obsm[key_added] = latent
    adata.uns[key_added] = info
    return model


def _check_inputs(adata, key_added, layer, batch_key, n_top_genes):
    """The count summary of ``adata``; every input checked before anything is written."""
    check_is_anndata(adata)
    check_not_empty(adata)
    check_writable(adata)
    warn_other_features(adata)
    check_key_added(key_added)
    check_positive_int(n_top_genes, "n_top_genes", none="all expressed genes")
    get_matrix(adata, layer)
    check_unique_var_names(adata, warn=True)  # genes are not matched by name here
    if batch_key is not None:  # one category is valid: VAE.setup_anndata says so
        check_categorical(adata, batch_key, arg="batch_key", numeric_hint=_NUMERIC_HINT)
    summary = check_counts(adata, layer, warn_zero_cells=False)  # said for the genes used
    if summary.n_zero_genes == adata.n_vars:
        raise ValueError("No gene has counts; nothing to integrate.")
    return summary
