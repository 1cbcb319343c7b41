"""Gene alignment between a reference (a trained model) and a query AnnData."""

from __future__ import annotations

import pandas as pd


def gene_mismatch_message(reference: pd.Index, query: pd.Index) -> str:
    """Explain how a query's genes differ from the reference's, and how to fix it."""
    ref, qry = pd.Index(reference), pd.Index(query)
    missing = ref.difference(qry)
    extra = qry.difference(ref)
    if len(missing):
        return (
            f"The query lacks {len(missing)} of the model's {len(ref)} genes "
            f"(e.g. {missing[:5].tolist()}). Use the same gene identifiers as the reference "
            "(symbols vs Ensembl IDs?), or pad the missing genes with zeros with "
            "`VAE.prepare_query_anndata(query, model)` if only a few are absent."
        )
    if len(extra):
        return (
            f"The query has {len(extra)} genes the model was not trained on. Subset it to the "
            "model's genes: `query = query[:, model.get_var_names()].copy()`."
        )
    return (
        "The query has the model's genes in a different order. Reorder them: "
        "`query = query[:, model.get_var_names()].copy()`."
    )
