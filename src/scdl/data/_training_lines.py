"""The check that a drug-response query's cells are not lines the model was trained on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scdl._warnings import warn_user

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


#: obs columns with more distinct values than this are not read as cell-line names
_MAX_LINE_NAMES = 500
#: GDSC keys this short (HH, H9, K5, ...) are also patients', samples' or tissues' codes: they
#: count only in a column whose name says it holds lines
_SHORT_LINE_NAME = 2


def warn_of_training_lines(
    adata: AnnData, bulk: AnnData | None, *, lines: Sequence[str] | None = None
) -> None:
    """Warn when an obs column of the query holds names of lines the model was trained on
    (matched as :func:`scdl.datasets.match_cell_lines` matches them): if the cells are those
    lines, their predictions are in-sample, and agreement with those lines' measured response
    is not a test.

    The training lines are ``lines`` (a trained model's ``training_lines_``) when given, else
    ``bulk``'s ``obs["cell_line_key"]`` (its ``obs_names`` without one); the message's code
    reads ``bulk``'s key column, or, without a ``bulk``, whichever the user's bulk holds."""
    from scdl.datasets import cell_line_key, match_cell_lines

    if lines is None:
        if bulk is None:
            raise TypeError("warn_of_training_lines needs the training `bulk` or its `lines`.")
        lines = bulk.obs["cell_line_key"] if "cell_line_key" in bulk.obs else bulk.obs_names
    known = {cell_line_key(k) for k in pd.unique(np.asarray(lines, dtype=object))}
    for column in adata.obs.columns:
        values = adata.obs[column]
        if str(column).endswith("_nearest_line"):  # an earlier call's output names them all
            continue
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        names = pd.unique(np.asarray(values.dropna().unique(), dtype=object).astype(str))
        if len(names) > _MAX_LINE_NAMES:
            continue
        hits = {n: k for n, k in match_cell_lines(names, known).items() if k is not None}
        if "line" not in str(column).lower():  # a patient "HH", a tissue "HN": GDSC keys too
            hits = {n: k for n, k in hits.items() if len(k) > _SHORT_LINE_NAME}
        if not hits:
            continue
        listed = ", ".join(f"{n} ({k})" if n != k else n for n, k in list(hits.items())[:8])
        by_name = "bulk.obs_names.map(scdl.datasets.cell_line_key)"
        if bulk is None:  # a model loaded without data: the code reads either kind of bulk
            column_keys = (
                f"(bulk.obs['cell_line_key'] if 'cell_line_key' in bulk.obs else {by_name})"
            )
        else:
            column_keys = "bulk.obs['cell_line_key']" if "cell_line_key" in bulk.obs else by_name
        warn_user(
            f"obs[{column!r}] holds names of {len(hits)} cell line(s) the model was trained on "
            f"({listed}): if these cells are those lines, their predictions are in-sample, and "
            "agreement with those lines' measured response is not a test. To predict them as "
            "unseen, hold them out of the bulk lines: `keys = "
            f"scdl.datasets.match_cell_lines(cells.obs[{column!r}].unique(), {column_keys})"
            f".values(); bulk = bulk[~{column_keys}.isin(keys)].copy()`, then "
            "`setup_anndata` and train the model again.",
            UserWarning,
        )
        return
