"""Checks of :class:`~scdl.models.DrugResponseModel`'s arguments, made before anything is
built or trained, so a wrong value is named instead of failing inside torch or a prediction."""

from __future__ import annotations

import re
import warnings

import numpy as np

from scdl._warnings import warn_user
from scdl.data import (
    check_counts,
    check_fraction,
    check_non_negative,
    check_positive_int,
    check_positive_number,
    check_unique_var_names,
    input_kind,
)


def check_model_args(adata, target, target_layer, input_scale, prediction: str) -> None:
    """Refuse bad model arguments before anything is built; the target cells' values are read
    as counts only where the network aligns to them (``prediction="wide"`` reads their genes
    and which are detected, so log1p of normalised counts does there too)."""
    if input_scale not in ("zscore", "rank"):
        raise ValueError(f"input_scale={input_scale!r} is not one of 'zscore', 'rank'.")
    if target is not None and adata is None:
        raise ValueError("`target` needs the bulk `adata` the model is trained on.")
    if target is not None:
        from anndata import AnnData

        if not isinstance(target, AnnData):
            raise TypeError(
                f"target is a {type(target).__name__}; pass the cells as an AnnData of counts "
                "(cells x genes), e.g. `anndata.AnnData(X)`."
            )
        try:
            check_unique_var_names(target)
            if prediction == "wide":
                with warnings.catch_warnings():  # said below, naming the target
                    warnings.filterwarnings("ignore", message=".*not raw counts but log1p")
                    kind, _ = input_kind(target, target_layer)  # refuses anything else
                if kind == "log1p":
                    warn_user(
                        "target holds log1p of normalised counts, not counts: "
                        "prediction='wide' reads only its genes and which are detected, the "
                        "same in both. The deep paths need the counts.",
                        UserWarning,
                    )
            else:
                check_counts(target, target_layer)
        except (ValueError, TypeError, KeyError) as e:
            # the check speaks of `adata` and `layer=`; here they are `target`, `target_layer=`
            text = str(e.args[0]) if e.args else str(e)
            text = re.sub(r"\badata\b", "target", text)
            text = re.sub(r"`layer=", "`target_layer=", text)
            raise type(e)(text) from e


def check_sizes(n_top_genes, smooth_neighbors, match_neighbors, ridge_alpha) -> None:
    """Numbers the model stores and uses later (a bad one would fail every prediction)."""
    check_positive_int(n_top_genes, "n_top_genes", none="every gene bulk and cells share")
    for name, value in (
        ("smooth_neighbors", smooth_neighbors),
        ("match_neighbors", match_neighbors),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name} must be an integer >= 0 (0: none), got {value!r}.")
        if value < 0:
            raise ValueError(f"{name} must be an integer >= 0 (0: none), got {value!r}.")
    if ridge_alpha is not None:
        alphas = list(np.atleast_1d(np.asarray(ridge_alpha, dtype=object)))
        meaning = "or a sequence of them, chosen per drug by cross-validation; None: no ridge"
        for a in alphas or [None]:
            check_positive_number(a, "ridge_alpha", meaning=meaning)


def check_network(n_hidden, n_latent, dropout_rate, input_noise, mmd_weight) -> None:
    """The network's settings, refused by name before anything is built (torch's errors do not
    name them, and a zero or negative value would otherwise train a constant or silently mean
    "off")."""
    check_positive_int(n_hidden, "n_hidden")
    check_positive_int(n_latent, "n_latent")
    check_fraction(dropout_rate, "dropout_rate", meaning="the encoder's dropout", below_one=True)
    check_non_negative(input_noise, "input_noise", meaning="sd of the training noise; 0: none")
    check_non_negative(mmd_weight, "mmd_weight", meaning="0 turns the alignment off")


def resolve_prediction(prediction, ridge_alpha) -> str:
    """``prediction`` given ``ridge_alpha``: ``None`` means the ridge alone, or the network
    alone without a ridge; a path that needs the ridge is refused without one."""
    if prediction is None:
        return "deep" if ridge_alpha is None else "wide"
    if prediction not in ("wide", "wide_deep", "deep"):
        raise ValueError(
            f"prediction={prediction!r} is not one of 'wide', 'wide_deep', 'deep' (or None)."
        )
    if ridge_alpha is None and prediction != "deep":
        raise ValueError(
            f"prediction={prediction!r} needs the ridges, which ridge_alpha=None drops: pass "
            "a ridge_alpha (e.g. 3162.0, the default), or prediction='deep' for the network "
            "alone."
        )
    return prediction


def warn_unused_training_options(train, **given) -> None:
    """The wide path fits its ridges in closed form: say which options it did not use (those
    given other than their defaults, and any further keyword, a typo included)."""
    import inspect

    params = inspect.signature(train).parameters
    given.pop("enable_progress_bar", None)  # nothing to show either way
    unused = [
        name for name, value in given.items() if name not in params or value != params[name].default
    ]
    if unused:
        warn_user(
            f"prediction='wide' fits the ridges in closed form on every line: {unused} "
            "did nothing. They train the network of prediction='deep' or 'wide_deep'.",
            UserWarning,
        )
