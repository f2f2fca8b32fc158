"""The workspace: one folder holding the job store, the job logs, datasets and runs, and nothing the API may leave.

Server and CLI find it the same way: ``--workspace DIR``, else ``$SDTUNE_WORKSPACE``, else
``$XDG_DATA_HOME/sdtune`` (``~/.local/share/sdtune``): a fixed place, so that `sdtune serve` started from any folder
and `sdtune jobs list` typed in another terminal see the same queue.

Layout::

    WS/jobs.sqlite        the job store (sdtune.jobs.store)
    WS/jobs/<id>.log      each job's log (stdout + stderr of its unit of work)
    WS/worker.lock        held by the running worker (`sdtune serve` or `sdtune jobs work`)
    WS/datasets/<name>/   uploaded / built datasets
    WS/runs/<name>/       run folders of train jobs (and recipe / personalize outputs)
    WS/uploads/           incoming files, checked before they move into datasets/

:func:`inside` is the one gate for every path a request names: relative, no ``..``, and still inside the workspace
once symlinks are resolved.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from sdtune.errors import SdtuneError

ENV = "SDTUNE_WORKSPACE"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class OutsideWorkspace(SdtuneError):
    """A path that would read or write outside the workspace (``..``, absolute, a symlink out)."""


def default_workspace() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sdtune"


def find_workspace(option: str | Path | None = None) -> Path:
    """``--workspace``, else ``$SDTUNE_WORKSPACE``, else :func:`default_workspace`; created if missing."""
    chosen = option or os.environ.get(ENV) or default_workspace()
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise SdtuneError(f"workspace {path} is a file; give a folder with --workspace or {ENV}")
    from sdtune.writable import check_writable

    check_writable(path, "--workspace" if option else ENV if os.environ.get(ENV) else "workspace",
                   f"choose a writable folder with --workspace FOLDER or {ENV}=..., or fix its permissions")
    for sub in ("jobs", "datasets", "runs", "uploads"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str, what: str = "name") -> str:
    """A dataset / run name: one path component of letters, digits, ``.``, ``_``, ``-`` (no ``..``)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", "..") or ".." in name:
        raise SdtuneError(f"{what} {name!r} is not allowed: use letters, digits, '.', '_' or '-' (at most 64, "
                          "starting with a letter or digit)")
    return name


def inside(workspace: Path, relative: str | Path, what: str = "path") -> Path:
    """``workspace / relative``, refused unless it stays inside the workspace.

    Refused: absolute paths, any ``..`` component, a drive or backslash path, NUL bytes, and any path whose
    resolved form (symlinks followed) leaves the workspace. Raises :class:`OutsideWorkspace` naming the path.
    """
    text = str(relative)
    if "\x00" in text or "\\" in text or (len(text) > 1 and text[1] == ":"):
        raise OutsideWorkspace(f"{what} {text!r} is not a plain relative path inside the workspace")
    parts = PurePosixPath(text).parts
    if not parts or text.startswith("/") or PurePosixPath(text).is_absolute():
        raise OutsideWorkspace(f"{what} {text!r} must be relative to the workspace (absolute paths are refused)")
    if any(part == ".." for part in parts):
        raise OutsideWorkspace(f"{what} {text!r} contains '..': paths must stay inside the workspace")
    root = workspace.resolve()
    target = (root / Path(*parts)).resolve()
    if target != root and root not in target.parents:
        raise OutsideWorkspace(f"{what} {text!r} leads outside the workspace (a symlink?): refused")
    return target


def relative_name(workspace: Path, path: Path) -> str:
    """How a path inside the workspace is shown to users of the page (``runs/me``)."""
    try:
        return path.relative_to(workspace).as_posix()  # stored paths are absolute and resolved: no file-system calls
    except ValueError:
        pass
    try:
        return path.resolve().relative_to(workspace.resolve()).as_posix()
    except ValueError:
        return str(path)
