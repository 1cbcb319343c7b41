"""``scdl.tl.map_query``: place a new dataset in a trained reference's latent space (scArches)
and carry the reference's labels across."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._rng import keeps_rng
from scdl.data import (
    check_counts,
    check_is_anndata,
    check_key_added,
    check_not_empty,
    check_obs_key,
    check_positive_int,
    check_random_state,
    check_writable,
    gene_mismatch_message,
    get_matrix,
    writable,
)

from ._cluster_graph import VAE_MODEL
from ._train import _seeded, check_finite, epochs_trained, training_summary
from ._training_data import training_adata, unique_gene_names

if TYPE_CHECKING:
    from anndata import AnnData

    from scdl.models import VAE

#: reference neighbours that vote on a query cell's label (scanpy's default neighbour count)
N_NEIGHBORS = 15


@keeps_rng
def map_query(
    adata: AnnData,
    reference: VAE | str | os.PathLike,
    *,
    labels_key: str | None = None,
    labels_added: str | None = None,
    layer: str | None = None,
    key_added: str = "X_scdl",
    n_neighbors: int = N_NEIGHBORS,
    max_epochs: int | None = None,
    batch_size: int = 128,
    accelerator: str = "auto",
    devices: int | list[int] | str = "auto",
    random_state: int | None = 0,
    progress_bar: bool = True,
    train_kwargs: dict | None = None,
) -> VAE:
    """Map a query onto a trained reference VAE and transfer the reference's labels.

    The scArches recipe of :meth:`scdl.models.VAE.load_query_data`, in one step: the query's
    batches (new names in the reference's ``batch_key`` column) get weights of their own, and
    only those are trained (without weight decay), so the reference's encoder, decoder and the
    reference cells' positions stay as they were. The query's latent space is written into
    ``adata``. With ``labels_key``, each query cell takes the majority label of its
    ``n_neighbors`` nearest labelled reference cells in that space (scikit-learn's
    :class:`~sklearn.neighbors.KNeighborsClassifier`), with the share of neighbours that
    disagree as its uncertainty. Every query cell gets one of the reference's labels, a cell
    of a type the reference lacks too: the uncertainty is the vote's disagreement, not a
    novelty call (:func:`scdl.tl.annotate` calls cells of new types "Unknown").

    Parameters
    ----------
    adata
        The query: raw counts in ``X`` or ``layer`` for the reference's genes (extra genes
        are ignored, missing ones refused), and the reference's ``batch_key`` column holding
        the query's batch names (new names: a batch the reference was trained on is trained
        again, which moves those reference cells; a warning says so).
    reference
        A trained :class:`scdl.models.VAE` (what :func:`scdl.tl.integrate` returns) trained
        with a ``batch_key``, or the folder it was saved to. For ``labels_key`` it must hold
        its reference cells (``reference.adata``): a model from :func:`~scdl.tl.integrate`
        does, a folder does when saved with ``save_anndata=True``, otherwise load it with them
        (``VAE.load(folder, adata=reference_cells)``).
    labels_key
        Column of the reference cells' ``obs`` (``reference.adata.obs``) with the labels to
        transfer. Cells with a missing label do not vote. ``None``: map only.
    labels_added
        obs column of the transferred labels; ``None``: ``f"{labels_key}_mapped"``. Their
        uncertainty goes to ``f"{labels_added}_uncertainty"``.
    layer
        Layer of ``adata`` with the raw counts; ``None`` uses ``adata.X``.
    key_added
        Where the latent space goes (``obsm``) and the mapping's summary (``uns``).
    n_neighbors
        Reference cells voting on each query cell's label (fewer when the reference has
        fewer labelled cells).
    max_epochs
        Training epochs of the query's weights; ``None`` chooses from the number of query
        cells, as :meth:`scdl.models.VAE.train` does.
    batch_size, accelerator, devices
        As in :func:`scdl.tl.integrate`.
    random_state
        Seed for the query's weights, data order and sampling; the same seed gives the same
        result on CPU. ``None``: not seeded.
    progress_bar
        Show Lightning's progress bar.
    train_kwargs
        Further arguments for :meth:`~scdl.models.VAE.train` (``plan_kwargs`` are merged with
        the recipe's ``weight_decay=0``).

    Returns
    -------
    scdl.models.VAE
        The query model, attached to an internal AnnData of the reference's genes (counts in
        ``X``) and a copy of ``adata.obs``; ``reference`` itself is not changed.

    ``adata`` gains

    ``adata.obsm[key_added]``
        Latent representation of the query cells (posterior means) in the reference's space,
        cells x the reference's ``n_latent``.
    ``adata.uns[key_added]``
        As :func:`scdl.tl.integrate` writes it (``params``, ``var_names``, ``history``,
        ``train_time_s``), so :func:`scdl.tl.cluster` reads the query as it reads an
        integrated dataset; ``params`` also holds ``mapped_onto`` (``"reference"``),
        ``labels_key`` and ``n_neighbors``.
    ``adata.obs[labels_added]``
        With ``labels_key``: the transferred label (categorical, the reference's labels).
    ``adata.obs[f"{labels_added}_uncertainty"]``
        With ``labels_key``: ``1 -`` the share of voting neighbours that hold that label (0:
        all agree).

    Raises
    ------
    KeyError
        ``layer``, the reference's batch column or ``labels_key`` is missing.
    TypeError
        ``reference`` is neither a :class:`~scdl.models.VAE` nor a folder, or an option has
        the wrong type.
    ValueError
        The values are not raw counts; the query lacks reference genes; the reference has no
        cells to take labels from, or no labelled cell; an option is out of range. Every
        refusal leaves ``adata`` unchanged.

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> donor = adata.obs["sample"].str[-3:]
    >>> ref, query = adata[donor == "101"].copy(), adata[donor == "107"].copy()
    >>> model = scdl.tl.integrate(ref, batch_key="sample")
    >>> scdl.tl.map_query(query, model, labels_key="cell_type")
    >>> query.obs[["cell_type_mapped", "cell_type_mapped_uncertainty"]]
    """
    from scdl.models import VAE

    check_random_state(random_state)
    check_is_anndata(adata)
    check_not_empty(adata)
    check_writable(adata)
    check_key_added(key_added)
    check_positive_int(n_neighbors, "n_neighbors")
    check_positive_int(max_epochs, "max_epochs", none="chosen from the number of cells")
    if isinstance(reference, str | os.PathLike):
        reference = VAE.load(reference, accelerator=accelerator, device="auto")
    if not isinstance(reference, VAE):
        raise TypeError(
            "reference must be a trained scdl.models.VAE (what scdl.tl.integrate returns) or "
            f"the folder it was saved to, got {type(reference).__name__}."
        )
    labels = None
    if labels_key is not None:
        labels = _reference_labels(reference, labels_key)
        labels_added = f"{labels_key}_mapped" if labels_added is None else labels_added
        check_key_added(labels_added)
    genes = pd.Index(reference.get_var_names())
    get_matrix(adata, layer)
    names = unique_gene_names(adata)
    if not genes.isin(names).all():
        raise ValueError(gene_mismatch_message(genes, adata))
    # the reference's genes only (a query's other genes may hold anything), on the user's
    # AnnData: its errors then name where counts sit instead (another layer, .raw)
    check_counts(adata[:, names.get_indexer(genes)], layer)
    # the model trains on its own AnnData: the user's object gets no _scvi_* columns
    query = training_adata(adata, genes, layer=layer, obs_keys=list(adata.obs.columns))
    with _seeded(random_state):
        model = VAE.load_query_data(query, reference)
        model._owns_adata(query)
        kwargs = dict(train_kwargs or {})
        # only the new batches' weights train: weight decay would pull the frozen
        # reference's weights too (scArches' recipe)
        plan = {"weight_decay": 0.0, **kwargs.pop("plan_kwargs", {})}
        t0 = time.perf_counter()
        model.train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            enable_progress_bar=progress_bar,
            plan_kwargs=plan,
            **kwargs,
        )
        train_time = time.perf_counter() - t0
    latent = model.get_latent_representation()
    check_finite(latent)
    setup = reference.registry_["setup_args"]
    info = {
        "params": {
            "batch_key": setup.get("batch_key") or "",
            "layer": layer or "",
            "n_latent": int(latent.shape[1]),
            "n_genes": len(genes),
            "max_epochs": epochs_trained(model),
            "gene_likelihood": str(reference.module.gene_likelihood),
            "random_state": random_state,
            "model": VAE_MODEL,
            "mapped_onto": "reference",
            "labels_key": labels_key or "",
            "n_neighbors": n_neighbors,
        },
        "var_names": np.asarray([str(g) for g in genes], dtype=object),
        **training_summary(model, train_time),
    }
    transferred = None
    if labels is not None:
        transferred = _transfer(reference.get_latent_representation(), labels, latent, n_neighbors)
    # everything computed before the first write: a failure leaves adata as it was
    adata = writable(adata)
    adata.obsm[key_added] = latent
    adata.uns[key_added] = info
    if transferred is not None:
        adata.obs[labels_added] = transferred[0]
        adata.obs[f"{labels_added}_uncertainty"] = transferred[1]
    return model


def _reference_labels(reference: VAE, labels_key: str) -> pd.Series:
    """The reference cells' labels, refused with the fix when the model holds no cells or the
    column is missing or empty."""
    if reference.adata is None:
        raise ValueError(
            "The reference model holds no cells (it was loaded without data), so there are no "
            "labels to transfer. Load it with its reference cells: `VAE.load(folder, "
            "adata=reference[:, genes])`, or leave out labels_key to map only."
        )
    col = check_obs_key(reference.adata, labels_key, arg="labels_key", missing_ok=True)
    if col.notna().sum() == 0:
        raise ValueError(f"reference.adata.obs[{labels_key!r}] holds no label (all missing).")
    return col


def _transfer(
    ref_latent: np.ndarray, labels: pd.Series, latent: np.ndarray, n_neighbors: int
) -> tuple[pd.Categorical, np.ndarray]:
    """Majority label of the nearest labelled reference cells, and 1 - its share of votes."""
    from sklearn.neighbors import KNeighborsClassifier

    known = labels.notna().to_numpy()
    names = labels[known].astype(str).to_numpy()
    knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, int(known.sum())))
    proba = knn.fit(ref_latent[known], names).predict_proba(latent)
    calls = knn.classes_[proba.argmax(axis=1)]
    order = (
        [str(c) for c in labels.cat.categories if str(c) in set(names)]
        if isinstance(labels.dtype, pd.CategoricalDtype)
        else sorted(set(names))
    )
    return pd.Categorical(calls, categories=order), 1.0 - proba.max(axis=1)
