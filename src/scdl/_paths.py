"""Paths a user types."""

from __future__ import annotations

import os
import secrets
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
    through one was unreadable by the group a shared cache or project folder is for. The
    mode is read off a new entry beside it (:func:`new_entry`), not by setting the umask to
    read it: that left every thread of the session creating files under umask 0 meanwhile."""
    path = Path(path)
    folder = path.is_dir()
    probe = new_entry(path.parent, f".{path.name}.mode.", folder=folder)
    try:
        mode = probe.stat().st_mode & 0o7777
    finally:
        if folder:
            probe.rmdir()
        else:
            probe.unlink()
    os.chmod(path, mode)


def written_path(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` creates or replaces: ``~`` read as home, a link followed
    to its target (as anndata writes through links)."""
    return Path(os.path.realpath(user_path(path)))


def new_entry(parent: Path, prefix: str, suffix: str = "", *, folder: bool = False) -> Path:
    """A new empty file (or folder) in ``parent`` under a name no other process holds, made
    with the mode any new one gets (0666 / 0777 less the umask, or a folder's default ACL):
    tempfile's are 0600 / 0700, and changing that after lowered a default ACL's mask."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                path.mkdir()
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"No free temporary name in {parent}.")
