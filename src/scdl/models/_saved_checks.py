"""Checks of a saved model's contents before it is built from them.

:mod:`._saved_files` reads the files and checks their formats and checksums; the checks here
catch a config or weights of the right format but the wrong content (edited, damaged or
crafted), so that ``load`` refuses them by name instead of failing later inside the model.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd

from ._saved_files import SavedFiles, _initialize_model, _load_state

#: what a config of the wrong form raises while it is decoded or its model is built
_MALFORMED = (
    AttributeError,
    KeyError,
    TypeError,
    IndexError,
    OverflowError,
    RecursionError,
    RuntimeError,
)


@contextlib.contextmanager
def config_errors(files: SavedFiles, *, values: bool = False):
    """Name the config when reading it or building its model fails on a malformed field;
    ``values``: numpy's and pandas' ``ValueError`` too (decoding a ragged or mistyped array),
    where no check of scdl's raises one."""
    try:
        yield
    except (*_MALFORMED, ValueError) as e:
        if isinstance(e, ValueError) and not values:
            raise
        raise ValueError(
            f"{files}: {files.config_name} does not describe a model scdl can build "
            f"({type(e).__name__}: {e}): the file was edited or is corrupt. Save the model "
            "again with `.save()`."
        ) from e


def probe_weights(cls, registry: dict, attrs: dict, state: dict, files: SavedFiles) -> None:
    """Refuse weights that do not fit the model the config describes, before anything is
    allocated or registered: the model is built on torch's meta device (shapes, no memory; a
    crafted config could ask for gigabytes) and the weights are checked against it."""
    import copy

    import torch

    # no model scdl trains holds NaN (training stops at one); infinities are valid (the
    # annotator's novelty thresholds start at +inf)
    nan = next((k for k, v in state.items() if v.is_floating_point() and v.isnan().any()), None)
    if nan is not None:
        raise ValueError(
            f"{files}: {files.weights_name} holds NaN in {nan!r}: the file is corrupt or was "
            "edited. Save the model again with `.save()`, or retrain it."
        )
    with config_errors(files), torch.device("meta"):
        probe = _initialize_model(cls, None, registry, copy.deepcopy(attrs))
    with warnings.catch_warnings():
        # copying into a meta tensor only checks shapes, which is the point here
        warnings.filterwarnings("ignore", message=".*to a meta parameter", category=UserWarning)
        _load_state(probe, state, files)


#: the form of each saved attribute ``load`` checks, for every model ("*") and per class
SAVED_ATTR_KINDS = {
    "*": {
        "is_trained_": "bool",
        "history_": "dict",
        "train_indices_": "rows",
        "validation_indices_": "rows",
        "test_indices_": "rows",
    },
    "CellTypeTransformer": {
        "novelty_genes_": "genes",
        **dict.fromkeys(
            ("cluster_threshold_", "linear_C_", "min_reference_share_", "unknown_evidence_")
            + ("unknown_rate_",),
            "number",
        ),
    },
    "DrugResponseModel": {
        "drug_stats_": "frame",
        "n_target_cells_": "count",
        "training_lines_": "names",
    },
}


def _fits(kind: str, value, n_genes: int) -> bool:
    if kind == "bool":
        return isinstance(value, bool | np.bool_)
    if kind == "number":  # infinities are valid thresholds; NaN is not
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if kind == "count":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind == "names":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind in ("dict", "frame"):
        return isinstance(value, dict if kind == "dict" else pd.DataFrame)
    # "rows" (cell positions) or "genes" (positions among the model's genes): whole numbers
    positions = np.asarray(value)
    if positions.ndim != 1 or (positions.size and positions.dtype.kind not in "iu"):
        return False
    top = n_genes if kind == "genes" else np.inf
    return not positions.size or (positions.min() >= 0 and positions.max() < top)


def check_saved_attrs(
    files: SavedFiles, attrs: dict, registry: dict, model_class: str, n_genes: int
) -> None:
    """Refuse saved attributes (:data:`SAVED_ATTR_KINDS`) of another form than ``save``
    writes, before the model uses them (absent ones and ``None`` are left to the model's
    defaults), and a registry whose batches or labels are named in another number than its
    summary counts (the networks' sizes)."""
    kinds = {**SAVED_ATTR_KINDS["*"], **SAVED_ATTR_KINDS.get(model_class, {})}
    wrong = sorted(
        name
        for name, kind in kinds.items()
        if attrs.get(name) is not None and not _fits(kind, attrs[name], n_genes)
    )
    for key, fields in registry["field_registries"].items():
        stats = fields.get("summary_stats", {}) if isinstance(fields, dict) else {}
        mapping = (fields.get("state_registry") or {}).get("categorical_mapping")
        n = stats.get(f"n_{key}")  # scvi-tools' n_batch, n_labels
        if key in ("batch", "labels") and mapping is not None and n != len(mapping):
            wrong.append(f"registry_ ({key}: {len(mapping)} names, {n} in its summary)")
    if wrong:
        raise ValueError(
            f"{files}: {files.config_name} holds {wrong} in a form no scdl save writes: the "
            "file was edited or is corrupt. Save the model again with `.save()`."
        )
