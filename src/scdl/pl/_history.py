"""``scdl.pl.training_history``: ELBO (or loss) per epoch, training and validation."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from ._utils import doc_show_save, finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


#: what a model's history holds: the ELBO (generative models), else the classification loss
#: (:class:`~scdl.models.CellTypeTransformer`); curve names and the y-axis label
_MODEL_CURVES = (
    (("elbo_train", "elbo_validation"), "negative ELBO per cell"),
    (("train_loss", "validation_loss"), "loss (cross-entropy)"),
)


def _label(name: str) -> str:
    """``"train"`` or ``"validation"``, the legend entry of a history curve."""
    return name.replace("elbo_", "").replace("_loss", "")


def _curves(source: Any, key: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    from anndata import AnnData

    if isinstance(source, AnnData):
        info = source.uns.get(key)
        if not isinstance(info, dict) or "history" not in info:
            found = [
                str(k) for k, v in source.uns.items() if isinstance(v, dict) and "history" in v
            ]
            hint = f" Histories are under key={found}." if found else ""
            raise KeyError(
                f"adata.uns[{key!r}]['history'] not found.{hint} Run `scdl.tl.integrate` or "
                f"`scdl.tl.contrastive` with key_added={key!r} first, or pass the trained model."
            )
        h = source.uns[key]["history"]
        if not any(name in h for name in ("elbo_train", "elbo_validation")):
            raise ValueError(
                f"adata.uns[{key!r}]['history'] holds no curves: the training ran with a logger "
                "of your own (train_kwargs={'logger': ...}), which records them instead (e.g. "
                "TensorBoard, W&B, a CSVLogger's metrics.csv). Plot them from there, or train "
                "without logger= to keep them here."
            )
        curves = {
            _label(name): (np.asarray(h[f"{name}_epoch"]), np.asarray(h[name]))
            for name in ("elbo_train", "elbo_validation")
            if name in h
        }
        return curves, _MODEL_CURVES[0][1]
    history = getattr(source, "history", None)
    if isinstance(history, dict):
        for names, ylabel in _MODEL_CURVES:
            if names[0] in history:
                curves = {
                    _label(name): (
                        history[name].index.to_numpy(float),
                        history[name].iloc[:, 0].to_numpy(float),
                    )
                    for name in names
                    if name in history
                }
                return curves, ylabel
    if isinstance(history, dict) and not history and getattr(source, "is_trained_", False):
        # scvi-tools keeps model.history empty when the user passes logger=
        raise ValueError(
            f"This {type(source).__name__}'s history is empty: it was trained with a logger of "
            "your own (logger=...), which records the curves instead (e.g. TensorBoard, W&B, "
            "a CSVLogger's metrics.csv). Plot them from the logger's output."
        )
    if hasattr(source, "history"):  # a model without per-epoch curves
        raise TypeError(
            f"This {type(source).__name__} has no per-epoch training history to plot (a "
            "DrugResponseModel fits its ridges in closed form, not by epochs). Pass an AnnData "
            "processed by scdl.tl.integrate or scdl.tl.contrastive, or a model trained by "
            "epochs."
        )
    raise TypeError(
        "Pass an AnnData processed by scdl.tl.integrate or scdl.tl.contrastive, or a trained "
        "scdl model (one whose history holds an ELBO or a training loss)."
    )


@doc_show_save
def training_history(
    data: Any,
    *,
    key: str = "X_scdl",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | bool | None = None,
    return_fig: bool | None = None,
) -> Figure | None:
    """Plot the training (and validation) ELBO, or loss, per epoch, to check convergence.

    Parameters
    ----------
    data
        AnnData processed by :func:`scdl.tl.integrate` or :func:`scdl.tl.contrastive`
        (reads ``uns[key]["history"]``), or a trained scdl model (reads ``model.history``:
        the ELBO, or the classification loss of a
        :class:`~scdl.models.CellTypeTransformer`). A drug-response model fitted in closed
        form (the default ``prediction="wide"``) has no epochs and is refused.
    key
        ``key_added`` of the integrate (or contrastive) call.
    ax
        Axes to draw on, in a layout of your own (pass ``show=False`` and show the layout
        when it is complete: shown, it is closed); the figure holding it is returned.
    %(show_save)s

    %(returns_figure)s

    Examples
    --------
    >>> import scdl
    >>> adata = scdl.datasets.kang_pbmc()
    >>> model = scdl.tl.integrate(adata, batch_key="sample")
    >>> scdl.pl.training_history(adata)  # or the model: scdl.pl.training_history(model)
    """

    from matplotlib.ticker import MaxNLocator

    curves, ylabel = _curves(data, key)
    own = ax is None
    fig, ax = new_axes(ax, figsize=(5, 3.5))
    for name, (epoch, value) in curves.items():
        marker = "." if len(epoch) < 30 else None
        ax.plot(epoch, value, label=name, marker=marker)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.5 on short runs
    ax.set_ylabel(ylabel)
    ax.set_title("Training history")
    ax.legend(frameon=False)
    if own:
        fig.tight_layout()
    return finish(
        fig, show=show, save=save, return_fig=return_fig, default_name=f"training_history_{key}"
    )
