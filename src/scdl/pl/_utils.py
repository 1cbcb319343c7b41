"""What every plotting function shares: show/save (scanpy's settings), the shared
parameter text of their docstrings, and the UMAPs they cache in ``obsm``."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from docrep import DocstringProcessor

from scdl._neighbors import knn_transformer
from scdl._paths import user_path
from scdl._rng import F, keeps_torch_threads
from scdl._warnings import scanpy_scratch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData
    from matplotlib.figure import Figure

#: docstring text shared by every plotting function (docrep, as scvi-tools writes it)
plot_dsp = DocstringProcessor(
    show_save=(
        "show, save\n"
        "    Show the figure (``None``: scanpy's ``settings.autoshow``, on by default; a saved\n"
        "    figure is shown, then closed, as in scanpy, unless ``show=False``), and/or\n"
        "    save it: ``True`` writes ``{scanpy.settings.figdir}/<name>.<format>`` (scanpy's\n"
        "    ``settings.file_format_figs``); a string starting with ``_`` or a format is\n"
        '    scanpy\'s suffix (``save="_ctrl"`` writes ``{figdir}/<name>_ctrl.<format>``,\n'
        '    ``save=".pdf"`` ``{figdir}/<name>.pdf``); any other string or path is the file\'s\n'
        "    path, ``.png`` added when it has no suffix. ``save=None``: scanpy's\n"
        "    ``settings.autosave`` (saved as with ``True`` when it is set).\n"
        "return_fig\n"
        "    As in scanpy: ``True`` returns the Figure, not shown (``show=False``)."
    ),
    returns_figure=(
        "Returns\n-------\nThe Figure, unless it was shown or saved and closed. In a notebook,\n"
        "assign it (``fig = ...``) or end the line with ``;``: a Figure left as a cell's\n"
        "value is drawn a second time."
    ),
)


def color_keys(color) -> list:
    """``color`` as a list of keys (``None`` entries kept: scanpy's "no colour"); a key that is
    not a string (e.g. ``color=5``) is a ``TypeError`` naming the fix."""
    if color is None:
        return []
    if isinstance(color, str):
        return [color]
    if not (hasattr(color, "__iter__") and all(c is None or isinstance(c, str) for c in color)):
        raise TypeError(
            f"color must be an obs column or gene name, or a list of them, got {color!r} "
            "(a number as a name: pass it as a string, e.g. color='5')."
        )
    return list(color)


def doc_show_save(func: F) -> F:
    """Fill ``%(show_save)s`` and ``%(returns_figure)s`` in ``func``'s docstring."""
    return plot_dsp.dedent(func)


def response_wording(info) -> tuple[str, bool]:
    """A drug response's name for an axis and whether higher means more sensitive, from the
    ``response_key`` / ``sensitive`` a drug model wrote (``uns[key]["params"]`` or an
    attribution table's ``attrs``). Results written before those fields existed, or that
    lost them, came from the default response, ln IC50."""
    name = str(info.get("response_key", "ln_ic50"))
    return ("ln IC50" if name == "ln_ic50" else name), info.get("sensitive") == "high"


def new_axes(ax, figsize: tuple[float, float]):
    """The figure and axes to draw one panel on: the user's ``ax``, or a new figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        return plt.subplots(figsize=figsize)
    fig, (one,) = panel_axes(ax, 1)  # an array of Axes is refused by name
    return fig, one


#: distinct numbers a ``groupby`` column may hold as group codes: more is a per-cell
#: measurement (a figure row or violin per value), refused as scanpy's violin refuses it
MAX_NUMERIC_GROUPS = 50


def panel_axes(ax, n_panels: int, figsize: tuple[float, float] | None = None) -> tuple:
    """The figure and ``n_panels`` axes in a row to draw on: the user's ``ax`` (one Axes for
    one panel, or a sequence of ``n_panels`` Axes), or a new figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, axes = plt.subplots(1, n_panels, figsize=figsize, squeeze=False)
        return fig, list(axes.ravel())
    # a grid of Axes (``plt.subplots(2, 2)``) in row order, as a flat sequence
    axes = [ax] if hasattr(ax, "figure") else list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n_panels or not all(hasattr(a, "figure") for a in axes):
        raise ValueError(
            f"This plot draws {n_panels} panel(s): pass `ax` as "
            + ("one matplotlib Axes." if n_panels == 1 else f"a sequence of {n_panels} Axes.")
        )
    return axes[0].figure, axes


#: scanpy's figure formats, read off the end of ``save``
_FORMATS = (".svg", ".pdf", ".png")
#: a ``save`` string starting with one of these is scanpy's suffix to the plot's name
_SUFFIXES = ("_", *_FORMATS)


def finish(
    fig: Figure,
    *,
    show: bool | None,
    save: str | os.PathLike | bool | None,
    default_name: str,
    return_fig: bool | None = None,
):
    """Save and/or show ``fig``; return it unless it was shown, or saved with ``show=None``
    (shown first when scanpy's ``autoshow`` is on, then closed, as scanpy does).

    ``save=True`` writes ``{scanpy.settings.figdir}/{default_name}.{file_format_figs}``; a
    string starting with ``_`` or one of scanpy's formats (``.pdf``, ``.png``, ``.svg``), with
    no folder, is a suffix to ``default_name`` there, with its format when it ends in one of
    them, as in scanpy (``save=".pdf"``: ``{figdir}/{default_name}.pdf``); any other string
    or path is a path (``.png`` added when it has no suffix).
    """
    import matplotlib.pyplot as plt

    if save is None:  # as scanpy: sc.settings.autosave saves every figure under its name
        import scanpy as sc

        save = bool(sc.settings.autosave)
    if save:
        scanpy_suffix = isinstance(save, str) and "/" not in save and save.startswith(_SUFFIXES)
        if isinstance(save, bool | np.bool_) or scanpy_suffix:  # np.bool_ is no path
            import scanpy as sc

            fmt = str(sc.settings.file_format_figs or "png").lstrip(".")
            suffix = save if scanpy_suffix else ""
            for ext in _FORMATS:
                if suffix.endswith(ext):
                    suffix, fmt = suffix.removesuffix(ext), ext[1:]
                    break
            path = Path(sc.settings.figdir) / f"{default_name}{suffix}.{fmt}"
        else:
            path = user_path(save)  # "~/figs/x.png" made a folder named "~"
            if not path.suffix:
                path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        # the user's savefig.dpi (sc.set_figure_params(dpi_save=...)) when set, else 150
        dpi = 150 if plt.rcParams["savefig.dpi"] == "figure" else None
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if return_fig:  # scanpy's option: the figure, not shown
        show = False
    if show is False:  # the caller draws on: kept open, saved or not
        return fig
    import scanpy as sc

    # as scanpy's savefig_or_show: shown when autoshow is on (a notebook shows a saved
    # figure too: closing it unshown left the cell without a figure), then closed if saved
    if show or sc.settings.autoshow:
        plt.show()
    elif not save:
        return fig
    if save:
        plt.close(fig)
    return None


def check_scanpy_options(adata: AnnData, kwargs: dict, genes: bool = True) -> None:
    """The options scanpy reads only when it draws (after a UMAP was computed, for nothing):
    ``layer`` (when a gene is coloured: ``genes``), ``legend_loc`` and a ``palette`` that
    looks like a misspelt colormap name (scanpy ignores what it does not use)."""
    import difflib

    import matplotlib
    from matplotlib.colors import is_color_like
    from matplotlib.legend import Legend

    layer = kwargs.get("layer")
    if genes and layer is not None and layer not in adata.layers:
        layers = [k for k in adata.layers.keys() if isinstance(k, str)]  # 0.13 lists X as None
        raise KeyError(f"layer={layer!r} is not in adata.layers (layers: {layers}).")
    loc = kwargs.get("legend_loc")
    valid = ["right margin", "on data", "on data export", "none", *Legend.codes]
    if isinstance(loc, str) and loc not in valid:
        raise ValueError(f"legend_loc={loc!r} is not one of {valid} (or None).")
    palette = kwargs.get("palette")
    if (
        isinstance(palette, str)
        and palette not in matplotlib.colormaps
        and not is_color_like(palette)
        and not all(map(is_color_like, palette))  # 'rgb': a colour per letter
    ):
        close = difflib.get_close_matches(palette, list(matplotlib.colormaps), n=3)
        if close:  # a misspelt colormap (scanpy fails on it when drawing)
            raise ValueError(
                f"palette={palette!r} is not a matplotlib colormap (close: {close}); pass a "
                "colormap name, a list of colours or a dict of category to colour."
            )


@contextmanager
def figures_closed_on_failure() -> Iterator[None]:
    """Close the figures a failing drawing call opened (a half-drawn one stayed open in the
    notebook, shown under the next cell's output)."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    try:
        yield
    except BaseException:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
        raise


@contextmanager
def umaps_kept_on_success(adata: AnnData, *keys: str) -> Iterator[None]:
    """Put back ``obsm[key]`` and ``uns[key]`` of each UMAP cache as they were when the
    plotting call fails after caching (scanpy refusing an option, a figure that cannot be
    saved): a failing call writes nothing."""
    before = {k: (adata.obsm.get(k), adata.uns.get(k)) for k in keys}
    try:
        yield
    except BaseException:
        for key, (emb, info) in before.items():
            for store, value in ((adata.obsm, emb), (adata.uns, info)):
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
        raise


def _cache_params(x: np.ndarray, n_neighbors: int, random_state: int, names, rows=None) -> dict:
    return {
        "n_neighbors": int(n_neighbors),
        "random_state": int(random_state),
        "fingerprint": _cells_fingerprint(x, names, rows),
        # the rows left out, as a set too: with the rows drawn, which cells are drawn
        "rows": "all" if rows is None else _fingerprint(x[~np.asarray(rows, dtype=bool)]),
    }


def _cells_fingerprint(x: np.ndarray, names, rows=None) -> str:
    """Fingerprint of each cell's representation beside its name, as a set: the cached rows
    still belong to the cells they were computed for (the rows' fingerprint alone is blind
    to the representation's rows moved without the cells'), and a layout the user edited
    (flipped, rotated) is kept."""
    import pandas as pd

    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        return _fingerprint(x)
    names = pd.util.hash_array(np.asarray(names, dtype=object)).astype(np.uint64)
    if rows is not None:
        x, names = x[rows], names[rows]
    as_bytes = x.view(np.uint8).reshape(len(x), -1)
    return _fingerprint(np.hstack([as_bytes, names.view(np.uint8).reshape(len(x), 8)]))


def _cache_holds(adata: AnnData, umap_key: str, params: dict) -> bool:
    cached = adata.obsm.get(umap_key)
    info = adata.uns.get(umap_key)
    stored = info.get("params") if isinstance(info, dict) else None
    return (
        cached is not None
        and cached.shape == (adata.n_obs, 2)
        and isinstance(stored, dict)
        and {k: stored.get(k) for k in params} == params
    )


def parent_layout(
    adata: AnnData, umap_key: str, basis: str, *, n_neighbors: int, random_state: int
) -> bool:
    """Whether ``adata`` is a view of cells whose parent's cached UMAP of ``basis`` is
    current: its rows are then the view's ``obsm[umap_key]``, so a subset is drawn in the
    whole data's layout (as ``sc.pl.embedding(adata[mask])`` draws it)."""
    from scdl.data import check_embedding

    # anndata keeps a view's parent here (no public accessor); a view of a view too
    parent = getattr(adata, "_adata_ref", None) if adata.is_view else None
    if parent is None or basis not in parent.obsm or umap_key not in adata.obsm:
        return False
    random_state = 0 if random_state is None else random_state
    try:
        rep = check_embedding(parent, basis)
    except (KeyError, TypeError, ValueError):
        return False
    params = _cache_params(rep, n_neighbors, random_state, parent.obs_names)
    return _cache_holds(parent, umap_key, params)


@scanpy_scratch()
@keeps_torch_threads
def _umap(x: np.ndarray, n_neighbors: int, random_state: int) -> np.ndarray:
    import anndata
    import scanpy as sc

    tmp = anndata.AnnData(obsm={"rep": x})
    sc.pp.neighbors(
        tmp,
        use_rep="rep",
        n_neighbors=n_neighbors,
        random_state=random_state,
        transformer=knn_transformer(x.shape[0]),
    )
    sc.tl.umap(tmp, random_state=random_state)
    return tmp.obsm["X_umap"]


def _fingerprint(x: np.ndarray) -> str:
    """SHA-1 of an embedding's rows as a set: the same cells in another order (sorted for a
    heatmap) keep their cached layout, whose rows anndata reordered with them."""
    x = np.ascontiguousarray(x)
    head = f"{x.dtype.str}{x.shape}".encode()
    if x.ndim == 2 and x.shape[1] > 0:
        # each row as one opaque value, sorted bytewise (in C: no per-row Python)
        x = np.sort(x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel())
    return hashlib.sha1(head + x.tobytes()).hexdigest()


def cached_umap(
    adata: AnnData,
    umap_key: str,
    x: np.ndarray,
    *,
    n_neighbors: int,
    random_state: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """UMAP of ``x`` (cells x dims), cached in ``adata.obsm[umap_key]``.

    The cache is keyed on what the UMAP is computed from: ``uns[umap_key]["params"]`` holds
    ``n_neighbors``, ``random_state``, a SHA-1 fingerprint of ``x``'s rows, each beside its
    cell's name, as a set (and one of the rows left out by ``rows``), so a new representation
    under the same key (e.g. after another ``tl.integrate``) is never shown with a stale UMAP,
    while the same cells in another order keep their layout (and a layout the user edited is
    kept). ``rows`` (a boolean mask) embeds only those cells; the others get NaN.
    """
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer):
        raise TypeError(f"n_neighbors must be an integer, got {n_neighbors!r}.")
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be >= 2 (a UMAP's neighbour graph), got {n_neighbors}.")
    random_state = 0 if random_state is None else random_state  # so the cache can match it
    params = _cache_params(x, n_neighbors, random_state, adata.obs_names, rows)
    if _cache_holds(adata, umap_key, params):
        return np.asarray(adata.obsm[umap_key])
    if rows is None:
        emb = _umap(x, n_neighbors, random_state)
    else:
        emb = np.full((adata.n_obs, 2), np.nan, dtype=np.float32)  # as scanpy's X_umap
        emb[rows] = _umap(x[rows], n_neighbors, random_state)
    adata.obsm[umap_key] = emb
    adata.uns[umap_key] = {"params": params}
    return emb
