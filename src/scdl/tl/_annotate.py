"""``scdl.tl.annotate``: cell-type labels, confidence and probabilities written into AnnData."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

    from scdl.models import CellTypeTransformer


def annotate(
    adata: AnnData,
    *,
    model: CellTypeTransformer | str | os.PathLike = "pbmc_kang2018",
    layer: str | None = None,
    key_added: str = "scdl_cell_type",
    unknown: bool = True,
    min_gene_overlap: float = 0.5,
    batch_size: int = 1024,
    adapt_to_query: float = 0.0,
    copy: bool = False,
) -> AnnData | None:
    """Annotate cell types with a trained or pretrained :class:`~scdl.models.CellTypeTransformer`.

    Genes are matched by name to the model's; genes the data lacks count as unmeasured.
    Cells unlike every reference type (see the model's calibrated thresholds) are called
    ``"Unknown"``. About ``unknown_rate`` (5%) of cells like the reference are; cells under a
    strong shift the reference never saw (e.g. IFN-stimulated cells annotated with a control
    reference) are unlike it and are called Unknown more often (20-37% on Kang PBMCs): check
    ``obs[f"{key_added}_confidence"]``, or pass ``unknown=False`` to keep every cell's most
    probable type.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts in ``X`` or ``layer``.
    model
        A trained annotator, or a pretrained one by name (:func:`scdl.pretrained.available`),
        folder, archive or URL (see :func:`scdl.pretrained.load`).
    layer
        Layer with raw counts; ``None`` uses ``adata.X``.
    key_added
        Key under which results are written (see below).
    unknown
        Call unlike cells ``"Unknown"``; ``False`` keeps every cell's most probable type.
    min_gene_overlap
        Smallest fraction of the model's genes that ``adata`` must hold.
    batch_size
        Cells per forward pass.
    adapt_to_query
        Blend (0-1) of the query's own per-gene statistics into the standardisation; ``0.5``
        lowers the Unknown calls when the whole query is shifted from the reference (e.g.
        stimulated cells with a control reference); only for queries holding a mix of cell
        types. See
        :meth:`~scdl.models.CellTypeTransformer.annotate_cells`.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` if ``copy=True``, with

    ``adata.obs[key_added]``
        Cell type (categorical), ``"Unknown"`` for flagged cells.
    ``adata.obs[f"{key_added}_confidence"]``
        Probability of the most probable type.
    ``adata.obs[f"{key_added}_unknown"]``
        Whether the cell was flagged as unlike the reference (bool).
    ``adata.obsm[f"{key_added}_probabilities"]``
        DataFrame of probabilities, cells x cell types.
    ``adata.uns[key_added]``
        Model, cell types, gene overlap, thresholds and the fraction called Unknown.
    """
    from scdl.models import CellTypeTransformer

    if isinstance(model, str | os.PathLike):
        from scdl.pretrained import load

        model_name = str(model)
        model = load(model)
    elif isinstance(model, CellTypeTransformer):
        model_name = "CellTypeTransformer (in memory)"
    else:
        raise TypeError(
            "model must be a CellTypeTransformer or the name/path of a pretrained annotator "
            f"(see scdl.pretrained.available()), got {type(model).__name__}."
        )
    # everything is computed (and checked) before anything is written
    calls, probs = model.annotate_cells(
        adata,
        layer=layer,
        min_gene_overlap=min_gene_overlap,
        batch_size=batch_size,
        adapt_to_query=adapt_to_query,
    )
    n_present = int(pd.Index(model.get_var_names()).isin(adata.var_names).sum())
    adata = adata.copy() if copy else adata
    label = calls["label"] if unknown else calls["label_forced"]
    categories = model.labels + (["Unknown"] if unknown else [])
    adata.obs[key_added] = pd.Categorical(label.to_numpy(), categories=categories)
    adata.obs[f"{key_added}_confidence"] = calls["confidence"].to_numpy()
    adata.obs[f"{key_added}_unknown"] = calls["is_unknown"].to_numpy() & unknown
    adata.obsm[f"{key_added}_probabilities"] = probs
    adata.uns[key_added] = {
        "model": model_name,
        "cell_types": list(model.labels),
        "n_genes_model": len(model.get_var_names()),
        "n_genes_matched": n_present,
        "confidence_threshold": float(model.module.confidence_threshold),
        "novelty_thresholds": dict(
            zip(model.labels, model.module.novelty_threshold.cpu().tolist(), strict=True)
        ),
        "unknown_fraction": float(adata.obs[f"{key_added}_unknown"].mean()),
    }
    return adata if copy else None
