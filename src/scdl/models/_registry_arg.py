"""The ``registry`` argument every scdl model takes second, as scvi-tools' models do."""

from __future__ import annotations


def check_registry(registry, model: str, *, second: str = "") -> None:
    """``registry`` (a model's second positional argument, as in scvi-tools) must be a saved
    registry dict or ``None``: anything else passed there (another AnnData, a number meant as
    an option) was silently ignored. ``second`` names where a second AnnData belongs."""
    from anndata import AnnData

    if registry is None or isinstance(registry, dict):
        return
    if isinstance(registry, AnnData) and second:
        fix = f"pass it as `{second}=`"
    else:
        fix = f"options are keyword arguments, e.g. `{model}(adata, n_latent=20)`"
    raise TypeError(
        f"{model}'s second argument is `registry` (a saved registry, as `load` passes it), got "
        f"{type(registry).__name__}: {fix}."
    )
