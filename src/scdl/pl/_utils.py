"""Show/save handling shared by every plotting function, following scanpy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def finish(fig: Figure, *, show: bool | None, save: str | bool | None, default_name: str):
    """Save and/or show ``fig``; return it unless it was shown (scanpy's convention).

    ``save=True`` writes ``{scanpy.settings.figdir}/{default_name}.png``; a string is a path
    (``.png`` added when it has no suffix).
    """
    import matplotlib.pyplot as plt

    if save:
        if save is True:
            import scanpy as sc

            path = Path(sc.settings.figdir) / f"{default_name}.png"
        else:
            path = Path(save)
            if not path.suffix:
                path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    if show is None:
        import scanpy as sc

        show = bool(sc.settings.autoshow) and not save
    if show:
        plt.show()
        return None
    return fig
