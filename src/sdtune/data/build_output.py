"""The output side of ``dataset build``: OUT's lock, the rows a build keeps, and the all-or-nothing commit.

See ``sdtune.data.build`` for the guarantees; this module holds what touches OUT's files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdtune.atomic import umask_mode
from sdtune.data.folders import METADATA, list_images
from sdtune.data.images import is_image_file
from sdtune.data.walk import lexical, safe_member
from sdtune.errors import DataError

STAGING = ".sdtune-staging-"
LOCK = ".sdtune-build.lock"


def kept_rows(out: Path, building: set[str | None]) -> list[dict[str, Any]]:
    """Rows of an existing OUT that this build does not replace: those of concepts not in ``building``."""
    meta = out / METADATA
    if not meta.exists() or None in building:
        return []
    kept = []
    for lineno, line in enumerate(meta.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{meta}:{lineno}: not valid JSON; fix or delete {meta} before adding to it") from None
        if not isinstance(row, dict) or "file_name" not in row:
            raise DataError(f"{meta}:{lineno}: row without file_name; fix or delete {meta} before adding to it")
        if "concept" not in row:
            raise DataError(f"{out} was built without concepts; rebuild it with --concept for every source, or "
                            "write this concept to a new folder")
        target = safe_member(out, str(row["file_name"]))
        if row["concept"] not in building and isinstance(target, Path) and target.is_file():
            kept.append(row)
    return kept


@contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold OUT's build lock for the duration (flock: freed by the OS if this process dies; the file is removed
    when the build ends, so OUT keeps no trace). A no-op where fcntl is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(f"another `sdtune dataset build` is writing {out} right now; wait for it to finish "
                            "(running both would lose one build's images), or build into another folder") from None
        try:  # the previous holder may have removed the file between our open and our lock: lock the live one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # removed while still locked, then released
        os.close(fd)


def same_text_type(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When any row has several captions (a list), every row's ``text`` becomes a list: Hugging Face datasets
    refuses a column that mixes strings and lists ("changed from string to array")."""
    if any(isinstance(row.get("text"), list) for row in rows):
        return [row | {"text": [row["text"]]} if isinstance(row.get("text"), str) else row for row in rows]
    return rows


PREVIOUS_METADATA = f".{METADATA}.previous"


def replaced_captions(out: Path, rows: list[dict[str, Any]]) -> int:
    """How many images of OUT's current metadata have a caption that ``rows`` change or drop (captions edited in
    OUT are lost by a rebuild from SRC: said, and the old file kept as :data:`PREVIOUS_METADATA`)."""
    try:
        lines = (out / METADATA).read_text(encoding="utf-8-sig").splitlines()
        before = {r["file_name"]: r.get("text") for r in map(json.loads, filter(str.strip, lines))}
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    after = {r["file_name"]: r.get("text") for r in rows}
    return sum(1 for name, text in before.items() if text and name in after and after[name] != text)


def commit(out: Path, staging: Path, names: list[str], rows: list[dict[str, Any]]) -> None:
    """Move staged images into place, replace metadata.jsonl atomically, delete images no row names."""
    for name in names:
        staged, final = staging / name, out / name
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.is_file() and final.read_bytes() == staged.read_bytes():
            continue  # identical rerun: leave the file (and its mtime) alone
        os.replace(staged, final)
    rows = sorted(rows, key=lambda r: (str(r.get("concept", "")), r["file_name"]))
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{METADATA}.", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask_mode(Path(tmp))  # mkstemp makes 0600 files
        os.replace(tmp, out / METADATA)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    referenced = {lexical(out / row["file_name"]) for row in rows}
    for path in list_images(out):
        if lexical(path) not in referenced and is_image_file(path):
            path.unlink()
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True):
        if folder.parent == out and folder.name.startswith(STAGING):
            continue
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
