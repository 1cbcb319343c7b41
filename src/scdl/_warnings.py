"""Warnings that point at the user's line.

A warning raised deep inside scdl (or inside a Lightning callback or scvi-tools' training loop
that scdl runs) is shown at the first frame outside scdl and those libraries: the user's call,
wherever in the stack the check sits. A fixed ``stacklevel`` is right for one call path only.
"""

from __future__ import annotations

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
