"""``scdl.tl.integration_metrics``: scib-metrics scores for embeddings in ``obsm``."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._neighbors import METRICS_EXACT_NEIGHBORS_MAX_CELLS
from scdl._rng import keeps_rng, python_numpy_env_kept
from scdl._warnings import warn_user
from scdl.data import (
    check_categorical,
    check_embedding,
    check_is_anndata,
    check_key_added,
    check_obsm_key,
    check_writable,
    get_matrix,
    unintegrated_pca,
    writable,
)
from scdl.tl._scib_run import (
    exact_diffusion_neighbors,
    fixed_arpack_start,
    root_logger_left_alone,
    session_objects_frozen,
    sklearn_neighbors,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

# the most neighbours Benchmarker.prepare asks for (its default, for kBET and the LISIs)
_SCIB_NEIGHBORS = 90


@keeps_rng
def integration_metrics(
    adata: AnnData,
    *,
    batch_key: str,
    label_key: str,
    embeddings: Sequence[str] | np.ndarray = ("X_scdl",),
    pre_integrated: str | None = "X_pca",
    layer: str | None = None,
    key_added: str | None = "scdl_integration_metrics",
    n_jobs: int = 1,
) -> pd.DataFrame:
    """Score embeddings for batch correction and biological conservation with scib-metrics.

    Runs :class:`scib_metrics.benchmark.Benchmarker` with its default metrics (isolated
    labels, KMeans NMI/ARI, silhouette, cLISI; BRAS, iLISI, kBET, graph connectivity, PCR
    comparison) and returns unscaled scores, so numbers are comparable across calls.

    Parameters
    ----------
    adata
        Annotated data matrix holding the embeddings in ``obsm``.
    batch_key
        obs column of the batches (at least two).
    label_key
        obs column of the cell types (ground truth).
    embeddings
        obsm keys to score.
    pre_integrated
        obsm key of the unintegrated embedding for the PCR-comparison metric. When it is
        ``None``, or the default ``"X_pca"`` and missing from ``obsm``, a PCA of
        log-normalised counts (:func:`scdl.data.unintegrated_pca`, from raw or
        log-normalised ``X`` or ``layer``) is computed on a temporary copy; another key
        missing from ``obsm`` is an error. PCR comparison credits an embedding for how far
        its batch variance lies below this one's: to score an unintegrated embedding of your
        own (e.g. a PCA with other genes or components), pass it here too, or it is credited
        for differing from scdl's PCA.
    layer
        Layer for that PCA (raw or log-normalised counts).
    key_added
        uns key for the result table; ``None`` to not store it.
    n_jobs
        Parallel jobs for the neighbour search (scikit-learn's exact search up to 50,000
        cells, pynndescent beyond; ``-1``: every core); the metrics themselves run in JAX.

    Returns
    -------
    DataFrame with one row per embedding and a column per metric, plus
    ``Batch correction``, ``Bio conservation`` and ``Total`` (0.4 x batch + 0.6 x bio).
    Also stored in ``adata.uns[key_added]`` unless ``key_added=None``.

    Notes
    -----
    Every score is higher-is-better, in [0, 1] (KMeans ARI can dip just below 0 for an
    embedding no better than chance). ``Batch correction`` and ``Bio conservation``
    are the plain means of their five metrics, as scib-metrics computes them; a metric that is
    NaN (e.g. PCR comparison of an embedding with a constant column) is left out of its mean,
    with a warning. Given the same neighbours, the values equal scib-metrics'
    ``Benchmarker`` run by hand; but scdl searches neighbours exactly (scikit-learn) up to
    50,000 cells where ``Benchmarker`` uses pynndescent's approximate search (for the
    embeddings' neighbours and for kBET's neighbours within each type), and kBET especially
    moves with them, so compare numbers from one tool. The batch metrics credit
    any embedding that mixes batches, a random one too (a random embedding of Kang PBMCs
    scores about 0.84 there): read them beside ``Bio conservation``. Isolated labels scores
    the types found in the fewest batches; one of a single cell scores 0.5 whatever the
    embedding (a warning names such types under 10 cells). iLISI is scaled by the number of
    batches, so a batch of a few cells lowers every cell's score, and a label such as "NA" or
    "unassigned" is scored as a cell type: warnings name both. kBET's diffusion embedding
    starts ARPACK from a fixed vector here, so the same input gives the same kBET (a random
    start, as in a ``Benchmarker`` run by hand, can flip eigenvectors and move it).

    The first call in a Python session takes tens of seconds longer than later ones (JAX's
    import and scib-metrics' compilation); later calls on a few thousand cells take seconds.

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> scdl.tl.integrate(adata, batch_key="sample")
    >>> scdl.tl.integration_metrics(adata, batch_key="sample", label_key="cell_type")
    >>> scdl.pl.integration_metrics(adata)
    """
    check_is_anndata(adata)
    # said here, not by joblib after the baseline PCA and scib-metrics' import
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int | np.integer):
        raise TypeError(f"n_jobs must be a positive integer or -1 (every core), got {n_jobs!r}.")
    if not (n_jobs >= 1 or n_jobs == -1):
        raise ValueError(f"n_jobs must be a positive integer or -1 (every core), got {n_jobs}.")
    if key_added is not None:  # written after the whole benchmark: refused before it
        check_writable(adata)
        check_key_added(key_added)
    if not isinstance(embeddings, str | Iterable):  # e.g. None
        raise TypeError(
            f"embeddings must be an obsm key or a list of them (e.g. ['X_scdl', 'X_pca']), got "
            f"{embeddings!r}."
        )
    embeddings = [embeddings] if isinstance(embeddings, str) else list(embeddings)
    if not embeddings:
        raise ValueError("Pass at least one obsm key in `embeddings`.")
    repeated = [e for i, e in enumerate(embeddings) if e in embeddings[:i]]
    if repeated:  # scib-metrics' results table would fail on it, after every metric ran
        raise ValueError(f"embeddings lists {repeated} more than once; name each key once.")
    if adata.n_obs <= _SCIB_NEIGHBORS:
        raise ValueError(
            f"integration_metrics needs more than {_SCIB_NEIGHBORS} cells (scib-metrics' "
            f"metrics use {_SCIB_NEIGHBORS} neighbours of each cell); got {adata.n_obs}."
        )
    if batch_key is None:  # one-batch data: what a column of one batch is told, at once
        raise ValueError(
            "integration_metrics scores batch correction, which needs a batch_key of two or "
            "more batches; for one batch, score the embeddings' cell types alone, e.g. with "
            "scib_metrics.silhouette_label."
        )
    if batch_key == label_key:
        raise ValueError(
            f"batch_key and label_key are both {batch_key!r}: the metrics score how well batches "
            "mix while cell types stay apart, so they need two columns (e.g. "
            "batch_key='sample', label_key='cell_type')."
        )
    check_categorical(
        adata,
        batch_key,
        arg="batch_key",
        min_categories=2,
        too_few="score the embeddings' cell types alone (there is no batch correction to "
        "score with one batch), e.g. with scib_metrics.silhouette_label.",
    )
    check_categorical(adata, label_key, arg="label_key", min_categories=2)
    batches_per_type = (
        adata.obs[[label_key, batch_key]].astype(str).drop_duplicates()[label_key].value_counts()
    )
    if batches_per_type.max() < 2:
        raise ValueError(
            f"No {label_key!r} type occurs in two {batch_key!r} batches: each type lies in one "
            "batch, so how well batches mix within a type (scib-metrics' batch silhouette) "
            "cannot be scored. Pass a batch_key whose batches share cell types (batch and type "
            "confounded leave nothing for integration to correct)."
        )
    if pre_integrated is not None:
        check_obsm_key(pre_integrated, "pre_integrated")
    computed_pca = pre_integrated is None or (
        pre_integrated == "X_pca" and pre_integrated not in adata.obsm
    )
    if layer is not None and not computed_pca:  # a typo is refused even where it is not read
        get_matrix(adata, layer)
    for key in embeddings + ([] if computed_pca else [pre_integrated]):
        if key == pre_integrated and key not in adata.obsm:
            raise KeyError(
                f"pre_integrated={key!r} is not in adata.obsm (available: {list(adata.obsm)}). "
                "Pass `pre_integrated=None` to score against a PCA computed from the counts."
            )
        check_embedding(adata, key, purpose="scoring")
    # the baseline PCA checks its input: computed before scib-metrics' slow import
    pre = unintegrated_pca(adata, layer=layer) if computed_pca else adata.obsm[pre_integrated]

    import anndata

    with python_numpy_env_kept():  # the first import of jax draws from numpy's global state
        from scib_metrics.benchmark import Benchmarker  # slow to import: after the checks

    # a light copy: Benchmarker writes into the AnnData it is given
    obs = adata.obs[[batch_key, label_key]].copy()
    for col in obs:
        obs[col] = obs[col].astype(str).astype("category")
    tmp = anndata.AnnData(obs=obs)
    for key in embeddings:
        # a copy: scib-metrics' KMeans centres its input in place, and an embedding already
        # float32 would otherwise be the user's own array
        tmp.obsm[key] = np.array(adata.obsm[key], dtype=np.float32, copy=True)
    pre_key = "_pre"
    while pre_key in embeddings:  # a user's own obsm key of that name is scored as given
        pre_key = f"_{pre_key}"
    tmp.obsm[pre_key] = np.array(pre, dtype=np.float32, copy=True)

    bm = Benchmarker(
        tmp,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=embeddings,
        pre_integrated_embedding_obsm_key=pre_key,
        n_jobs=n_jobs,
        progress_bar=False,
    )
    exact = partial(sklearn_neighbors, n_jobs=n_jobs)
    small = adata.n_obs <= METRICS_EXACT_NEIGHBORS_MAX_CELLS
    bm.prepare(neighbor_computer=exact if small else None)
    with (
        root_logger_left_alone(),
        fixed_arpack_start(),
        exact_diffusion_neighbors(),
        session_objects_frozen(),
    ):
        bm.benchmark()
    res = bm.get_results(min_max_scale=False)
    res = res.drop(index="Metric Type", errors="ignore").astype(float)
    res.index.name = "embedding"
    _warn_of_weak_scores(res, obs, batch_key, label_key)
    if key_added is not None:
        writable(adata).uns[key_added] = res.copy()  # the caller may edit what it gets
    return res


#: isolated types with fewer cells than this are named in a warning (a guard, chosen on no
#: benchmark: a single cell scores 0.5 whatever the embedding); batches too (iLISI is scaled
#: by the number of batches, each of a few cells counting as one)
_FEW_CELLS = 10
#: label values that mark cells without a cell type (scored as a type of their own)
_NO_LABEL = frozenset(
    {"", "na", "n/a", "nan", "none", "null", "unknown", "unassigned", "unlabelled", "unlabeled"}
)


def _warn_of_weak_scores(res: pd.DataFrame, obs: pd.DataFrame, batch_key, label_key) -> None:
    """Say where a total rests on fewer metrics (a NaN left out of its mean) or where isolated
    labels scores a type of a few cells."""
    totals = {"Batch correction", "Bio conservation", "Total"}
    for embedding, row in res.iterrows():
        nan = [c for c in res.columns if c not in totals and np.isnan(row[c])]
        if nan:
            warn_user(
                f"{nan} is NaN for {embedding!r} (e.g. PCR comparison with a constant column), "
                "so its totals average the other metrics and are not comparable with other "
                "embeddings'.",
                UserWarning,
            )
    n_batches = obs.drop_duplicates()[label_key].value_counts()
    isolated = n_batches.index[n_batches == n_batches.min()]
    sizes = obs[label_key].value_counts()
    few = [f"{t} ({sizes[t]} cells)" for t in isolated if sizes[t] < _FEW_CELLS]
    if few:
        warn_user(
            f"Isolated labels scores the {label_key!r} types found in the fewest batches, "
            f"among them {', '.join(few)}: a type of a few cells scores near 0.5 whatever the "
            "embedding. Merge or drop such types to score the isolated types that matter.",
            UserWarning,
        )
    batches = obs[batch_key].value_counts()
    small = batches[batches < _FEW_CELLS]
    if len(small):
        names = [str(b) for b in small.index]
        listed = ", ".join(f"{b} ({n} cells)" for b, n in small.items())
        warn_user(
            f"{batch_key!r} holds batches of a few cells ({listed}): "
            f"iLISI is scaled by the number of batches ({len(batches)}), each counting as one, "
            "so they lower every cell's score. Merge or drop them first, e.g. "
            f"`adata = adata[~adata.obs[{batch_key!r}].astype(str).isin({names})].copy()`.",
            UserWarning,
        )
    unlabelled = [t for t in sizes.index if str(t).strip().lower() in _NO_LABEL]
    if unlabelled:
        drop = [str(t) for t in unlabelled]
        warn_user(
            f"{label_key!r} has {', '.join(f'{t!r} ({sizes[t]} cells)' for t in unlabelled)}, "
            "scored as a cell type of its own (the bio-conservation metrics and kBET move "
            "with it). If it marks cells without a label, drop them first, e.g. "
            f"`adata = adata[~adata.obs[{label_key!r}].astype(str).isin({drop})].copy()`.",
            UserWarning,
        )
