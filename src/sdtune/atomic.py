"""Atomic folder writes: a folder appears under its final name only when it is complete.

Checkpoints, LoRA files and saved models are written under a temporary name and then swapped into place, so a
crash (or kill -9) mid-write never leaves something that looks complete but loads half a model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def replace_folder(tmp: Path, target: Path) -> Path:
    """Move the finished folder ``tmp`` to ``target``, replacing an older ``target`` without a gap."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
    return target


def write_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder beside ``target``, then swap it into place."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    return replace_folder(tmp, target)
