"""Read the two folder layouts sdtune trains on.

1. A Hugging Face imagefolder: images plus ``metadata.jsonl`` rows ``{"file_name": ..., "text": ...}``.
2. The kohya convention: ``photo.jpg`` with its caption in ``photo.txt``.
A folder without captions is fine for DreamBooth (every image gets the same fixed prompt).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sdtune.data.images import is_image_file
from sdtune.errors import DataError

METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    caption: str | None


def list_images(folder: Path) -> list[Path]:
    """Images in a folder (recursively), in a stable order."""
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist; check the path in your config")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")
    # Hidden folders (.ipynb_checkpoints, .git, half-written build output) are skipped, as Hugging Face does.
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and not _hidden(p, folder))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_metadata(folder: Path) -> list[ImageRecord]:
    """Rows of ``metadata.jsonl``; paths are checked to stay inside the folder."""
    meta = folder / METADATA
    records = []
    root = folder.resolve()
    for lineno, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name = row["file_name"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{meta}:{lineno}: expected a JSON object with 'file_name' and 'text'") from None
        path = (folder / name).resolve()
        if not path.is_relative_to(root):
            raise DataError(f"{meta}:{lineno}: file_name {name!r} points outside the dataset folder")
        text = row.get("text")
        records.append(ImageRecord(path, None if text is None else str(text)))
    return records


def read_folder(folder: Path) -> list[ImageRecord]:
    """All images of a folder with their captions (None when an image has none)."""
    images = list_images(folder)
    if (folder / METADATA).exists():
        return read_metadata(folder)
    records = []
    for image in images:
        sidecar = image.with_suffix(".txt")
        try:
            caption = sidecar.read_text(encoding="utf-8-sig").strip() if sidecar.exists() else None
        except UnicodeDecodeError:
            raise DataError(f"{sidecar}: caption file is not UTF-8 text; re-save it as UTF-8") from None
        records.append(ImageRecord(image, caption))
    return records
