"""Checks a trained model runs on a new AnnData before scvi-tools registers it, and the cell
positions its methods' ``indices`` name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from scdl._warnings import registering_quietly

from ._base import SCVI_UUID

if TYPE_CHECKING:
    from anndata import AnnData


class CheckedQueryMixin:
    """Check a new AnnData passed to a trained model's methods before scvi-tools uses it.

    scvi-tools transfers the registration to a new AnnData without comparing gene names (the
    same number of genes in another order is accepted) or checking the counts; this runs
    :func:`scdl.data.check_query` first, once per AnnData. The error for unseen categories
    says the model class's ``_unseen_categories_fix`` (see :class:`SafeSaveLoadMixin`).

    An AnnData registered before is checked for what may have changed since: a registered
    obs column edited (:func:`scdl.data.edited_obs_columns`; a query is checked and registered
    again, the model's own AnnData refused) and counts normalised in place
    (:func:`scdl.data.sampled_counts_ok`, then the full check's error). One that another
    model's setup has registered since is registered again with this model's categories
    first, as scvi-tools' models do.
    """

    def _registered_here(self, adata) -> bool:
        """Whether ``adata`` itself (not a copy) is registered with this model instance."""
        uns = getattr(adata, "uns", None)
        if uns is None or SCVI_UUID not in uns:
            return False
        store = type(self)._per_instance_manager_store.get(self.id, {})
        manager = store.get(uns[SCVI_UUID])
        return manager is not None and manager.adata is adata

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        from scdl.data import (
            check_counts,
            check_query,
            counts_place_fix,
            edited_obs_columns,
            sampled_counts_ok,
        )

        if adata is None:
            self._require_adata("use", takes_adata=True)
        target = self.adata if adata is None else adata
        own = target is self.adata
        registered = own or self._registered_here(target)
        if registered:
            self._replay_if_registered_elsewhere(target)
        edited = edited_obs_columns(target, self.registry_) if registered else []
        if not registered or edited:
            check_query(  # an edited column with a new category is refused here
                target,
                self.registry_,
                model=type(self).__name__,
                unseen_fix=self._unseen_categories_fix,
            )
        if edited and own:
            # re-registering the model's own AnnData would rebuild its category mappings
            raise ValueError(
                f"adata.obs {edited} changed after the {type(self).__name__} was set up on this "
                "AnnData; the model would read the values registered then. Pass a copy to use "
                "the new values, e.g. `model.get_latent_representation(adata.copy())`, or "
                "restore the column."
            )
        if edited:  # a query registered earlier: register it again, with its new values
            with registering_quietly():  # small batches do not matter to a trained model
                self._register_manager_for_instance(self.adata_manager.transfer_fields(target))
        elif registered:  # checked in full at registration; normalised in place since?
            layer = self.registry_["setup_args"].get("layer")
            if not sampled_counts_ok(target, layer):
                fix = counts_place_fix(type(self).__name__, layer, target)
                check_counts(target, layer, fix=fix, warn_zero_cells=False, warn_normalised=False)
        with registering_quietly():  # scvi-tools registers a new AnnData here
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def _make_data_loader(self, *args, batch_size=None, **kwargs):
        """scvi-tools' loader, every method's way to the cells: a numpy-integer ``batch_size``
        (which the checks accept) as the ``int`` torch's DataLoader requires."""
        batch_size = None if batch_size is None else int(batch_size)
        return super()._make_data_loader(*args, batch_size=batch_size, **kwargs)

    def _check_cells(self, adata: AnnData | None, indices, batch_size) -> np.ndarray | None:
        """Refuse ``indices`` or ``batch_size`` that scvi-tools' data loader would fail on,
        before :meth:`_validate_anndata` registers a new AnnData (which writes into it); the
        cells' positions (``None`` without data, which ``_validate_anndata`` refuses)."""
        from scdl.data import check_is_anndata, check_positive_int

        if adata is not None:
            check_is_anndata(adata)
        check_positive_int(batch_size, "batch_size", none="scvi-tools' default")
        source = self.adata if adata is None else adata
        return None if source is None else cell_positions(indices, source.n_obs)


def cell_positions(indices, n_obs: int) -> np.ndarray:
    """Positions of the cells ``indices`` names: integer positions, a boolean mask of the
    ``n_obs`` cells (as scvi-tools' loaders read it), or ``None`` for every cell."""
    if indices is None:
        return np.arange(n_obs)
    idx = np.asarray(indices)
    if idx.size == 0:
        raise ValueError("`indices` selects no cells; pass at least one position, or None.")
    if idx.dtype == bool:
        if idx.shape != (n_obs,):
            raise ValueError(f"A boolean `indices` mask needs one value per cell ({n_obs}).")
        idx = np.flatnonzero(idx)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError("`indices` must be integer positions or a boolean mask of the cells.")
    if idx.min() < -n_obs or idx.max() >= n_obs:
        raise IndexError(f"`indices` hold positions outside the {n_obs} cells.")
    return idx
