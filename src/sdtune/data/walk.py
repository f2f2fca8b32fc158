"""Walking a dataset folder, and the one rule for links in it (what ``sdtune.data.folders`` reads by).

The rule, as Hugging Face ``datasets`` reads an imagefolder: a file belongs to the dataset by its **listed path**,
the path of the entry inside the folder (``photo.png``, ``album/a.png``), never by where a link points. So

* links to files and links to folders are followed, wherever they point (a curated set of links into a photo
  library is a dataset like any other); the listed path is the image's name, its caption file is looked up next
  to the listed path, and reading follows the link (``dataset build`` copies the target's pixels, never a link);
* what must lie in the folder is the listed path: a metadata row ``../x.png`` or ``/abs/x.png`` names a file
  outside the folder and is refused, by name (``safe_member``);
* a broken link (its target is gone, or links point at each other in a circle) is reported by name, never
  dropped silently; a link to a folder that contains it (a loop) is reported and not followed again.

Paths are compared lexically (``os.path.abspath``), never through ``Path.resolve()``: resolving a link turns
``photo.png`` into ``/library/photo.png`` and would make every link look like a file outside the folder.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from sdtune.data.report import Problem


def lexical(path: Path | str) -> Path:
    """``path`` made absolute and normalised (``a/./b/../c`` -> ``a/c``) without following any link."""
    return Path(os.path.abspath(path))


def safe_member(root: Path, name: str) -> Path | str:
    """``root / name`` (lexically normalised) when the listed path ``name`` lies inside ``root``; else the reason.

    Links are not resolved: ``name`` may be a link to a file anywhere (the listed path is what counts).
    """
    if not name or not name.strip():
        return "empty file name"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return f"absolute path {name!r} refused: rows must name files relative to the source folder"
    base = lexical(root)
    path = lexical(base / name)
    if path == base or not path.is_relative_to(base):
        return (f"path {name!r} escapes the source folder; refused (rows name files inside it; a link placed "
                "inside it may point anywhere)")
    return path


def link_problem(path: Path) -> str | None:
    """Why the link ``path`` cannot be read (broken, or a circle of links); None when it is not a broken link."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as exc:
        target = os.readlink(path)
        if exc.errno == errno.ELOOP:
            return f"a link ({path.name} -> {target}) in a circle of links: not used; fix or remove the link"
        return f"a broken link: its target {target} does not exist: not used; fix or remove the link"
    return None


@dataclass
class Walk:
    """The visible files of a folder (links followed, listed paths kept) and its unreadable links."""

    files: list[Path] = field(default_factory=list)
    broken: list[Path] = field(default_factory=list)  # links that lead nowhere (their listed paths)
    problems: list[Problem] = field(default_factory=list)  # link loops not followed


def walk(folder: Path) -> Walk:
    """Every visible file under ``folder`` (hidden names skipped, as Hugging Face does), in a stable order.

    Links to files and folders are followed; a link to a folder already being walked (a loop) is reported and not
    followed; broken links are collected in ``Walk.broken`` for the reader to name.
    """
    found = Walk()
    _walk(Path(folder), set(), found)
    found.files.sort()
    found.broken.sort()
    return found


def _walk(folder: Path, ancestors: set[tuple[int, int]], found: Walk) -> None:
    info = os.stat(folder)
    here = (info.st_dev, info.st_ino)
    ancestors = ancestors | {here}
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        found.problems.append(Problem(str(folder), f"cannot list this folder ({exc.strerror or exc}): its files are "
                                      "not used", "warning"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = folder / entry.name
        try:
            mode = os.stat(path).st_mode
        except OSError:
            if entry.is_symlink():
                found.broken.append(path)
            continue
        if stat.S_ISDIR(mode):
            target = os.stat(path)
            if (target.st_dev, target.st_ino) in ancestors:
                found.problems.append(Problem(str(path), f"a link to a folder that contains it ({os.readlink(path)}): "
                                              "a loop, not followed", "warning"))
                continue
            _walk(path, ancestors, found)
        elif stat.S_ISREG(mode):
            found.files.append(path)
