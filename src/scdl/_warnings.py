"""Warnings that point at the user's line.

A warning raised deep inside scdl (or inside a Lightning callback or scvi-tools' training loop
that scdl runs) is shown at the first frame outside scdl and those libraries: the user's call,
wherever in the stack the check sits. A fixed ``stacklevel`` is right for one call path only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

_SCDL = os.path.dirname(os.path.abspath(__file__))


def _skipped_roots() -> tuple[str, ...]:
    roots = [_SCDL]
    for name in ("lightning", "pytorch_lightning", "scvi", "torch"):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            roots.append(os.path.dirname(os.path.abspath(path)))
    return tuple(roots)


def _skipped(filename: str, roots: tuple[str, ...]) -> bool:
    if os.path.basename(filename) == "contextlib.py":  # `with` blocks around scdl's calls
        return True
    path = os.path.abspath(filename)
    return any(path == root or path.startswith(root + os.sep) for root in roots)


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the first frame outside scdl and the libraries
    it trains with (Lightning, scvi-tools, torch)."""
    roots = _skipped_roots()
    frame, level = sys._getframe(1), 1
    while frame is not None and _skipped(frame.f_code.co_filename, roots):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)  # + 1: this function's own frame


#: scvi-tools' warning on a category of fewer than 3 cells names an integer code in the
#: column it writes (``adata.obs['_scvi_batch']``) and the smallest category only; scdl's
#: setup checks name every such category of a batch or covariate column by its value
#: (``scdl.data.check_count_setup``); labels keep scvi-tools' warning
SMALL_CATEGORY_MESSAGE = (
    r"Category .* in adata\.obs\['(?!_scvi_labels)[^']*'\] has fewer than 3 cells"
)


#: the same warning on scvi-tools' own labels column (``_scvi_labels``)
SMALL_LABEL_MESSAGE = r"Category .* in adata\.obs\['_scvi_labels'\] has fewer"


@contextlib.contextmanager
def registering_quietly(*, labels_said: bool = False):
    """A context for ``AnnDataManager.register_fields``: without scvi-tools' small-category
    warning, which scdl's own check has said in the user's terms (``labels_said``: for the
    labels too, where the caller's check names small types, as the annotator's does)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SMALL_CATEGORY_MESSAGE)
        if labels_said:
            warnings.filterwarnings("ignore", message=SMALL_LABEL_MESSAGE)
        yield


@contextlib.contextmanager
def scanpy_scratch():
    """scanpy at most at "warning" verbosity for the duration (also a decorator): on an
    AnnData of scdl's own (a scratch PCA, graph, Leiden or UMAP), scanpy's "finished: added
    .obsp['connectivities'] ..." hints at verbosity 3 named fields the user's AnnData never
    gets, as if scdl had overwritten the user's own. scanpy's warnings still show."""
    import scanpy as sc

    level = sc.settings.verbosity  # 0 error, 1 warning, 2 info, 3 hint, 4 debug
    with level.override(min(int(level), 1)):  # never raised (a user's "error" stays)
        yield
