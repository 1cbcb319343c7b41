"""``scdl.pl.training_history``: ELBO per epoch, training and validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._utils import doc_show_save, finish

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _curves(source: Any, key: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from anndata import AnnData

    if isinstance(source, AnnData):
        if key not in source.uns or "history" not in source.uns[key]:
            raise KeyError(
                f"adata.uns[{key!r}]['history'] not found. Run `scdl.tl.integrate(adata, "
                f"key_added={key!r})` first, or pass the trained model."
            )
        h = source.uns[key]["history"]
        return {
            name: (np.asarray(h[f"{name}_epoch"]), np.asarray(h[name]))
            for name in ("elbo_train", "elbo_validation")
            if name in h
        }
    history = getattr(source, "history", None)
    if not isinstance(history, dict) or "elbo_train" not in history:
        raise TypeError("Pass an AnnData processed by scdl.tl.integrate or a trained scdl model.")
    return {
        name: (history[name].index.to_numpy(float), history[name].iloc[:, 0].to_numpy(float))
        for name in ("elbo_train", "elbo_validation")
        if name in history
    }


@doc_show_save
def training_history(
    data: Any,
    *,
    key: str = "X_scdl",
    show: bool | None = None,
    save: str | bool | None = None,
) -> Figure | None:
    """Plot the training (and validation) ELBO per epoch, to check convergence.

    Parameters
    ----------
    data
        AnnData processed by :func:`scdl.tl.integrate` (reads ``uns[key]["history"]``), or
        a trained scdl model (reads ``model.history``).
    key
        ``key_added`` of the integrate call.
    %(show_save)s

    %(returns_figure)s
    """
    import matplotlib.pyplot as plt

    curves = _curves(data, key)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, (epoch, value) in curves.items():
        marker = "." if len(epoch) < 30 else None
        ax.plot(epoch, value, label=name.replace("elbo_", ""), marker=marker)
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per cell")
    ax.set_title("Training history")
    ax.legend(frameon=False)
    fig.tight_layout()
    return finish(fig, show=show, save=save, default_name=f"training_history_{key}")
