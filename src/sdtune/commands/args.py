"""Checks of command-line arguments shared by every command: paths, devices and dtypes, each one clear line.

A folder where a file is expected (``sdtune train runs/r20``), a file where a folder is expected, or a path
that does not exist used to surface as a Python traceback from wherever it was first opened. Every command
checks its path arguments here first and raises SdtuneError (the CLI prints one line and exits 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from sdtune.errors import SdtuneError

RUN_CONFIG = "config.yaml"


def _missing(path: Path, what: str) -> SdtuneError:
    parent = path.expanduser().parent
    hint = "" if parent == Path(".") or parent.is_dir() else f" (nor does its folder {parent})"
    return SdtuneError(f"{what} {path} does not exist{hint}")


def existing(path: Path, what: str) -> Path:
    """``path`` when it exists (file or folder); else one line."""
    full = path.expanduser()
    if not full.exists():
        raise _missing(path, what)
    return full


def _existing_kind(path: Path | None, what: str, want_file: bool, hint: str = "") -> Path | None:
    """``path`` when it exists and is of the wanted kind (a file or a folder); else one line naming the fix."""
    if path is None:
        return None
    full = path.expanduser()
    if want_file and full.is_dir():
        raise SdtuneError(f"{what} {path} is a folder; pass a file{hint}")
    if not want_file and full.is_file():
        raise SdtuneError(f"{what} {path} is a file; pass a folder")
    if not full.exists():
        raise _missing(path, what)
    return full


def existing_file(path: Path | None, what: str, folder_hint: str = "") -> Path | None:
    """``path`` when it is a file; a folder or a missing path is one line (``folder_hint`` says what to pass)."""
    return _existing_kind(path, what, want_file=True, hint=folder_hint)


def existing_folder(path: Path | None, what: str) -> Path | None:
    """``path`` when it is a folder; a file or a missing path is one line."""
    return _existing_kind(path, what, want_file=False)


def output_folder(path: Path | None, what: str) -> Path | None:
    """A folder to write: may not exist yet (it is created), but may not be a file, and must be writable
    (:func:`sdtune.writable.check_writable`: checked now, not when the first image is saved)."""
    from sdtune.writable import check_writable

    if path is not None and path.expanduser().is_file():
        raise SdtuneError(f"{what} {path} is a file; pass a folder to write into")
    if path is not None:
        check_writable(path, what)
    return path.expanduser() if path is not None else None


def output_file(path: Path | None, what: str) -> Path | None:
    """A file to write: not an existing folder, and its folder must exist and be writable."""
    from sdtune.writable import check_writable

    if path is not None and path.expanduser().is_dir():
        raise SdtuneError(f"{what} {path} is a folder; pass a file name")
    if path is not None and not path.expanduser().parent.exists():
        raise SdtuneError(f"{what} {path}: its folder {path.expanduser().parent} does not exist")
    if path is not None:
        check_writable(path.expanduser().parent, what, f"choose a file in a writable folder with {what} FILE or fix "
                       "its permissions")
    return path.expanduser() if path is not None else None


def run_config(path: Path) -> Path:
    """A run config YAML, or a run folder (its ``config.yaml``, as ``generate`` and ``eval`` take run folders)."""
    full = path.expanduser()
    if full.is_dir():
        if (full / RUN_CONFIG).is_file():
            return full / RUN_CONFIG
        raise SdtuneError(f"{path} is a folder without {RUN_CONFIG}; pass a run config YAML (ready ones are in "
                          "configs/) or a run folder that sdtune train wrote")
    if not full.exists():
        raise SdtuneError(f"config file {path} does not exist (ready ones are in configs/; a run folder's is "
                          f"RUN/{RUN_CONFIG})")
    return full


def device(name: str) -> str:
    """``--device`` checked against this machine (``sdtune.devices.check_device``)."""
    from sdtune.devices import check_device

    return check_device(name)


def dtype(name: str, allow_auto: bool = True) -> str:
    """``--dtype`` in any usual spelling, as its torch name (``fp16`` -> ``float16``)."""
    from sdtune.devices import dtype_name

    return dtype_name(name, allow_auto=allow_auto)


PICKLE_CONFIG_HINT = "set model.allow_pickle=true"  # what the model loaders say (they serve configs too)


@contextlib.contextmanager
def allow_pickle_option() -> Iterator[None]:
    """In a command with an ``--allow-pickle`` switch: a loader's "set model.allow_pickle=true" (a config key the
    command does not read) says "pass --allow-pickle" instead."""
    from sdtune.errors import ModelLoadError

    try:
        yield
    except ModelLoadError as exc:
        if PICKLE_CONFIG_HINT not in str(exc):
            raise
        raise ModelLoadError(str(exc).replace(PICKLE_CONFIG_HINT, "pass --allow-pickle")) from None
