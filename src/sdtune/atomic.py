"""Atomic writes: a file or folder appears under its final name only when it is complete.

Checkpoints, LoRA files, saved models, metrics and configs are written under a temporary name and then swapped
into place, so a crash (or kill -9, or a full disk) mid-write never leaves something that looks complete but
loads half a model. A write that fails because the disk is full (ENOSPC), a quota is reached (EDQUOT) or a file
size limit is hit (EFBIG) removes its temporary file and raises :class:`DiskFullError` with one clear line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdtune.errors import DiskFullError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# safetensors (Rust) reports "I/O error: No space left on device (os error 28)" without an errno attribute
_OS_ERROR = re.compile(r"os error (\d+)")
_LOW_SPACE = 1 << 20  # less than this free after a failed write: the disk is full whatever the library said


def _disk_full_errno(exc: BaseException | None, folder: Path | None = None) -> int | None:
    """The disk-full errno behind ``exc`` (its cause chain included), or None when it is another failure.

    torch.save and safetensors wrap the OS error in their own exceptions; the OSError is then found in the
    ``__context__`` chain or in the message. As a last resort, a nearly empty disk after the failure counts.
    """
    seen: set[int] = set()
    first = exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc.errno
        match = _OS_ERROR.search(str(exc))
        if match and int(match.group(1)) in DISK_FULL_ERRNOS:
            return int(match.group(1))
        exc = exc.__cause__ or exc.__context__
    if first is not None and folder is not None and free_bytes(folder) is not None:
        if free_bytes(folder) < _LOW_SPACE:  # type: ignore[operator]
            return errno.ENOSPC
    return None


def is_disk_full(exc: BaseException, folder: Path | None = None) -> bool:
    return _disk_full_errno(exc, folder) is not None


def free_bytes(path: Path) -> int | None:
    """Free bytes on the disk holding ``path`` (its nearest existing parent), None when unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def disk_full_error(what: str, target: Path, exc: BaseException, needed: int | None = None,
                    then: str = "") -> DiskFullError:
    """One line: what failed, why, how much space it needs and has, what to do."""
    code = _disk_full_errno(exc, Path(target).parent) or errno.ENOSPC
    free = free_bytes(Path(target).parent)
    space = []
    if needed:
        space.append(f"it needs about {human_bytes(needed)}")
    if free is not None:
        space.append(f"{human_bytes(free)} are free there")
    fix = ("the file system or `ulimit -f` limits the size of one file: write to another disk"
           if code == errno.EFBIG else "free some space or point output_dir at a larger disk")
    message = f"could not write {what} ({target}): {os.strerror(code)}"
    if space:
        message += f"; {', '.join(space)}"
    message += f". Nothing half-written was left; {fix}" + (f", then {then}" if then else "")
    return DiskFullError(message)


@contextmanager
def disk_full_as_error(what: str, target: Path, needed: int | None = None, then: str = "") -> Iterator[None]:
    """Turn a disk-full failure inside the block into :class:`DiskFullError`; other errors pass unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if not is_disk_full(exc, Path(target).parent):
            raise
        raise disk_full_error(what, target, exc, needed, then) from None


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def umask_mode(path: Path) -> Path:
    """Give ``path`` (a file, or a folder with everything in it) the mode a plain ``open()`` would have given it.

    safetensors' ``save_file`` and ``tempfile.mkstemp``/``mkdtemp`` create 0600 files and 0700 folders whatever the
    umask, so a shared folder, or an AUTOMATIC1111/ComfyUI server running as another user, could not read the
    outputs. Called on every temporary file or folder just before it takes its final name: 0644 / 0755 under umask
    022. Links are left alone.
    """
    mask = current_umask()
    path = Path(path)
    items = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for item in items:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file (a config, a manifest, metrics)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with disk_full_as_error(path.name, path):
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def atomic_save(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` (e.g. ``image.save``) on a temporary file beside ``path``, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with disk_full_as_error(path.name, path):
            write(tmp)
            umask_mode(tmp)
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_copy(source: Path, path: Path) -> Path:
    """Copy the file ``source`` to ``path`` through a temporary name (:func:`atomic_save`): a copy cut short by a
    full disk or a kill never lies under ``path`` looking complete (a weights file handed to another tool)."""
    return atomic_save(path, lambda tmp: shutil.copyfile(source, tmp))


def replace_folder(tmp: Path, target: Path) -> Path:
    """Move the finished folder ``tmp`` to ``target``, replacing an older ``target`` without a gap.

    Its files and folders take the umask's modes first (:func:`umask_mode`).
    """
    umask_mode(tmp)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def write_folder(target: Path, write: Callable[[Path], None], what: str | None = None,
                 needed: int | None = None) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder beside ``target``, then swap it into place.

    On any failure the temporary folder is removed and an existing ``target`` is left as it was.
    """
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with disk_full_as_error(what or f"{target.name}/", target, needed):
            tmp.mkdir(parents=True)
            write(tmp)
            return replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def removing_new_folders(folder: Path) -> Iterator[None]:
    """Run the block; if it fails, remove ``folder`` and the parents of it that did not exist before, as far as
    they are empty (a file some other writer put there keeps its folder)."""
    path = Path(folder).expanduser().absolute()
    made: list[Path] = []  # deepest first
    while not path.exists() and not path.is_symlink() and path != path.parent:
        made.append(path)
        path = path.parent
    try:
        yield
    except BaseException:
        for new in made:
            try:
                new.rmdir()
            except FileNotFoundError:  # never made (a deeper one is made only after its parents)
                continue
            except OSError:  # not empty: it and its parents stay
                break
        raise
