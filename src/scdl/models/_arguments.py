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


def check_annotator_plan(plan_kwargs: dict | None, labels: list) -> dict:
    """The annotator's documented plan options, checked by name before anything is fitted
    (torch refused them after the linear head, or took a label smoothing of 1: uniform
    targets); ``class_weights`` as a float tensor over the model's ``labels``, in order."""
    import torch

    from scdl.data import check_fraction, check_non_negative

    plan = dict(plan_kwargs or {})
    if "label_smoothing" in plan:
        check_fraction(
            plan["label_smoothing"], "label_smoothing", below_one=True,
            meaning="the share of each target spread over the other types",
        )  # fmt: skip
    if "weight_decay" in plan:
        check_non_negative(plan["weight_decay"], "weight_decay", meaning="AdamW's decay")
    if plan.get("class_weights") is not None:
        given = plan["class_weights"]
        try:
            if isinstance(given, torch.Tensor):  # a GPU or grad-tracking tensor too
                given = given.detach().cpu().double().numpy()
            weights = torch.as_tensor(np.asarray(given, dtype=np.float64), dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            weights = None
        if (
            weights is None
            or weights.shape != (len(labels),)
            or not torch.isfinite(weights).all()
            or (weights < 0).any()
            or not (weights > 0).any()
        ):
            raise ValueError(
                f"class_weights must hold {len(labels)} finite numbers >= 0, not all 0, one "
                f"per cell type in the model's order ({list(labels)[:10]}); got {given!r}."
            )
        plan["class_weights"] = weights
    return plan
