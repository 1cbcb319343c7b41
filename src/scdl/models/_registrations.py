"""Dropping a model's registrations from scvi-tools' class-level stores when it is freed.

scvi-tools keeps every AnnData a model class registers (``setup_anndata``) and every model's
own view of them in dictionaries on the class, for the session (scvi-tools#2053). For the
user's AnnData that is what lets ``Model(adata)`` run again; for an AnnData scdl makes for one
model (a tool's training copy of the selected genes, a query's gene subset, the AnnData of a
save read back) it kept a copy of the data per call that nothing could free: ten
``tl.integrate`` reruns held ten training copies.
"""

from __future__ import annotations

#: where scvi-tools' setup_anndata records an AnnData's registration (in the AnnData)
_UNS_KEYS = ("_scvi_uuid", "_scvi_manager_uuid")


def forget_registrations(cls, model_id: str, owned: dict) -> None:
    """Remove model ``model_id``'s entry of ``cls``'s per-instance store, and the class-store
    entries of the AnnData scdl registered for it alone (``owned``: id -> (the manager scdl
    registered, as ``id()``, and a weak reference to the AnnData)) that no other live model
    of ``cls`` uses and nobody registered again since (a copy the user set up carries the
    same id). An owned AnnData still alive (the user kept ``model.adata``) loses its record
    of the registration too, so that it can be set up again."""
    cls._per_instance_manager_store.pop(model_id, None)
    # copies of the stores: another thread may register while this runs
    in_use = {u for store in list(cls._per_instance_manager_store.values()) for u in store}
    for uuid, (manager_id, adata_ref) in list(owned.items()):
        current = cls._setup_adata_manager_store.get(uuid)
        if uuid in in_use or current is None or id(current) != manager_id:
            continue
        cls._setup_adata_manager_store.pop(uuid, None)
        adata = adata_ref()
        if adata is not None and adata.uns.get(_UNS_KEYS[0]) == uuid:
            for key in _UNS_KEYS:
                adata.uns.pop(key, None)
