"""Which cells are background and which are target: from positions or from obs values.

Model-agnostic: only reads ``adata``; for any analysis contrasting two groups of cells
(e.g. :func:`scdl.tl.contrastive`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from scdl._warnings import warn_user

from ._obs_checks import check_obs_key

if TYPE_CHECKING:
    from anndata import AnnData


def _as_values(value, arg: str) -> list:
    if isinstance(value, str) or not isinstance(value, Iterable):
        return [value]
    values = list(value)
    if not values:
        raise ValueError(f"`{arg}` is empty; pass at least one value of the groupby column.")
    return values


def _as_indices(idx, n_obs: int, arg: str) -> np.ndarray:
    arr = np.asarray(idx)
    if arr.dtype == bool:
        if arr.shape != (n_obs,):
            raise ValueError(
                f"`{arg}` is a boolean mask of length {arr.size}, but adata has {n_obs} cells."
            )
        return np.flatnonzero(arr)
    if arr.size == 0:
        return np.array([], dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`{arg}` must hold integer cell positions or be a boolean mask.")
    arr = arr.ravel().astype(np.int64)
    if arr.min() < 0 or arr.max() >= n_obs:
        raise ValueError(f"`{arg}` has positions outside 0..{n_obs - 1} (adata has {n_obs} cells).")
    if np.unique(arr).size != arr.size:
        raise ValueError(f"`{arg}` lists some cells more than once.")
    return np.sort(arr)


def _check_present(adata, values: list, present: list, groupby: str, arg: str, other) -> None:
    """Refuse ``values`` (of ``arg``) missing from the column; ``other``: the other group's
    argument as given (``None``: not given), for the fix's example."""
    known = set(present)
    missing = [v for v in values if v not in known]
    if not missing:
        return
    per_cell = _cells_named(adata, values)
    if per_cell is not None:
        hint = ""
        if "names" in per_cell:
            hint = " (for names: `mask = adata.obs_names.isin(names)`)"
        elif "positions" in per_cell:
            hint = " (for positions: `mask = np.isin(np.arange(adata.n_obs), positions)`)"
        raise ValueError(
            f"{arg}= holds {per_cell}; it takes the value(s) of adata.obs[{groupby!r}] that mark "
            f"the {arg} cells (values present: {_some(present)}). To choose the {arg} cells "
            f"yourself, write the groups as a column: {_mask_recipe(groupby, arg, other)}{hint}."
        )
    given = repr(_plain(missing[0])) if len(missing) == 1 else _some(missing, 10)
    raise ValueError(
        f"{arg}={given} {'is not a value' if len(missing) == 1 else 'are not values'} of "
        f"adata.obs[{groupby!r}] (values present: {_some(present)}). Pass one of those."
    )


def _mask_recipe(groupby: str, arg: str, other) -> str:
    """Code that writes ``mask`` (True for the ``arg`` cells) as a column beside the other
    group as given, so that following it picks the same cells."""
    mine, theirs = ("control", "treated") if arg == "background" else ("treated", "control")
    if other is None:  # target=None: the target is every other cell
        column = f"np.where(mask, '{mine}', '{theirs}')"
        pass_as = "background='control'"
    else:  # the other group keeps its cells; the rest stay out of both
        kept = [_plain(v) for v in _as_values(other, "other")]
        # the other argument a mask too: named, not listed
        others = f"adata.obs[{groupby!r}].isin({kept!r})" if len(kept) <= 20 else "other_mask"
        column = f"np.where(mask, '{mine}', np.where({others}, '{theirs}', 'neither'))"
        pass_as = "background='control', target='treated'"
    return (
        f"`adata.obs['group'] = {column}` with `mask` True for the {arg} cells, then "
        f"groupby='group', {pass_as}"
    )


def _cells_named(adata, values: list) -> str | None:
    """What ``values`` are when they pick cells rather than name groups (a mask, the cells'
    names or positions), or ``None``."""
    if len(values) == adata.n_obs > 1 and all(isinstance(v, bool | np.bool_) for v in values):
        return "a boolean mask, one entry per cell"
    if len(values) > 1 and all(isinstance(v, str) for v in values):
        if set(values) <= set(adata.obs_names):
            return f"{len(values)} cell names"
    integers = (isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values)
    if len(values) > 1 and all(integers):
        if min(values) >= 0 and max(values) < adata.n_obs:
            return f"{len(values)} integers (cell positions?)"
    if len(values) == adata.n_obs > 1:
        return "one entry per cell"
    return None


def _plain(value):
    """A numpy scalar as the Python value it holds (its repr in a message: 3, not np.int64(3))."""
    return value.item() if isinstance(value, np.generic) else value


def _some(values: list, n: int = 20) -> str:
    """The first ``n`` values, and how many more (a numeric column has one per cell)."""
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return f"{[_plain(v) for v in values[:n]]}{more}"


def resolve_groups(
    adata: AnnData,
    background_indices=None,
    target_indices=None,
    *,
    groupby: str | None = None,
    background=None,
    target=None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Background and target cell positions from indices or from ``groupby`` values.

    Say which cells are which either by position (``background_indices`` and/or
    ``target_indices``: integer positions or boolean masks; a missing one means all other
    cells) or by an obs column (``groupby`` with ``background``, a value or list of values;
    target cells are all other cells, or those with the value(s) in ``target``).

    Only reads ``adata``. Returns sorted positions of background and target cells and a
    description of the split (``groupby``, ``background``, ``target`` values) so new data can
    be split the same way.

    Raises
    ------
    KeyError
        ``groupby`` is not a column of ``adata.obs``.
    ValueError
        Neither or both ways given; a value not present in the column; no background or no
        target cells; a cell both background and target; positions out of range.
    """
    by_index = background_indices is not None or target_indices is not None
    by_group = groupby is not None or background is not None or target is not None
    if by_index and by_group:
        raise ValueError(
            "Pass either background_indices/target_indices or groupby= with background=, not both."
        )
    if not by_index and not by_group:
        raise ValueError(
            "Say which cells are the background: pass groupby= and background= (e.g. "
            "groupby='condition', background='control'), or background_indices=."
        )
    if by_group:
        bg, tg, split = _groups_from_obs(adata, groupby, background, target)
        where = f"adata.obs[{groupby!r}]"
    else:
        bg, tg = _groups_from_indices(adata.n_obs, background_indices, target_indices)
        split = {"groupby": None, "background": None, "target": None}
        where = "the indices given"
    if bg.size == 0:
        raise ValueError(
            f"No background cells in {where}. Contrastive analysis needs background "
            "(e.g. control) cells to contrast the target cells with."
        )
    if tg.size == 0:
        raise ValueError(
            f"No target cells in {where}: every cell is background. Contrastive analysis "
            "needs target (e.g. stimulated) cells besides the background; check `background=`."
        )
    return bg, tg, split


def _groups_from_obs(adata, groupby, background, target) -> tuple[np.ndarray, np.ndarray, dict]:
    if groupby is None:
        raise ValueError("background=/target= need groupby=, the obs column holding them.")
    if background is None:
        raise ValueError(
            f"groupby={groupby!r} needs background=, the value(s) of that column marking "
            "background (e.g. control) cells."
        )
    # with target given, cells without a value are in neither group (like any other value)
    col = check_obs_key(adata, groupby, arg="groupby", missing_ok=True)
    if target is None and col.isna().any():
        raise ValueError(
            f"adata.obs[{groupby!r}] has {int(col.isna().sum())} missing values, which "
            "target=None would make target cells. Pass target= (cells without a value are "
            "then in neither group), or fill or drop them."
        )
    present = sorted(col.dropna().unique().tolist(), key=str)
    bg_values = _as_values(background, "background")
    _check_present(adata, bg_values, present, groupby, "background", target)
    bg_mask = col.isin(bg_values).to_numpy()
    tg_values = None
    if target is None:
        tg_mask = ~bg_mask
    else:
        tg_values = _as_values(target, "target")
        _check_present(adata, tg_values, present, groupby, "target", background)
        both = [v for v in tg_values if v in set(bg_values)]
        if both:
            raise ValueError(
                f"{both} given as both background and target; a group is one or the other."
            )
        tg_mask = col.isin(tg_values).to_numpy()
    # every value seen, so new cells can be refused a value the model never saw (a control
    # spelt "control" instead of "ctrl" would otherwise become a target cell)
    split = {"groupby": groupby, "background": bg_values, "target": tg_values, "values": present}
    return np.flatnonzero(bg_mask), np.flatnonzero(tg_mask), split


def _groups_from_indices(
    n_obs: int, background_indices, target_indices
) -> tuple[np.ndarray, np.ndarray]:
    bg = (
        None
        if background_indices is None
        else _as_indices(background_indices, n_obs, "background_indices")
    )
    tg = None if target_indices is None else _as_indices(target_indices, n_obs, "target_indices")
    everyone = np.arange(n_obs)
    bg = np.setdiff1d(everyone, tg) if bg is None else bg
    tg = np.setdiff1d(everyone, bg) if tg is None else tg
    both = np.intersect1d(bg, tg)
    if both.size:
        raise ValueError(
            f"{both.size} cells are in both background_indices and target_indices "
            f"(e.g. {both[:5].tolist()}); a cell is either background or target."
        )
    return bg, tg


#: below this many cells a group's mean expression (what the salient space and genes contrast)
#: rests on a handful of cells (a warning), and a small background is not repeated in training
#: (a guard, not a tuned value)
MIN_GROUP_CELLS = 20


def warn_if_few_cells(background: np.ndarray, target: np.ndarray) -> bool:
    """Warn when the background or the target holds fewer than ``MIN_GROUP_CELLS`` cells.

    Such a split is valid and trains, but what is specific to the target is then measured on
    a few cells: the salient genes and space are mostly noise. Returns whether it warned.
    """
    small = [
        f"{name} {n}"
        for name, n in (("background", len(background)), ("target", len(target)))
        if n < MIN_GROUP_CELLS
    ]
    if not small:
        return False
    warn_user(
        f"Few cells in a group ({', '.join(small)} cells; fewer than {MIN_GROUP_CELLS}): "
        "the salient space and genes rest on those cells alone and are mostly noise. "
        "Pool more cells into the group (e.g. several samples of the condition) if you can.",
        UserWarning,
    )
    return True


def warn_if_batch_nested(
    batch, background: np.ndarray, target: np.ndarray, *, batch_key: str, groups: str
) -> bool:
    """Warn when every batch lies within the background or within the target cells.

    The batch covariate then explains what is specific to the target cells, leaving little
    for a salient space. ``batch`` holds one label per cell of the AnnData; ``groups`` says
    how the groups were given (named in the message). Returns whether it warned.
    """

    import pandas as pd

    cells = np.concatenate([background, target])
    is_target = np.r_[np.zeros(len(background), bool), np.ones(len(target), bool)]
    labels = pd.Series(np.asarray(batch).ravel()[cells])
    n_groups = pd.Series(is_target).groupby(labels.to_numpy()).nunique()
    if len(n_groups) < 2 or not (n_groups == 1).all():
        return False
    warn_user(
        f"Every category of batch_key={batch_key!r} lies within the background or within the "
        f"target cells ({groups}): the batch covariate can explain what is specific to the "
        "target cells, leaving little for the salient space. Use a batch that spans both "
        "(e.g. donor) or batch_key=None.",
        UserWarning,
    )
    return True
