"""Gene attributions of a trained :class:`~scdl.models.CellTypeTransformer`: which genes drive
each cell type's call (integrated gradients through the module).

A mixin of the model class, beside :class:`~._annotator_predict.AnnotatorPredictionMixin`
whose ``predict`` (and :class:`~._annotator_input.AnnotatorInputMixin`'s ``_query_matrix``) it
uses.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from scdl._warnings import warn_user
from scdl.dataloaders import dense_rows

from ._annotator_predict import UNKNOWN
from ._attribution import integrated_gradients
from ._mixing import MIN_QUERY_CELLS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

# cells per integrated-gradients pass: a pass holds n_steps copies of each of its cells, so
# memory grows with cells x steps (1,000 cells in one pass took 4 GB on 2,000 genes)
_CHUNK_CELLS = 64


class AnnotatorAttributionMixin:
    """``gene_attributions`` of :class:`~scdl.models.CellTypeTransformer`."""

    def gene_attributions(
        self,
        adata: AnnData | None = None,
        *,
        label: str | Sequence[str] | None = None,
        groupby: str | None = None,
        n_cells: int = 200,
        n_steps: int = 32,
        n_top: int | None = 20,
        layer: str | None = None,
        min_gene_overlap: float = 0.5,
        seed: int = 0,
    ) -> pd.DataFrame:
        """Genes that drive the prediction of each cell type (integrated gradients).

        For each cell type, up to ``n_cells`` cells of that type (called so, or from
        ``adata.obs[groupby]``) are attributed: integrated gradients of the type's logit (the
        score its probability is the softmax of) with respect to the cell's log-normalised
        expression, from no expression to the cell's profile, with the genes the cell's own
        profile selects as its tokens held along the path. Gene scores are averaged over the
        cells; positive genes push towards the type, negative ones away from it. A per-type
        average: a cell's own call can rest on other genes of the list in another order.

        Parameters
        ----------
        adata
            Cells to explain (raw counts); ``None`` uses the reference.
        label
            Cell type(s) to explain; default all (a type no cell is predicted as is then left
            out). A type named here that no cell is predicted as (or, with ``groupby``,
            labelled as) is refused: to explain a type's logit in other cells, label them
            with its name in an obs column passed as ``groupby``.
        groupby
            obs column choosing the cells of each type, e.g. the column ``tl.annotate`` wrote
            (its "Unknown" cells are left out); default the model's own calls with their
            Unknown call (:meth:`predict`, whose defaults are :func:`scdl.tl.annotate`'s
            without majority voting): cells called "Unknown", among them cells without a
            count in the model's genes, are left out, as cells unlike every type explain none.
            Those calls cluster the whole query first, whatever ``label`` and ``n_cells``:
            after :func:`scdl.tl.annotate`, passing its column reuses its calls.
        n_cells, n_steps
            Cells per type and integration steps (cost grows with both).
        n_top
            Top genes per type to return, the most positive (those pushing towards the type);
            ``None`` returns every gene, the negative ones last.
        layer
            Layer of ``adata`` holding raw counts.
        min_gene_overlap
            Smallest fraction of the model's genes that ``adata`` must hold (as in
            :func:`scdl.tl.annotate`).
        seed
            Seed for the choice of cells.

        Returns
        -------
        DataFrame with columns ``label``, ``gene``, ``attribution``, ``rank`` and ``n_cells``
        (the cells the type's scores are averaged over: a few cells give a noisier list);
        genes the query lacks are left out (they carry no attribution).
        """
        from scdl.data import check_positive_int, check_random_state

        check_random_state(seed, "seed")
        names = self.labels
        wanted = names if label is None else ([label] if isinstance(label, str) else list(label))
        bad = [w for w in wanted if w not in names]
        if bad:
            raise ValueError(f"Unknown cell type(s) {bad}; the model predicts {names}.")
        check_positive_int(n_cells, "n_cells")
        check_positive_int(n_steps, "n_steps")
        if n_top is not None:
            check_positive_int(n_top, "n_top")
        x, present, _ = self._query_matrix(adata, layer, min_gene_overlap)
        x = x.to_scipy()
        if groupby is not None:
            from scdl.data import check_obs_key

            cells = self._require_adata("explain") if adata is None else adata
            groups = check_obs_key(cells, groupby, arg="groupby").astype(str).to_numpy()
            _check_groups_are_types(groups, wanted, names, groupby, given=label is not None)
        else:
            with warnings.catch_warnings():  # _query_matrix above has said these once
                warnings.filterwarnings("ignore", message="The query holds .* of the model's")
                warnings.filterwarnings("ignore", message=".* is not raw counts but log1p")
                # the Unknown call's caveats of a query whose composition or genes limit it
                # are tl.annotate's to say; a query too small for the call is said below
                warnings.filterwarnings("ignore", message=".* for its predicted composition")
                warnings.filterwarnings("ignore", message=".*mixing check is skipped")
                warnings.filterwarnings("ignore", message="The query has .* the Unknown call")
                # the calls with their Unknown call: a cell unlike every type (another
                # tissue's, one without counts) forced onto one would add its genes to it
                calls, _ = self.annotate_cells(
                    adata, layer=layer, min_gene_overlap=min_gene_overlap
                )
            groups = calls["label"].to_numpy()
            if np.isnan(calls["cluster_novelty"].to_numpy(dtype=np.float64)).all():
                warn_user(
                    f"The query is too small for the Unknown call (fewer than {MIN_QUERY_CELLS} "
                    "cells with counts), so each type's genes come from every cell's most "
                    "probable type, "
                    "cells unlike every type included. To leave those out, annotate the whole "
                    "sample with `scdl.tl.annotate` and pass its column as `groupby=`.",
                    UserWarning,
                )
            none = [w for w in wanted if label is not None and not (groups == w).any()]
            if none:  # asked for by name: an empty table would not say why
                raise ValueError(
                    f"No cell is called {none} (cells called Unknown are left out), so there "
                    "are no cells of that type to "
                    "explain. To see which genes argue for a type in other cells, label those "
                    "cells with its name in an obs column and pass it as `groupby=` (e.g. "
                    f"`adata.obs['explain'] = {none[0]!r}`, `groupby='explain'`)."
                )
        rng = np.random.default_rng(seed)
        dev = self.module.device
        mask = None if present is None else torch.as_tensor(present, device=dev)
        genes = np.asarray(self.get_var_names())
        rows, absent = [], []
        self.module.eval()
        for name in wanted:
            cells = np.flatnonzero(groups == name)
            if len(cells) == 0:
                absent.append(name)
                continue
            cells = np.sort(rng.choice(cells, min(n_cells, len(cells)), replace=False))
            x_log = self.module.log_normalize(dense_rows(x, cells).to(dev))
            with self._linear_for(present):  # the path the calls of such a query use
                score = self._attribution(x_log, mask, names.index(name), n_steps).mean(0)
            order = np.argsort(-score, kind="stable")
            if present is not None:  # a gene the query lacks has no attribution to rank
                order = order[present[order]]
            top = order if n_top is None else order[:n_top]
            rows.append(
                pd.DataFrame(
                    {
                        "label": name,
                        "gene": genes[top],
                        "attribution": score[top],
                        "rank": np.arange(1, len(top) + 1),
                        "n_cells": len(cells),
                    }
                )
            )
        if absent:  # left out, as documented: one line, not one per type
            logger.info("No cells of type(s) %s to attribute: left out.", absent)
        return (
            pd.concat(rows, ignore_index=True)
            if rows
            else pd.DataFrame(columns=["label", "gene", "attribution", "rank", "n_cells"])
        )

    def _attribution(
        self, x_log, mask, target: int, n_steps: int, chunk: int = _CHUNK_CELLS
    ) -> np.ndarray:
        """Integrated gradients of class ``target``'s logit (cells x genes) at ``x_log``, with
        each cell's gene tokens held at those its own profile selects; ``chunk`` cells at a
        time (a forward pass holds every path step of its cells)."""
        out = []
        for start in range(0, x_log.shape[0], chunk):
            x = x_log[start : start + chunk]
            with torch.no_grad():
                hidden = None if mask is None else ~mask.expand_as(x)
                selection = self.module.select(x, hidden)

            def forward(inp, sel=selection):
                n = inp.shape[0] // sel[0].shape[0]  # captum stacks the path steps
                sel_rep = (sel[0].repeat(n, 1), sel[1].repeat(n, 1))
                return self.module.features_log(inp, mask, sel_rep)[1]

            out.append(
                integrated_gradients(
                    forward, x, target=target, n_steps=n_steps, batch_size=x.shape[0]
                )
            )
        return np.concatenate(out, axis=0)


def _check_groups_are_types(groups, wanted, names, groupby: str, *, given: bool) -> None:
    """``groupby`` values name the model's cell types: a column of other names would leave
    types without cells (silently dropped from the table)."""
    present = set(groups)
    if given:  # the types asked for must have cells under these names
        missing = [w for w in wanted if w not in present]
        if missing:
            raise ValueError(
                f"adata.obs[{groupby!r}] has no cells labelled {missing}; its values must be "
                f"the model's cell-type names ({list(names)})."
            )
        return
    # cells called Unknown (tl.annotate's column) have no type to explain: left out, as types
    # without cells are
    other = sorted(present - set(names) - {UNKNOWN})
    if other:
        raise ValueError(
            f"adata.obs[{groupby!r}] holds values that are not the model's cell types: "
            f"{other[:10]}{' ...' if len(other) > 10 else ''} (the model has {list(names)}). "
            "Rename them to the model's names, or pass `label=` to explain only types the "
            "column holds."
        )
