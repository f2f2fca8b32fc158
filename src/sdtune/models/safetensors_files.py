"""Reading ``.safetensors`` files: a damaged one is one line that names it and says what to do.

safetensors checks a file's header against the file's size when it opens it. A file cut short (a copy or download
interrupted, a disk that filled) fails with ``SafetensorError: Error while deserializing header: incomplete
metadata, file not fully covered`` (or ``header too small``, ``invalid header length``), a message that names
neither the file nor a fix, under a traceback. Every reader of a safetensors file in sdtune goes through
:func:`open_safetensors` / :func:`load_safetensors`, or wraps a library loader given such a file (diffusers'
``load_lora_weights``, ``from_single_file``, ``from_pretrained`` of a folder) in :func:`reading_safetensors`. They
turn exactly that failure into a :class:`~sdtune.errors.DamagedFileError`; any other error (a missing file, a
tensor that does not fit) passes through as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdtune.errors import DamagedFileError

HEADER_ERROR = "Error while deserializing header"  # safetensors' prefix for a header that does not fit the file
# what safetensors reports for a file that is not one at all (a text file renamed); the rest is a file cut short
_FOREIGN = ("header too large", "invalid JSON in header", "invalid header start")
DEFAULT_FIX = "copy it again from where it came from, or make it again"
WRITTEN_FIX = "sdtune wrote it just now and it does not read back: check the disk (free space, errors), then run again"


def header_damage(exc: BaseException | None) -> str | None:
    """What safetensors found wrong with a file's header (``safetensors: incomplete metadata, file not fully
    covered``) when ``exc`` or an exception behind it (loaders wrap it in their own) is that failure; None for
    anything else."""
    from safetensors import SafetensorError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, SafetensorError) and text.startswith(HEADER_ERROR):
            return f"safetensors: {text.removeprefix(HEADER_ERROR).lstrip(': ') or 'unreadable header'}"
        exc = exc.__cause__ or exc.__context__
    return None


def damaged_message(file: Path | str, detail: str, fix: str | None = None) -> str:
    """``FILE is damaged or incomplete (a copy cut short, or a disk that filled; DETAIL): FIX``; ``detail``: what
    the reader found, named (``safetensors: incomplete metadata, file not fully covered``)."""
    foreign = any(mark in detail for mark in _FOREIGN)
    why = "is damaged or not a safetensors file (another kind of file renamed, or garbled" if foreign \
        else "is damaged or incomplete (a copy cut short, or a disk that filled"
    return f"{file} {why}; {detail}): {fix or DEFAULT_FIX}"


def damaged_error(file: Path | str, detail: str, fix: str | None = None) -> DamagedFileError:
    """The one-line error for a damaged ``file`` (see :func:`damaged_message`)."""
    return DamagedFileError(damaged_message(file, detail, fix), file=str(file), detail=detail)


def header_problem(file: Path) -> str | None:
    """What is wrong with ``file``'s header (None: it opens); reads the header only, not the tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), "pt"):
            return None
    except Exception as exc:  # noqa: BLE001 - only the header failure is an answer; others say nothing here
        return header_damage(exc)


def first_damaged(folder: Path) -> tuple[Path, str] | None:
    """(the first ``.safetensors`` file under ``folder`` whose header does not fit it, what is wrong), None: none."""
    for file in sorted(Path(folder).rglob("*.safetensors")):
        if file.is_file() and (detail := header_problem(file)) is not None:
            return file, detail
    return None


@contextmanager
def reading_safetensors(path: Path | str, fix: str | None = None) -> Iterator[None]:
    """Within the block, a damaged safetensors file behind ``path`` is a :class:`DamagedFileError` naming it.

    ``path``: the file the block reads, or the folder it loads from (then the damaged file under it is named).
    Any other failure, and one the folder's files do not explain (or that of a hub id, not a local path), is raised
    as it was.
    """
    try:
        yield
    except DamagedFileError:
        raise
    except Exception as exc:
        detail = header_damage(exc)
        if detail is None:
            raise
        path = Path(path)
        if path.is_dir():
            found = first_damaged(path)
            if found is None:
                raise
            path, detail = found
        elif not path.is_file():
            raise
        raise damaged_error(path, detail, fix) from None


@contextmanager
def open_safetensors(file: Path | str, fix: str | None = None) -> Iterator[Any]:
    """``safetensors.safe_open(file, "pt")``, a damaged file raised as one :class:`DamagedFileError` line (``fix``:
    what to do, default :data:`DEFAULT_FIX`). Errors raised inside the block pass through."""
    from safetensors import safe_open

    with reading_safetensors(file, fix):
        handle = safe_open(str(file), "pt")
    with handle as opened:
        yield opened


def load_safetensors(file: Path | str, fix: str | None = None) -> dict[str, Any]:
    """``safetensors.torch.load_file(file)`` (every tensor, on the CPU), a damaged file raised as one
    :class:`DamagedFileError` line."""
    from safetensors.torch import load_file

    with reading_safetensors(file, fix):
        return load_file(str(file))


def check_safetensors(file: Path | str, fix: str | None = None) -> None:
    """Raise :class:`DamagedFileError` when ``file``'s header does not fit it (before copying or handing it on)."""
    with open_safetensors(file, fix):
        pass
