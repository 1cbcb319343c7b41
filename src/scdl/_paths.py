"""Paths a user types."""

from __future__ import annotations

import os
from pathlib import Path


def user_path(path: str | os.PathLike) -> Path:
    """``path`` with a leading ``~`` or ``~/`` read as the home folder, as the shell reads it
    (a folder named ``~`` in the working folder is what ``rm -rf ~`` then removes). Another
    user's ``~name`` is left as written: ``~old_models`` is more likely a folder's own name."""
    text = os.fspath(path)
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if text == "~" or text.startswith(tuple(f"~{s}" for s in seps)):
        return Path(text).expanduser()
    return Path(path)
