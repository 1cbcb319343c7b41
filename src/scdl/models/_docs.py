"""Docstring text shared by several models, written once (docrep, as scvi-tools does)."""

from __future__ import annotations

from docrep import DocstringProcessor

counts_dsp = DocstringProcessor(
    param_adata="adata\n    AnnData with raw counts (cells x genes).",
    param_layer="layer\n    Layer holding raw counts; ``None`` uses ``adata.X``.",
    train_seed=(
        "As in scvi-tools, the weights' initialisation, the data split and the minibatch order\n"
        "draw from ``scvi.settings.seed``: set it before building the model\n"
        "(``scvi.settings.seed = 0``) and the same seed gives the same model on CPU; unset\n"
        "(``None``), every run differs."
    ),
    raises_counts=(
        "KeyError\n"
        "    A layer or obs column does not exist.\n"
        "ValueError, TypeError\n"
        "    The counts are not raw counts (non-integer, negative, NaN/inf). ``adata`` is left\n"
        "    unchanged. Genes with no counts are valid and kept; cells without counts and\n"
        "    repeated gene names are kept, with a warning."
    ),
)
