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


def as_user_created(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions of a file (or folder) the user creates: tempfile and
    pooch make theirs 0600 / 0700 whatever the umask, so a cache entry or a file written
    through one was unreadable by the group a shared cache or project folder is for."""
    umask = os.umask(0)  # read by setting it: restored at once
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)
