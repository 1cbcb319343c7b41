"""Checks of model arguments shared across scdl's models: the ``registry`` every model takes
second (as scvi-tools' models do), and ``annotate_cells``' switches."""

from __future__ import annotations

import numpy as np


def check_registry(registry, model: str, *, second: str = "") -> None:
    """``registry`` (a model's second positional argument, as in scvi-tools) must be a saved
    registry dict or ``None``: anything else passed there (another AnnData, a number meant as
    an option) was silently ignored. ``second`` names where a second AnnData belongs."""
    from anndata import AnnData

    if registry is None or isinstance(registry, dict):
        return
    if isinstance(registry, AnnData) and second:
        fix = f"pass it as `{second}=`"
    else:
        fix = f"options are keyword arguments, e.g. `{model}(adata, n_latent=20)`"
    raise TypeError(
        f"{model}'s second argument is `registry` (a saved registry, as `load` passes it), got "
        f"{type(registry).__name__}: {fix}."
    )


def check_switches(over_clustering, unknown_call) -> tuple[bool, bool]:
    """``annotate_cells``' two switches. Its ``over_clustering`` is True or False where
    :func:`scdl.tl.annotate`'s option of that name takes the clusters: a column name was read
    as True (its own Leiden clusters, silently), an array failed in numpy."""
    from scdl.data import check_bool

    if over_clustering is None:  # as no over-clustering
        over_clustering = False
    if not isinstance(over_clustering, bool | np.bool_):
        raise TypeError(
            "over_clustering of annotate_cells is True or False (over-cluster the query for "
            f"majority voting), got {type(over_clustering).__name__}. To vote over clusters of "
            "your own, pass them to `scdl.tl.annotate(adata, model=..., majority_voting=True, "
            "over_clustering=...)`."
        )
    # on by default: None is no "off"
    return bool(over_clustering), check_bool(unknown_call, "unknown_call")
