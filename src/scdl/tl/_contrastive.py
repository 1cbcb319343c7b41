"""``scdl.tl.contrastive``: what is specific to target cells, written into AnnData."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl._rng import keeps_rng
from scdl._warnings import warn_user
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
    resolve_groups,
    warn_other_features,
    writable,
)

from ._hvg import select_genes
from ._train import check_finite, epochs_trained, train_model, training_summary
from ._training_data import training_adata

#: the top salient gene's mean |log2 fold change| below which the salient space is read as
#: possibly noise. Random halves of one population as target and background, 10 epochs and the
#: default, two seeds each: CellBench 2 batches 0.24-0.59, CellBench 3 plates 0.24-0.47, PBMC
#: 7k 0.001-0.08, Kang 1.5k control cells 0.05-0.36; Kang stimulated vs control 2.0 (10
#: epochs) to 5.5 (a guard in that gap, not a tuned value)
MIN_SHIFT_LOG2FC = 1.0
#: a salient dimension whose posterior means vary less than this over the target cells is
#: unused (the prior's sd is 1): with a top gene past MIN_SHIFT_LOG2FC, the target's own
#: signal is a shift all its cells share (Kang stimulated vs control: 0.22-0.88)
MIN_SALIENT_SD = 0.1

if TYPE_CHECKING:
    from anndata import AnnData

    from scdl.models import ContrastiveVAE


@keeps_rng
def contrastive(
    adata: AnnData,
    *,
    groupby: str,
    background,
    target=None,
    layer: str | None = None,
    batch_key: str | None = None,
    key_added: str = "X_scdl_salient",
    shared_key: str | None = None,
    n_top_genes: int | None = 2000,
    max_epochs: int | None = None,
    batch_size: int = 128,
    accelerator: str = "auto",
    devices: int | list[int] | str = "auto",
    random_state: int | None = 0,
    progress_bar: bool = True,
    model_kwargs: dict | None = None,
    train_kwargs: dict | None = None,
) -> ContrastiveVAE:
    """Separate the variation specific to target cells from what they share with a background.

    Trains :class:`scdl.models.ContrastiveVAE` (contrastiveVI's model) on expressed, highly
    variable genes of the raw counts: background cells (e.g. control) get a shared latent
    code only, target cells (e.g. stimulated, diseased) a shared and a salient one. The
    shared space holds what both groups show (cell types); the salient space what only the
    target cells show (e.g. an interferon response), and the genes it explains are ranked.
    A warning says when no gene's change through the salient space reaches 2-fold (target and
    background alike: the ranked genes may be sampling noise), or when the salient codes
    collapse to one value over the target cells (a shift every target cell shares).

    By default a penalty keeps the salient code independent of the shared one
    (``independence_weight`` of :class:`~scdl.models.ContrastiveVAE`), so the salient space
    is blind to cell type by design: a response stronger in one type (CCL8 in stimulated
    monocytes) is still decoded and ranked, but the salient space does not show which types
    respond more. Where that matters, pass ``model_kwargs={"independence_weight": 0}``: the
    salient space then follows the cell types' responses (and the types).

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` or ``layer``.
    groupby
        obs column naming each cell's group (e.g. ``"condition"``).
    background
        Value (or list of values) of ``groupby`` marking background cells (e.g. ``"ctrl"``).
    target
        Value(s) of ``groupby`` marking target cells; ``None``: every non-background cell.
        Cells in neither group (with ``target`` given, cells without a ``groupby`` value
        too) are not trained on and get a zero salient code.
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    batch_key
        obs column of a technical batch (e.g. donor) to condition on; not one nested in
        ``groupby`` (such as a sample column ``ctrl1, stim1, ...``), which would absorb the
        target-specific signal.
    key_added
        obsm key of the salient space and uns key of the summary.
    shared_key
        obsm key of the shared space. ``None``: ``"X_scdl_shared"`` with the default
        ``key_added``, else ``f"{key_added}_shared"``, so that a second run under another
        ``key_added`` keeps the first run's shared space. A key that is another call's salient
        or shared space is refused; a rerun under the same ``key_added`` with another
        ``shared_key`` removes its earlier shared space.
    n_top_genes
        Highly variable genes to train on (seurat_v3 on counts); ``None`` uses all expressed
        genes.
    max_epochs
        Training epochs; ``None`` chooses from the number of cells.
    batch_size
        Cells per minibatch.
    accelerator, devices
        Passed to Lightning. These three may also come in ``train_kwargs`` (an argument left
        at its default defers to it; set both ways, a ``TypeError``).
    random_state
        Seed for weights, data order and sampling; the same seed gives the same result on CPU.
        ``None``: not seeded (each run differs).
    progress_bar
        Show Lightning's progress bar.
    model_kwargs, train_kwargs
        Further arguments for :class:`scdl.models.ContrastiveVAE` (e.g. ``n_salient_latent``,
        ``independence_weight``) and its :meth:`~scdl.models.ContrastiveVAE.train`
        (e.g. ``early_stopping``, ``lr``).

    Returns
    -------
    scdl.models.ContrastiveVAE
        The trained model, attached to an internal AnnData of the selected genes
        (``model.adata``); save it with ``model.save(dir)``.

    ``adata`` gains

    ``adata.obsm[key_added]``
        Salient representation (posterior means), cells x ``n_salient_latent``; rows of
        non-target cells are zero.
    ``adata.obsm[shared_key]``
        Shared representation (posterior means), cells x ``n_shared_latent``.
    ``adata.uns[key_added]``
        ``params`` (``groupby``, ``background``, ``target`` (empty: every cell not in the
        background), ``layer``, ``batch_key``,
        ``shared_key``, ``n_background``, ``n_target``, ``n_genes``, ``n_shared_latent``,
        ``n_salient_latent``, ``max_epochs`` (the epochs run), ``random_state``, ``model``),
        ``var_names`` (genes used; duplicated names suffixed as ``var_names_make_unique``
        does), ``salient_genes`` (DataFrame of every gene ranked by
        :meth:`~scdl.models.ContrastiveVAE.get_salient_genes`: ``gene``, ``score``,
        ``lfc_mean``, ``mean_with_salient``, ``mean_without_salient``, ``mean_observed``,
        ``mean_background``, ``fits_data``), ``history``
        (per-epoch ``elbo_train``, ``elbo_validation`` (when cells are held out),
        ``reconstruction_loss_train`` and ``kl_local_train``, each with its ``<name>_epoch``
        array; empty when ``train_kwargs`` passes a ``logger``, which records them instead)
        and ``train_time_s``.

    Raises
    ------
    KeyError
        ``groupby``, ``batch_key`` or ``layer`` does not exist.
    ValueError
        A ``background``/``target`` value is not in ``adata.obs[groupby]`` (the message lists
        the values present); no target or no background cells; a value both background and
        target; the matrix is not raw counts; ``key_added`` or ``shared_key`` is the salient
        or shared space of another call. ``adata`` is left unchanged.

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> model = scdl.tl.contrastive(adata, groupby="condition", background="ctrl")
    >>> adata.uns["X_scdl_salient"]["salient_genes"].head(10)
    >>> scdl.pl.contrastive(adata, color=["cell_type", "condition"])
    """
    from scdl.models import ContrastiveVAE

    if shared_key is None:
        shared_key = "X_scdl_shared" if key_added == "X_scdl_salient" else f"{key_added}_shared"
    # validate everything before touching adata, so a failing call leaves it unchanged
    check_random_state(random_state)
    bg, tg, summary = _check_inputs(
        adata, groupby, background, target, layer, batch_key, key_added, shared_key, n_top_genes
    )
    genes = select_genes(
        adata,
        summary.gene_totals,
        layer=layer,
        batch_key=batch_key,
        n_top_genes=n_top_genes,
    )

    # the model trains on its own small AnnData: the user's object gets no _scvi_* columns
    cols = [groupby] + ([batch_key] if batch_key is not None and batch_key != groupby else [])
    train_adata = training_adata(adata, genes, layer=layer, obs_keys=cols)

    model, train_time = train_model(
        ContrastiveVAE,
        train_adata,
        random_state=random_state,
        setup_kwargs={"batch_key": batch_key},
        model_kwargs=model_kwargs or {},
        # dict(): a key given twice is a TypeError, as in a call
        train_kwargs=dict(
            groupby=groupby,
            background=background,
            target=target,
            max_epochs=max_epochs,
            enable_progress_bar=progress_bar,
            **_training_options(
                train_kwargs, batch_size=batch_size, accelerator=accelerator, devices=devices
            ),
        ),
    )
    shared = model.get_latent_representation(representation="shared")
    salient = model.get_latent_representation(representation="salient")
    check_finite(shared, salient)
    genes_table = model.get_salient_genes(n_top=None)
    genes_table["gene"] = genes_table["gene"].astype(str)  # integer names: no h5ad write
    _warn_if_salient_collapsed(salient[tg], genes_table, epochs_trained(model))

    params = {
        "groupby": groupby,
        "background": np.asarray(np.atleast_1d(background)).astype(str),
        "target": np.asarray(np.atleast_1d(target) if target is not None else []).astype(str),
        "layer": layer or "",
        "batch_key": batch_key or "",
        "shared_key": shared_key,
        "n_background": int(bg.size),
        "n_target": int(tg.size),
    }
    # everything read from the model before the first write: a failure leaves adata as it was
    info = {
        "params": {**params, **_model_params(model, len(genes), shared, salient, random_state)},
        # as text: integer gene names (a matrix read without names) made the file unwritable
        "var_names": np.asarray([str(g) for g in genes], dtype=object),
        "salient_genes": genes_table,
        **training_summary(model, train_time),
    }
    adata = writable(adata)
    _drop_previous_shared(adata, key_added, shared_key)
    adata.obsm[key_added] = salient
    adata.obsm[shared_key] = shared
    adata.uns[key_added] = info
    return model


def _warn_if_salient_collapsed(salient, genes_table, epochs: int) -> None:
    """Say when the salient space may hold noise (no gene's change through it reaches
    ``2 ** MIN_SHIFT_LOG2FC``-fold, as for random halves of one population on every set
    measured; the salient codes need not collapse there; a modest real effect scores there
    too: 30 genes raised 1.5-2-fold in every target cell scored 0.6-1.0 log2 and were still
    ranked above Wilcoxon's list), or when its codes hardly vary over
    the target cells while its genes are real (a shift every target cell shares: the salient
    UMAP then spreads noise)."""
    top = genes_table.iloc[0] if len(genes_table) else None
    size = float(top["score"]) if top is not None else 0.0
    spread = float(salient.std(0).max()) if len(salient) else 0.0
    if size < MIN_SHIFT_LOG2FC:
        warn_user(
            f"No gene's change through the salient space reaches {2**MIN_SHIFT_LOG2FC:g}-fold "
            f"(the largest: {top['gene'] if top is not None else 'none'}, {size:.2f} log2-fold; "
            f"{epochs} epochs). Random halves of one population reach up to about 0.6 "
            "log2-fold, so the salient genes and space may be sampling noise, or a modest real "
            "effect (a 1.5-2-fold change of a set of genes scores 0.6-1.0 and can still be "
            "ranked right). Compare the groups with `sc.tl.rank_genes_groups`, check that "
            "`groupby` marks a real condition, or train longer.",
            UserWarning,
        )
    elif spread < MIN_SALIENT_SD:
        warn_user(
            f"The salient space holds almost no variation among the target cells (the largest "
            f"sd of a salient dimension over them is {spread:.3g}, under {MIN_SALIENT_SD}): "
            "the target differs from the background by one shift all its cells share. The "
            f"salient genes rank that shift ({top['gene']}: {size:.2f} log2-fold); the salient "
            "UMAP spreads noise.",
            UserWarning,
        )


def _check_inputs(
    adata, groupby, background, target, layer, batch_key, key_added, shared_key, n_top_genes
):
    """The background and target cells and the count summary; every input checked."""
    check_is_anndata(adata)
    check_not_empty(adata)
    check_writable(adata)
    warn_other_features(adata)
    check_key_added(key_added)
    check_key_added(shared_key)
    if key_added == shared_key:
        raise ValueError(
            f"key_added and shared_key are both {key_added!r}: the shared space would overwrite "
            "the salient one. Pass two different obsm keys."
        )
    _check_other_runs(adata, key_added, shared_key)
    check_positive_int(n_top_genes, "n_top_genes", none="all expressed genes")
    if groupby is None:  # resolve_groups' message would offer ContrastiveVAE's indices
        raise ValueError(
            "Say which cells are the background: pass groupby= (the obs column) and "
            "background= (its value or values for the background cells), e.g. "
            "`scdl.tl.contrastive(adata, groupby='condition', background='control')`."
        )
    bg, tg, _ = resolve_groups(adata, groupby=groupby, background=background, target=target)
    get_matrix(adata, layer)
    check_unique_var_names(adata, warn=True)  # genes are not matched by name here
    if batch_key is not None:  # one category is valid: ContrastiveVAE.setup_anndata says so
        check_categorical(adata, batch_key, arg="batch_key")
    summary = check_counts(adata, layer, warn_zero_cells=False)  # said for the genes used
    if summary.n_zero_genes == adata.n_vars:
        raise ValueError("No gene has counts; nothing to analyse.")
    return bg, tg, summary


def _contrastive_runs(adata) -> dict[str, str]:
    """The salient key -> shared key of every earlier ``tl.contrastive`` call on ``adata``."""
    runs = {}
    for k, info in adata.uns.items():
        params = info.get("params") if isinstance(info, dict) else None
        if isinstance(params, dict) and params.get("model") == "scdl.models.ContrastiveVAE":
            runs[str(k)] = str(params.get("shared_key", ""))
    return runs


def _check_other_runs(adata, key_added: str, shared_key: str) -> None:
    """Refuse keys that would overwrite another call's salient or shared space (a derived
    ``shared_key``, e.g. ``key_added="X_scdl"`` -> ``"X_scdl_shared"``, can be the default
    call's)."""
    for salient, shared in _contrastive_runs(adata).items():
        if salient == key_added:
            continue  # a rerun under the same key replaces that call's results
        for key, name in ((shared_key, "shared_key"), (key_added, "key_added")):
            if key in (salient, shared):
                raise ValueError(
                    f"{name}={key!r} would overwrite adata.obsm[{key!r}], the "
                    f"{'salient' if key == salient else 'shared'} space of the tl.contrastive "
                    f"call under key_added={salient!r}; choose another key (or pass "
                    "shared_key=...)."
                )


def _drop_previous_shared(adata, key_added: str, shared_key: str) -> None:
    """A rerun under ``key_added`` with another ``shared_key`` removes the first run's shared
    space (nothing would record which run it came from), and the UMAP ``pl.contrastive``
    cached from it."""
    old = _contrastive_runs(adata).get(key_added)
    if old and old != shared_key:
        for field in (adata.obsm, adata.uns):
            field.pop(f"{old}_umap", None)
        if old in adata.obsm:
            del adata.obsm[old]


def _model_params(model, n_genes: int, shared, salient, random_state: int) -> dict:
    """The trained model's sizes and schedule, as ``uns[key_added]["params"]`` records them."""
    return {
        "n_genes": n_genes,
        "n_shared_latent": shared.shape[1],
        "n_salient_latent": salient.shape[1],
        "max_epochs": epochs_trained(model),
        "random_state": random_state,
        "model": "scdl.models.ContrastiveVAE",
    }


#: the training options tl.contrastive takes as arguments, with their defaults
_OPTION_DEFAULTS = {"batch_size": 128, "accelerator": "auto", "devices": "auto"}


def _training_options(train_kwargs: dict | None, **given) -> dict:
    """``train_kwargs`` with the arguments ``given`` added: one left at its default defers to
    ``train_kwargs`` (where these options went before they were arguments); one set both
    ways is a ``TypeError``, as a keyword given twice in a call."""
    out = dict(train_kwargs or {})
    for name, value in given.items():
        if name not in out:
            out[name] = value
        elif value != _OPTION_DEFAULTS[name]:
            raise TypeError(
                f"{name} is given both as an argument ({value!r}) and in train_kwargs "
                f"({out[name]!r}); pass it once."
            )
    return out
