"""Decoded expression of :class:`~scdl.models.ContrastiveVAE`: each cell's normalised
expression with and without its salient code, and the genes the salient space explains.

A mixin of the model class (as scvi-tools keeps ``get_normalized_expression`` in
``RNASeqMixin``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from scdl._warnings import warn_user
from scdl.data import check_positive_int, check_positive_number, salient_gene_table

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData


#: background cells pooled per target cell as the data its decoding without the salient code
#: stands for (its nearest in the shared space); on Kang's PBMCs 10 flagged the same genes and
#: 50 one more, outside the top 50 (benchmarks/README.md, stop 80)
MATCHED_NEIGHBORS = 30


class ContrastiveExpressionMixin:
    """Expression methods of :class:`~scdl.models.ContrastiveVAE`."""

    def _decode_pairs(self, adata, indices, batch_size, *, with_counts: bool = False):
        """Normalised expression of each cell decoded from ``[z, s]`` and from ``[z, 0]``;
        ``with_counts``: also the cells' counts (the minibatch's, already dense) and the share
        of them the model expects from ``[z, s]`` and, for a zero-inflated model (whose
        expected share is not its scale), from ``[z, 0]``: the fit check of the salient
        genes (:func:`scdl.data.salient_gene_table` reads the second decoding otherwise)."""
        for tensors, inf in self._posterior(adata, indices, batch_size):
            z, s, lib = inf["qz"].loc, inf["qs"].loc, inf["library"]
            b = tensors[REGISTRY_KEYS.BATCH_KEY]
            px = self.module.generative(z, s, lib, b)["px"]
            px0 = self.module.generative(z, torch.zeros_like(s), lib, b)["px"]
            if not with_counts:
                yield px.scale.cpu().numpy(), px0.scale.cpu().numpy()
                continue
            chunk = (
                px.scale.cpu().numpy(),
                px0.scale.cpu().numpy(),
                tensors[REGISTRY_KEYS.X_KEY].cpu().numpy(),
                _expected_share(px).cpu().numpy(),
            )
            # a negative binomial expects its scale: no copy of the second decoding
            zero_inflated = getattr(px0, "zi_probs", None) is not None
            yield (*chunk, _expected_share(px0).cpu().numpy()) if zero_inflated else chunk

    def _background_mask(self, adata, target, target_mask) -> np.ndarray:
        """The background cells of ``adata`` (``None``: the training data): the cells the
        model's groupby rule calls background, not merely those outside a ``target_mask`` (a
        mask of one donor's stimulated cells leaves the other donor's outside it); the cells
        outside the mask where the rule cannot be read (``adata`` lacks the groupby column)."""
        if target_mask is None:
            return ~target
        try:
            rule = self._target_mask(self.adata if adata is None else adata)
        except ValueError:  # no groupby column to read the rule from
            return ~target
        return ~rule & ~target

    def _background_like_targets(self, adata, targets, background, batch_size) -> np.ndarray:
        """Observed expression (each cell's counts over its total) of the background cells
        nearest the target cells in the shared space, pooled: each target cell's
        ``MATCHED_NEIGHBORS`` nearest, weighted by how often they are picked. Unlike the
        whole background's mean it follows the target cells' composition (a type more common
        among them weighs more), so it is the data their decoding without the salient code
        stands for."""
        from sklearn.neighbors import NearestNeighbors

        def shared_means(cells):
            return np.concatenate(
                [
                    inf["qz"].loc.cpu().numpy()
                    for _, inf in self._posterior(adata, cells, batch_size)
                ]
            )

        k = min(MATCHED_NEIGHBORS, len(background))
        finder = NearestNeighbors(n_neighbors=k).fit(shared_means(background))
        _, nearest = finder.kneighbors(shared_means(targets))
        weight = np.bincount(nearest.ravel(), minlength=len(background)) / nearest.size
        picked = np.flatnonzero(weight)
        pooled, start = np.zeros(self.summary_stats.n_vars), 0
        loader = self._make_data_loader(
            adata=adata, indices=background[picked], batch_size=batch_size
        )
        for tensors in loader:
            x = tensors[REGISTRY_KEYS.X_KEY].cpu().numpy().astype(np.float64)
            total = x.sum(1)
            w = weight[picked[start : start + len(x)]] / np.where(total > 0, total, 1.0)
            pooled += w @ x
            start += len(x)
        return pooled

    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        batch_size: int | None = None,
        target_mask: Sequence[bool] | np.ndarray | None = None,
        salient: bool = True,
        library_size: float = 1e4,
        gene_list: Sequence[str] | pd.Index | np.ndarray | str | None = None,
    ) -> pd.DataFrame:
        """Decoded expression per ``library_size`` counts (posterior means).

        Parameters
        ----------
        adata, indices, batch_size, target_mask
            As in :meth:`get_latent_representation`.
        salient
            ``True``: target cells decoded with their salient code (the model's fit);
            ``False``: every cell decoded with the salient code set to zero, i.e. target
            cells as they would look without what is specific to them.
        library_size
            Counts each cell's expression is scaled to.
        gene_list
            Genes to return (a name or names of the model's genes, in the order given);
            ``None``: every gene. Only these columns are kept as the cells are decoded, so a
            few genes of many cells take little memory.

        Returns
        -------
        pandas.DataFrame
            Cells x genes (``gene_list`` or every gene).
        """
        check_positive_number(library_size, "library_size", meaning="counts per cell")
        columns = self._gene_columns(gene_list)
        self._check_if_trained(warn=False)
        idx, target = self._cells(adata, indices, batch_size, salient, target_mask)
        adata = self._validate_anndata(adata)
        use_salient = None if target is None else target[idx]
        rows, start = [], 0
        for full, shared in self._decode_pairs(adata, idx, batch_size):
            if use_salient is None:
                rows.append(shared[:, columns])
            else:
                pick = use_salient[start : start + len(full), None]
                rows.append(np.where(pick, full[:, columns], shared[:, columns]))
            start += len(full)
        return pd.DataFrame(
            np.concatenate(rows) * library_size,
            index=adata.obs_names[idx],
            columns=pd.Index(self.get_var_names())[columns],
        )

    def _gene_columns(self, gene_list) -> np.ndarray | slice:
        """Positions of ``gene_list`` among the model's genes (every gene for ``None``);
        genes the model lacks are refused, named (not dropped)."""
        if gene_list is None:
            return slice(None)
        names = [gene_list] if isinstance(gene_list, str) else list(gene_list)
        genes = pd.Index(self.get_var_names())
        missing = [g for g in names if g not in genes]
        if missing or not names:
            raise ValueError(
                f"gene_list names genes the model lacks (e.g. {missing[:5]}, {len(missing)} "
                "in all): pass names from model.get_var_names()."
                if missing
                else "gene_list is empty: pass gene names, or None for every gene."
            )
        return genes.get_indexer(names)

    @torch.inference_mode()
    def get_salient_genes(
        self,
        n_top: int | None = 50,
        *,
        adata: AnnData | None = None,
        batch_size: int | None = None,
        target_mask: Sequence[bool] | np.ndarray | None = None,
        library_size: float = 1e4,
    ) -> pd.DataFrame:
        """Genes whose expression in target cells the salient space explains, ranked.

        Each target cell is decoded twice, from its shared and salient codes and from its
        shared code with the salient code set to zero; a gene's score is the mean over target
        cells of the absolute log2 fold change between the two (on the scale of counts per
        ``library_size``, pseudocount 1).

        Parameters
        ----------
        n_top
            Rows to return; ``None`` for every gene.
        adata, batch_size, target_mask
            As in :meth:`get_latent_representation`.
        library_size
            Scale of expression for the fold change.

        Returns
        -------
        pandas.DataFrame
            Sorted by ``score`` (see :func:`scdl.data.salient_gene_table`), genes the
            decoder does not fit last: ``gene``, ``score``, ``lfc_mean`` (> 0: higher because
            of the salient code), ``mean_with_salient``, ``mean_without_salient``,
            ``mean_observed`` (the target cells' counts per ``library_size``),
            ``mean_background`` (the counts of the background cells nearest the target cells
            in the shared space, each target cell's ``MATCHED_NEIGHBORS`` pooled, so they
            follow the target cells' composition; background: the cells the trained groupby
            rule calls so, not merely those outside ``target_mask``; absent when ``adata``
            holds none) and ``fits_data`` (the model's expected means, for a zero-inflated model
            without its excess zeros, fit the data on both sides of the fold change: with
            the salient code within 4-fold of ``mean_observed``, without it no more than
            4-fold past ``mean_background``, away from the decoding with it; a gene of tiny
            inverse dispersion can drift far from the data, and its fold change then says
            nothing about it).
        """
        from anndata import AnnData

        if isinstance(n_top, AnnData):  # the one model method whose first argument is not adata
            raise TypeError(
                "get_salient_genes takes the cells as `adata=` (its first argument is n_top)."
            )
        n_top = check_positive_int(n_top, "n_top", none="every gene")
        check_positive_number(library_size, "library_size", meaning="counts per cell")
        self._check_if_trained(warn=False)
        _, target = self._cells(adata, None, batch_size, True, target_mask)
        targets = np.flatnonzero(target)
        if not len(targets):  # said before a new AnnData is registered (it gains _scvi_ keys)
            raise ValueError(
                "No target cells to score genes on: every cell is background (the model's "
                "groupby value for background, or target_mask all False). Pass cells of the "
                "target group, or a target_mask marking them."
            )
        background = np.flatnonzero(self._background_mask(adata, target, target_mask))
        adata = self._validate_anndata(adata)
        table = salient_gene_table(
            self._decode_pairs(adata, targets, batch_size, with_counts=True),
            adata.var_names,
            library_size=library_size,
            background=(
                self._background_like_targets(adata, targets, background, batch_size)
                if len(background)
                else None
            ),
        )
        _warn_if_misfit_genes_rank_high(table, library_size, top=max(50, n_top or 50))
        return table if n_top is None else table.head(n_top)


def _expected_share(px) -> torch.Tensor:
    """The share of a cell's counts the model expects: a zero-inflated gene's excess zeros
    taken off its scale."""
    zi = getattr(px, "zi_probs", None)
    return px.scale if zi is None else px.scale * (1 - zi)


def _warn_if_misfit_genes_rank_high(table, library_size: float, top: int) -> None:
    """Name the genes the decoder does not fit that scored among the ``top`` of a table of
    several genes (they are ranked last instead), each with the data of both sides."""
    misfit = table[~table["fits_data"]]
    if misfit.empty or len(misfit) == len(table):  # none, or no ranking to move them in
        return
    cut = np.sort(table["score"].to_numpy())[::-1][min(top, len(table)) - 1]
    high = misfit[misfit["score"] >= cut]
    if high.empty:
        return
    shown = ", ".join(_both_sides(r) for r in high.head(5).itertuples())
    many = len(high) > 1
    warn_user(
        f"{len(high)} gene{'s' * many} with a salient score among the top {top} "
        f"{'are' if many else 'is'} decoded more than 4-fold from the data (per "
        f"{library_size:g} counts; with the salient code from the target cells' mean, "
        f"without it past the background cells like them): {shown}. The decoder does not "
        "fit such a gene (its fitted dispersion lets its mean drift), so its fold change says "
        f"nothing about the data; {'they are' if many else 'it is'} ranked last (column "
        "`fits_data`).",
        UserWarning,
    )


def _both_sides(row) -> str:
    """``GENE (decoded vs observed, with and without the salient code)``: the data of both
    sides of the fold change, whichever the check found off."""
    with_code = f"{row.mean_with_salient:.3g} decoded vs {row.mean_observed:.3g} observed"
    background = getattr(row, "mean_background", None)
    if background is None:
        return f"{row.gene} ({with_code})"
    return (
        f"{row.gene} ({with_code}; without the salient code {row.mean_without_salient:.3g} "
        f"decoded vs {background:.3g} in the background)"
    )
