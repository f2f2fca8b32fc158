"""Can a command write into a folder? Asked once, before any work, so a run never dies late on a write.

A run that loads a model, encodes a dataset and trains for an hour must not end with a ``PermissionError`` traceback
when it first writes a feature-cache entry, a class image, a checkpoint or a sample. Every command asks here,
before its first step, about every folder it will write into, and refuses with one line naming the folder, the
setting it came from and the fix (:func:`check_writable`); the feature cache, which only speeds training up, is
skipped with a note instead (:func:`write_problem`).

The answer comes from doing, not from mode bits (``os.access`` says yes to root on a folder root cannot write:
``chattr +i``, a read-only mount, ``/sys``): a probe file is created in the folder and removed. A folder that does
not exist yet is not created; the probe goes into its nearest existing parent (a folder made there can hold the
rest of the path). A path through a file (``out.txt/run``) is named as such.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from sdtune.errors import ConfigError

_WHY = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "part of the path is a file, not a folder",
    errno.ENAMETOOLONG: "the path is too long",
}


def _reason(exc: OSError) -> str:
    return _WHY.get(exc.errno or 0, exc.strerror or str(exc)).lower()


def write_problem(folder: Path) -> str | None:
    """Why nothing can be written into ``folder`` (e.g. ``"permission denied"``), or None when it can.

    An existing folder gets a probe file; a missing one a probe folder in its nearest existing parent (nothing is
    left behind either way). A file on the path (``folder`` itself, or a parent) is a problem of its own.
    """
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        return f"{existing} is a broken link"
    if not existing.is_dir():
        return "it is a file, not a folder" if existing == path else f"{existing} is a file, not a folder"
    try:
        if existing == path:
            fd, probe = tempfile.mkstemp(prefix=".sdtune-write-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".sdtune-write-probe-", dir=existing))
    except OSError as exc:
        where = "" if existing == path else f" in {existing}, where it would be created"
        return _reason(exc) + where
    return None


def replace_problem(file: Path) -> str | None:
    """Why an existing ``file`` cannot be replaced although its folder is writable (immutable or append-only,
    ``chattr +i``/``+a``, which root cannot override; a read-only file system), or None.

    Files are replaced by renaming a finished copy over them (``sdtune.atomic``), which mode bits do not stop: a
    0444 file in a writable folder is no problem, so only EPERM/EROFS from opening it for writing count.
    """
    path = Path(file).expanduser()
    if not path.is_file():
        return None
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EROFS):
            return _reason(exc) + " (an immutable or append-only file)" if exc.errno == errno.EPERM else _reason(exc)
    return None


def check_writable(folder: Path, key: str, fix: str | None = None) -> None:
    """Raise :class:`ConfigError` in one line when ``folder`` cannot be written (see :func:`write_problem`).

    ``key``: the setting or option the folder came from (``output_dir``, ``--out``, ``data.class_dir``,
    ``SDTUNE_CACHE``); ``fix``: what to do, by default choosing another folder with that key or fixing permissions.
    """
    problem = write_problem(folder)
    if problem is None:
        return
    raise ConfigError(unwritable(folder, key, problem, fix))


def unwritable(folder: Path, key: str, problem: str, fix: str | None = None) -> str:
    """The one line that says a folder cannot be written, where it came from and what to do."""
    setting = f"{key} FOLDER" if key.startswith("-") else f"{key}=..."
    fix = fix or f"choose a writable folder with {setting} or fix its permissions"
    return f"cannot write to {Path(folder).expanduser().absolute()} ({key}): {problem} — {fix}"


NO_WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def denied_line(exc: BaseException) -> str | None:
    """One line for a permission failure that got past the checks (a file made read-only mid-run, a folder no
    command checks), or None for any other error: the CLI prints it instead of a traceback."""
    if not isinstance(exc, OSError) or exc.errno not in NO_WRITE_ERRNOS:
        return None
    where = next((f for f in (exc.filename2, exc.filename) if f is not None), "a file")  # a rename: its target
    return (f"cannot use {where}: {_reason(exc)} — fix its permissions (or choose another folder for it) and run "
            "again")
