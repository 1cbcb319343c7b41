"""Dropping a model's registrations from scvi-tools' class-level stores when it is freed.

scvi-tools keeps every AnnData a model class registers (``setup_anndata``) and every model's
own view of them in dictionaries on the class, for the session (scvi-tools#2053). For the
user's AnnData that is what lets ``Model(adata)`` run again; for an AnnData scdl makes for one
model (a tool's training copy of the selected genes, a query's gene subset, the AnnData of a
save read back) it kept a copy of the data per call that nothing could free: ten
``tl.integrate`` reruns held ten training copies.
"""

from __future__ import annotations


def forget_registrations(cls, model_id: str, own_adata_ids: set[str]) -> None:
    """Remove model ``model_id``'s entry of ``cls``'s per-instance store, and the class-store
    entries of the AnnData in ``own_adata_ids`` that no other live model of ``cls`` uses."""
    cls._per_instance_manager_store.pop(model_id, None)
    in_use = {uuid for store in cls._per_instance_manager_store.values() for uuid in store}
    for uuid in own_adata_ids - in_use:
        cls._setup_adata_manager_store.pop(uuid, None)
