"""The ONE reader of a dataset folder: ``dataset check``, ``dataset build`` and training all see what it sees.

Layouts, decided per folder:

1. A Hugging Face imagefolder: ``metadata.jsonl`` (or ``metadata.csv``) rows ``{"file_name": ..., "text": ...}``,
   in the folder or in sub-folders (each file's rows name files relative to its own folder), read as
   ``datasets`` reads them: a UTF-8 byte-order mark is fine, and the rows ARE the dataset, so an image no row
   names is not used (and is reported). ``text`` may be a list of captions: alternatives, all of them used.
2. The kohya convention: ``photo.jpg`` with its caption in ``photo.txt`` or ``photo.caption`` (suffixes in any
   case); images without one have no caption (fine for DreamBooth's fixed prompt).
3. Only ``dataset build --captions FILE``: every image of the folder, captioned by the file's rows, else by
   its sidecar.

Everywhere: an image is a file whose suffix (any case) is in ``IMAGE_SUFFIXES``; hidden files and folders
(``.ipynb_checkpoints``, ``.git``, a build's staging folder) are skipped, as Hugging Face does. Links to files
and folders are followed and an image is known by its listed path inside the folder, wherever a link points;
broken links and link loops are reported by name (the rule: ``sdtune.data.walk``). A file Pillow
can read under another name (``photo.jpg.bak``, ``IMG_0001``) and a photo format this Pillow cannot decode
(HEIC without pillow-heif, camera RAW) are reported as warnings, so no image is ever dropped silently; so is a
caption column, key or caption-file suffix that looks like a misspelt one (``sdtune.data.captions_columns``).
Problems are returned, not raised: check reports them, build skips what they name, training stops on errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.data.captions import (
    CaptionRow,
    caption_index,
    is_caption_file,
    orphan_captions,
    read_captions_file,
    read_sidecar,
)
from sdtune.data.captions_columns import misnamed_caption_files
from sdtune.data.images import IMAGE_SUFFIXES, sniff_format
from sdtune.data.report import Problem
from sdtune.data.walk import lexical, link_problem, walk
from sdtune.errors import DataError
from sdtune.words import counted, plural

METADATA = "metadata.jsonl"
METADATA_NAMES = (METADATA, "metadata.csv")
SIDECAR_LAYOUT = "caption files next to images"
# Photo formats users have that this Pillow may not decode: said once, with what to do.
_UNDECODED = {".heic": "HEIC (iPhone): install pillow-heif, or export as JPEG",
              ".heif": "HEIF: install pillow-heif, or export as JPEG",
              ".avif": "AVIF: this Pillow cannot decode it; export as JPEG or PNG",
              ".jxl": "JPEG XL: export as JPEG or PNG", ".svg": "SVG is a drawing, not pixels: export as PNG",
              **{s: "camera RAW: export as JPEG or PNG" for s in (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf",
                                                                   ".orf", ".rw2")}}
# Suffixes that are never images: not worth opening.
_NOT_IMAGES = {".txt", ".caption", ".json", ".jsonl", ".csv", ".parquet", ".md", ".yaml", ".yml", ".py", ".npz",
               ".npy", ".safetensors", ".pt", ".bin", ".ckpt", ".lock", ".html", ".pdf", ".zip", ".tar", ".gz",
               ".mp4", ".mov"}


@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset and its captions: none, one, or several alternatives (all used in training)."""

    path: Path  # folder / name
    captions: tuple[str, ...] = ()
    name: str = ""  # relative to the dataset folder, POSIX separators
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # other columns (concept)

    @property
    def caption(self) -> str | None:
        """The first caption, for display; training cycles through all of ``captions``."""
        return self.captions[0] if self.captions else None


@dataclass
class FolderReading:
    """What a folder holds for training: its images with captions, and every problem found on the way."""

    folder: Path
    layout: str
    records: list[ImageRecord]
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]


def _check_folder_exists(folder: Path) -> None:
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist; check the path in your config")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder")


def list_images(folder: Path) -> list[Path]:
    """Images in a folder (recursively, hidden ones skipped), in a stable order."""
    folder = Path(folder)
    _check_folder_exists(folder)
    return [p for p in walk(folder).files if p.suffix.lower() in IMAGE_SUFFIXES]


def _relative(path: Path, folder: Path) -> str:
    """The listed path of ``path`` inside ``folder`` (POSIX separators); links are never resolved."""
    return lexical(path).relative_to(lexical(folder)).as_posix()


def _broken(broken: list[Path], named: set[Path]) -> list[Problem]:
    """Broken links no metadata row already named: each reported by name (a row naming one is an error)."""
    return [Problem(str(path), reason, "warning") for path in broken
            if lexical(path) not in named and (reason := link_problem(path)) is not None]


def _strays(files: list[Path]) -> list[Problem]:
    """Images that are not used because of their name: say so instead of dropping them silently."""
    problems = []
    for path in files:
        suffix = path.suffix.lower()
        if path.name == "metadata.parquet":
            problems.append(Problem(str(path), "not read: sdtune reads metadata.jsonl or metadata.csv; convert it "
                                    "(pandas.read_parquet(...).to_json(..., orient='records', lines=True))",
                                    "warning"))
            continue
        if suffix in IMAGE_SUFFIXES or suffix in _NOT_IMAGES or path.name in METADATA_NAMES:
            continue
        if suffix in _UNDECODED:
            problems.append(Problem(str(path), f"not used: {_UNDECODED[suffix]}", "warning"))
            continue
        fmt = sniff_format(path)
        if fmt is not None:
            problems.append(Problem(str(path), f"a {fmt} image, but its name does not end in an image suffix "
                                    f"({' '.join(IMAGE_SUFFIXES[:6])} ...): not used; rename it to use it",
                                    "warning"))
    return problems


def _record(row: CaptionRow, folder: Path) -> ImageRecord:
    name = _relative(row.path, folder)
    return ImageRecord(folder / name, row.captions, name, dict(row.extra))


def _from_metadata(folder: Path, files: list[Path], images: list[Path], problems: list[Problem],
                   broken: list[Path]) -> tuple[str, list[ImageRecord]]:
    metas = [p for p in files if p.name in METADATA_NAMES]
    kinds = sorted({p.suffix for p in metas})
    if len(kinds) > 1:
        problems.append(Problem(str(folder), f"has both metadata{kinds[0]} and metadata{kinds[1]} files; keep one "
                                "format (Hugging Face datasets refuses the mix)", "error"))
    records: list[ImageRecord] = []
    listed: set[Path] = set()
    refused: set[Path] = set()  # listed, with a row refused as an error: not also "not listed"
    for meta in metas:
        rows, row_problems = read_captions_file(meta, meta.parent, metadata=True, refused=refused)
        problems.extend(row_problems)
        for row in rows:
            if row.path in listed:
                problems.append(Problem(str(meta), f"{row.name!r} is listed in another metadata file too; the first "
                                        "row is used", "warning"))
                continue
            listed.add(row.path)
            records.append(_record(row, folder))
    shown = metas[0].name if len(metas) == 1 else f"{metas[0].name} files"
    for image in images:
        if lexical(image) not in listed | refused:
            problems.append(Problem(str(image), f"not listed in {shown}: not used (add a row for it, or remove it)",
                                    "warning"))
    problems.extend(_broken(broken, listed | refused))
    sidecars = [p for p in files if is_caption_file(p)]
    if sidecars:
        problems.append(Problem(str(folder), f"{counted(len(sidecars), 'caption file')} (.txt/.caption) "
                                             f"{plural(len(sidecars), 'is')} not read: "
                                f"{shown} holds this folder's captions", "warning"))
    layout = metas[0].relative_to(folder).as_posix() if len(metas) == 1 else counted(len(metas), 'metadata file')
    return layout, records


def _from_sidecars(folder: Path, files: list[Path], images: list[Path], problems: list[Problem],
                   broken: list[Path], rows: dict[Path, CaptionRow] | None = None) -> list[ImageRecord]:
    index = caption_index([p for p in files if p.suffix.lower() in (".txt", ".caption")])
    records = []
    for image in images:
        row = rows.get(lexical(image)) if rows else None
        if row is not None and row.captions:
            records.append(ImageRecord(image, row.captions, _relative(image, folder), dict(row.extra)))
            continue
        caption = read_sidecar(image, problems, index)
        extra = dict(row.extra) if row is not None else {}
        records.append(ImageRecord(image, (caption,) if caption else (), _relative(image, folder), extra))
    problems.extend(_broken(broken, set()))
    problems.extend(orphan_captions(folder, images + broken, files))
    problems.extend(misnamed_caption_files([p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES], images))
    return records


def read_folder(folder: Path, *, captions_file: Path | None = None) -> FolderReading:
    """Read a dataset folder (see the module docstring for the rules); raises DataError only if it is missing.

    ``captions_file``: ``dataset build --captions``: a CSV/JSONL of rows captioning this folder's images.
    """
    folder = Path(folder)
    _check_folder_exists(folder)
    found = walk(folder)
    files = found.files
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    problems = found.problems + _strays(files)
    if captions_file is not None:
        rows, row_problems = read_captions_file(captions_file, folder)
        problems.extend(row_problems)
        records = _from_sidecars(folder, files, images, problems, found.broken, {row.path: row for row in rows})
        return FolderReading(folder, f"captions from {captions_file.name}", records, problems)
    if any(p.name in METADATA_NAMES for p in files):
        layout, records = _from_metadata(folder, files, images, problems, found.broken)
        return FolderReading(folder, layout, records, problems)
    return FolderReading(folder, SIDECAR_LAYOUT, _from_sidecars(folder, files, images, problems, found.broken),
                         problems)
