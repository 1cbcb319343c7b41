"""The check every trained model runs on a new AnnData before scvi-tools uses it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._checks import (
    check_counts,
    check_is_anndata,
    check_not_sparse_array,
    check_unique_var_names,
)
from ._covariates import check_continuous_covariates
from ._genes import gene_mismatch_message, same_gene_names
from ._obs_checks import check_obs_key

if TYPE_CHECKING:
    from anndata import AnnData


def counts_place_fix(model: str, layer: str | None, adata: AnnData | None = None) -> str:
    """How to give a trained model its counts: it reads the place it was set up with, so the
    fix names that place, not ``layer=``; where ``adata`` holds the counts elsewhere (a layer,
    ``X``, ``.raw``), a copy with them in that place (the user's AnnData is left as it is)."""
    place = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    into = "query.X" if layer is None else f"query.layers[{layer!r}]"
    source = None if adata is None else _counts_source(adata, layer)
    if source is not None:
        return (
            f"the {model} reads raw counts from {place}, and {source} holds them: pass a copy "
            f"with them there, e.g. `query = adata.copy(); {into} = {source}`, then `query`."
        )
    return (
        f"the {model} reads raw counts from {place}; pass a copy of the AnnData with the "
        f"cells' raw counts there (`{into} = counts`, e.g. from the file they came from)."
    )


def _counts_source(adata: AnnData, layer: str | None) -> str | None:
    """The expression of a place other than ``layer`` (``None``: ``X``) where ``adata``
    holds raw counts of its genes (a sample checked), or ``None``."""
    keys = _count_layers(adata, layer)
    if keys:
        return f"adata.layers[{keys[0]!r}]"
    if layer is not None and adata.X is not None and _sample_is_counts(adata.X):
        return "adata.X"
    return "adata.raw[:, adata.var_names].X" if _raw_holds_counts(adata) else None


def _raw_holds_counts(adata: AnnData) -> bool:
    """Whether ``adata.raw`` holds raw counts (a sample checked) of every gene of ``adata``
    (``adata.raw[:, adata.var_names]`` then reads them all)."""
    raw = getattr(adata, "raw", None)
    return bool(
        raw is not None and adata.var_names.isin(raw.var_names).all() and _sample_is_counts(raw.X)
    )


def check_query(
    adata: AnnData,
    registry: dict,
    *,
    model: str = "model",
    unseen_fix: str = "keep only cells of known categories",
    counts: bool = True,
) -> None:
    """Check a new AnnData given to a trained model (latent space, expression, ...).

    The genes must be the model's, in its order; the counts raw; each registered obs column
    present with only the categories the model was trained on, each continuous covariate
    present, numeric and finite. Runs before scvi-tools
    transfers the registration, so a failing call leaves ``adata`` unchanged.

    Parameters
    ----------
    adata
        The query.
    registry
        The trained model's scvi-tools registry (``model.registry_``).
    model
        The model's class name, used in the messages.
    unseen_fix
        How to use categories the model was not trained on, named in that error.
    counts
        Whether the model reads raw counts (``False``: e.g. bulk expression, checked by the
        model's own ``setup_anndata``).
    """
    check_is_anndata(adata)
    fields = registry.get("field_registries", {})
    ref = fields.get("X", {}).get("state_registry", {}).get("column_names")
    if ref is not None and not same_gene_names(adata.var_names, ref):
        check_unique_var_names(adata)
        raise ValueError(gene_mismatch_message(pd.Index(ref), adata, pad=model == "VAE"))
    setup_args = registry.get("setup_args", {})
    layer = setup_args.get("layer")
    if layer is not None and layer not in adata.layers:  # before anything names `layer=`
        raise KeyError(
            f"adata.layers has no {layer!r} "
            f"({[k for k in adata.layers.keys() if isinstance(k, str)] or 'no layers'}): "
            + counts_place_fix(model, layer, adata)
        )
    check_not_sparse_array(adata, layer)
    if counts:
        check_counts(adata, layer, fix=counts_place_fix(model, layer, adata))
    known: dict[str, tuple[str, list]] = {}
    for field in fields.values():
        state = field.get("state_registry", {})
        if "categorical_mapping" in state and not str(state.get("original_key")).startswith(
            "_scvi"
        ):
            known[state["original_key"]] = ("registered", list(state["categorical_mapping"]))
        for key, mapping in (state.get("mappings") or {}).items():
            known[key] = ("registered", list(mapping))
    for arg, keys in setup_args.items():
        for key in [keys] if isinstance(keys, str) else list(keys or []):
            if key in known:
                known[key] = (arg, known[key][1])
    for key, (arg, categories) in known.items():
        if key not in adata.obs.columns:
            raise KeyError(
                f"adata.obs lacks the column {key!r} (the model's `{arg}`). Add it, with "
                f"values among those the model was trained on: {categories[:10]}."
            )
        if arg == "labels_key" and adata.obs[key].isna().any():
            # a query's labels are never read to annotate it: filling them is not the fix
            raise ValueError(
                f"adata.obs[{key!r}] has {int(adata.obs[key].isna().sum())} missing values. "
                f"To annotate these cells the {model} needs no labels: load it without "
                "`adata` (`model = scdl.models.CellTypeTransformer.load(path)`) and call "
                "`scdl.tl.annotate(adata, model=model)`; to register them as labelled data, "
                f"leave those cells out first (`adata = adata[adata.obs[{key!r}].notna()]"
                ".copy()`)."
            )
        col = check_obs_key(adata, key, arg=arg)
        check_category_kind(col, categories, key, model=model)
        # by value, as the registry maps them: a batch 1 is the model's 1.0
        known_values = {_as_value(v) for v in categories}
        unseen = sorted((v for v in pd.unique(col) if _as_value(v) not in known_values), key=str)
        if unseen:
            raise ValueError(
                f"adata.obs[{key!r}] holds categories the {model} was not trained on "
                f"({_plain(unseen[:5])}); it knows {_plain(categories[:10])}. To use new "
                f"categories, {unseen_fix}."
            )
    # numbers the model standardises and feeds its network: a NaN there fails inside torch
    check_continuous_covariates(adata, setup_args.get("continuous_covariate_keys"), model=model)


def _as_value(value):
    """A category as compared with the model's: numbers by value (``1`` is ``1.0``), anything
    else by its text."""
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    ):
        return float(value)
    return str(value)


def _plain(values) -> list:
    """Values as Python writes them (``101``, not numpy's ``np.int64(101)``), for messages."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def _kind(values) -> str | None:
    """``"str"`` or ``"number"`` when every value is of that kind, else None."""
    import numbers

    values = [v for v in values if not pd.isna(v)]
    if values and all(isinstance(v, str) for v in values):
        return "str"
    if values and all(isinstance(v, numbers.Number) for v in values):
        return "number"
    return None


def check_category_kind(column, categories, key: str, *, model: str = "model") -> None:
    """Refuse a query column whose values are numbers where the model's categories are
    strings, or the reverse: scvi-tools compares them as values, so ``1`` is not ``"1"``.

    Raises
    ------
    TypeError
        The kinds differ; the message names both and the conversion.
    """
    theirs = _kind(pd.unique(pd.Series(column).astype(object)))
    ours = _kind(list(categories))
    if theirs is None or ours is None or theirs == ours:
        return
    conversion = "astype(str)" if ours == "str" else "astype(int)"

    def example(v):
        return repr(v.item() if hasattr(v, "item") else v)  # 1, not np.int64(1)

    raise TypeError(
        f"adata.obs[{key!r}] holds {theirs} values (e.g. {example(pd.unique(column)[0])}) where "
        f"the {model} was trained on {ours} categories (e.g. {example(list(categories)[0])}), "
        "which "
        f"scvi-tools treats as different: convert them, e.g. `adata.obs[{key!r}] = "
        f"adata.obs[{key!r}].{conversion}`."
    )


def edited_obs_columns(adata: AnnData, registry: dict, *, skip: tuple = ("labels",)) -> list:
    """obs columns of an already registered ``adata`` whose values changed since then.

    scvi-tools copies a registered column into ``obs["_scvi_batch"]`` (covariates into
    ``obsm``) when it registers an AnnData, and its models read those copies afterwards, so
    editing the column itself changes nothing and lets a new category through unchecked.
    Fields named in ``skip`` (the labels, which no embedding reads) are not compared.
    """
    edited = []
    for name, field in registry.get("field_registries", {}).items():
        state, data = field.get("state_registry", {}), field.get("data_registry", {})
        key = data.get("attr_key")
        if name in skip or key is None:
            continue
        if "categorical_mapping" in state:
            col = state.get("original_key")
            if str(col).startswith("_scvi") or col not in adata.obs or key not in adata.obs:
                continue
            now = _codes(adata.obs[col], state["categorical_mapping"])
            if not np.array_equal(now, adata.obs[key].to_numpy()):
                edited.append(col)
        elif data.get("attr_name") == "obsm" and key in adata.obsm:
            stored = adata.obsm[key]
            for col, mapping in (state.get("mappings") or {}).items():
                if col in adata.obs and not np.array_equal(
                    _codes(adata.obs[col], mapping),
                    np.asarray(stored[col]),
                ):
                    edited.append(col)
            for col in state.get("columns", []):
                if col in adata.obs and not _same_numbers(adata.obs[col], stored[col]):
                    edited.append(col)
    return edited


def _codes(values: pd.Series, categories) -> np.ndarray:
    """Codes of ``values`` in ``categories`` (-1: not among them), as scvi-tools registered
    them; pandas 3 deprecates a Categorical whose values fall outside its categories."""
    # object Indexes built from arrays: inferring a dtype from a pandas object is deprecated
    # (a FutureWarning under pandas 2's future.infer_string)
    looked_up = pd.Index(values.astype(object).where(values.notna(), None).to_numpy(), dtype=object)
    return pd.Index(np.asarray(categories, dtype=object), dtype=object).get_indexer(looked_up)


def _same_numbers(now, stored) -> bool:
    try:
        now = np.asarray(now, dtype=np.float64)
    except (TypeError, ValueError):  # edited to text: not what was registered
        return False
    return np.array_equal(now, np.asarray(stored, dtype=np.float64), equal_nan=True)


def sampled_counts_ok(adata: AnnData, layer: str | None, *, n_values: int = 10_000) -> bool:
    """Whether an evenly spaced sample of at most ``n_values`` stored values of ``adata.X``
    (or ``layer``) are still finite, non-negative integers.

    For an AnnData checked in full when a model registered it: scanpy's ``normalize_total``
    and ``log1p`` rewrite X in place, after which the model would read normalised values as
    counts. Such data are non-integer almost everywhere, so the sample finds them without a
    pass over every value; a matrix of another storage (e.g. backed) is not sampled.
    """
    x = adata.X if layer is None else adata.layers.get(layer)
    found = _sample_is_counts(x, n_values)
    return True if found is None else found


def _sample_is_counts(x, n_values: int = 10_000) -> bool | None:
    """:func:`sampled_counts_ok` of one matrix; ``None`` where it is not sampled."""
    from scipy import sparse

    if sparse.issparse(x):
        values = x.data
    elif isinstance(x, np.ndarray) and x.ndim == 2:
        # about 100 evenly spaced rows: flattening all of X could copy it
        values = x[:: max(1, x.shape[0] // 100)].ravel()
    else:
        return None
    if values.dtype == bool:  # 0/1, counts to check_counts too
        return True
    if values.size == 0 or not np.issubdtype(values.dtype, np.number):
        return values.size == 0
    sample = values[:: max(1, values.size // n_values)]
    return bool(
        np.isfinite(sample).all() and (sample >= 0).all() and (sample == np.round(sample)).all()
    )


def _count_layers(adata: AnnData, layer: str | None) -> list[str]:
    """Layers other than ``layer`` that hold raw counts (a sample checked), those named for
    counts first: 0/1 flags and velocyto's unspliced / ambiguous reads are integers too, but
    not the cells' counts."""
    keys = sorted(
        (k for k in adata.layers.keys() if k != layer and isinstance(k, str)),
        key=lambda k: not any(w in k.lower() for w in ("count", "raw", "umi")),
    )
    return [
        k
        for k in keys
        if k.lower() not in ("unspliced", "ambiguous")
        and np.dtype(getattr(adata.layers[k], "dtype", object)) != np.bool_
        and adata.layers[k].size
        and _sample_is_counts(adata.layers[k])
    ]


def counts_elsewhere_hint(adata: AnnData, layer: str | None) -> str:
    """Where else ``adata`` holds raw counts (``X``, a layer; ``.raw`` when nothing else
    does), as the fix for a refusal of ``layer`` (``None``: ``X``): ``""`` when nowhere (a
    sample of each is checked, as :func:`sampled_counts_ok`)."""
    # in backticks: the drug model's and the CLI's messages rewrite `layer=` to their names
    places = [f"`layer={k!r}`" for k in _count_layers(adata, layer)]
    if layer is not None and _sample_is_counts(adata.X) and adata.X is not None:
        return " adata.X holds raw counts: pass `layer=None`."
    if places:
        return f" Raw counts are in this AnnData: pass {' or '.join(places)}."
    if layer is None and _raw_holds_counts(adata):
        name = next(n for n in ("counts", "raw_counts", "scdl_counts") if n not in adata.layers)
        return (
            " adata.raw holds raw counts: copy them into a layer, "
            f"`adata.layers[{name!r}] = adata.raw[:, adata.var_names].X`, and pass "
            f"`layer={name!r}`."
        )
    return ""
