"""Where captions come from, and how long they are for the text encoder.

Three sources, as users actually keep them: ``photo.txt`` next to ``photo.jpg`` (the kohya convention), a CSV
or JSONL file of ``file,caption`` rows, or a ``metadata.jsonl`` (the folder is already an imagefolder).
Rows name files relative to the source folder; a row whose path leads outside it (``../../etc/passwd``, an
absolute path) is refused, since a dataset build must never read, copy or publish files the user did not
put in it. A file the user put in it may be a link to anywhere: the listed path counts (``sdtune.data.walk``).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.data.captions_columns import CAPTION_SUFFIXES, FILE_KEYS, TEXT_KEYS, ColumnTally
from sdtune.data.images import IMAGE_SUFFIXES
from sdtune.data.report import Problem
from sdtune.data.walk import link_problem, safe_member, walk
from sdtune.words import counted

CLIP_MAX_TOKENS = 77  # what CLIP text encoders read, start and end tokens included; the rest is cut off


@dataclass
class CaptionRow:
    """One row of a captions file: the image it names, its caption(s) and any extra columns (``concept``...)."""

    path: Path  # absolute, normalised; a link stays a link (its listed path counts)
    captions: tuple[str, ...] = ()  # none, one, or several alternatives (a JSON list of captions)
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = ""  # as written in the row, relative to the source folder

    @property
    def text(self) -> str | None:
        """The first caption (None without one); training uses every alternative, see ``captions``."""
        return self.captions[0] if self.captions else None


def normalize_caption(text: str) -> str:
    """One line, NFC-normalized: captions from different editors (BOMs, CRLF, decomposed accents) compare equal."""
    text = unicodedata.normalize("NFC", text.replace("\ufeff", ""))
    return " ".join(text.split())


def read_text_file(path: Path) -> str:
    """Read a caption file as UTF-8 (a BOM is fine); raises UnicodeDecodeError / OSError for the caller."""
    return path.read_bytes().decode("utf-8-sig")


def is_caption_file(path: Path) -> bool:
    return path.suffix.lower() in CAPTION_SUFFIXES and path.stem.lower() not in _NOT_CAPTIONS


def caption_index(files: list[Path]) -> dict[Path, list[Path]]:
    """Caption files by image stem (``folder/photo`` -> [photo.txt, photo.CAPTION]); .txt first, any case."""
    index: dict[Path, list[Path]] = {}
    for path in sorted(files, key=lambda p: (CAPTION_SUFFIXES.index(p.suffix.lower()), p.suffix != p.suffix.lower(),
                                             str(p))):
        index.setdefault(path.with_suffix(""), []).append(path)
    return index


def sidecars_of(image: Path, index: dict[Path, list[Path]] | None = None) -> list[Path]:
    """The kohya caption files of an image (``photo.txt``, ``photo.caption``, suffix in any case), .txt first."""
    if index is None:
        index = caption_index([p for p in image.parent.glob(glob.escape(image.stem) + ".*")
                               if p.is_file() and p.suffix.lower() in CAPTION_SUFFIXES])
    return index.get(image.with_suffix(""), [])


def sidecar_for(image: Path) -> Path | None:
    """The kohya caption file of an image, if there is one."""
    found = sidecars_of(image)
    return found[0] if found else None


def read_sidecar(image: Path, problems: list[Problem], index: dict[Path, list[Path]] | None = None) -> str | None:
    """The caption of ``image`` from its sidecar; None when absent, empty or unreadable (with a problem)."""
    found = sidecars_of(image, index)
    if not found:
        return None
    sidecar = found[0]
    if len(found) > 1:
        problems.append(Problem(str(sidecar), f"{image.name} has several caption files; this one is used, not "
                                f"{', '.join(p.name for p in found[1:])}", "warning"))
    try:
        text = normalize_caption(read_text_file(sidecar))
    except UnicodeDecodeError:
        problems.append(Problem(str(sidecar), "caption file is not UTF-8 text; caption ignored", "warning"))
        return None
    except OSError as exc:
        problems.append(Problem(str(sidecar), f"cannot read caption file ({exc.strerror or exc})", "warning"))
        return None
    if not text:
        problems.append(Problem(str(sidecar), "caption file is empty", "warning"))
        return None
    return text


def orphan_captions(folder: Path, images: list[Path], files: list[Path] | None = None) -> list[Problem]:
    """Caption files whose image is missing: usually a deleted or renamed photo.

    ``files``: the folder's visible files as the folder reader walked them (default: walk it here).
    """
    stems = {p.with_suffix("") for p in images}
    orphans = []
    for path in files if files is not None else walk(folder).files:
        if path.stem.lower() in _NOT_CAPTIONS:
            continue
        if path.suffix.lower() in CAPTION_SUFFIXES and path.with_suffix("") not in stems:
            orphans.append(Problem(str(path), "caption file without its image (no image of the same name)",
                                   "warning"))
    return orphans


_NOT_CAPTIONS = {"readme", "license", "licence", "notes", "captions", "requirements"}


def read_captions_file(file: Path, root: Path, *, metadata: bool = False,
                       refused: set[Path] | None = None) -> tuple[list[CaptionRow], list[Problem]]:
    """Rows of a CSV or JSONL captions file naming images in ``root``; bad rows become problems, not exceptions.

    CSV: a header naming a file column (file_name/file/image/path) and a caption column (text/caption/prompt),
    or no header and ``file,caption`` (an unquoted caption containing commas is rejoined). JSONL: one object
    per line with the same keys; its caption may be a list of captions (alternatives). Extra columns are kept
    (e.g. ``concept``); one that looks like a misspelt caption column is reported (``sdtune.data.captions_columns``).
    ``metadata=True`` reads a ``metadata.jsonl``/``metadata.csv`` as Hugging Face does: the file column must be
    ``file_name``. A UTF-8 byte-order mark is fine (Windows editors write one).
    ``refused`` collects the images whose rows were refused (their error names them; they are listed, not missing).
    """
    file_keys = ("file_name",) if metadata else FILE_KEYS
    problems: list[Problem] = []
    try:
        content = read_text_file(file)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [Problem(str(file), f"cannot read captions file ({exc})", "error")]
    if file.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        tally = ColumnTally("key")
        raw = list(_jsonl_rows(file, content, problems, file_keys, tally))
    else:
        tally = ColumnTally("column")
        raw = list(_csv_rows(file, content, problems, file_keys, tally))
    problems[:0] = tally.problems(file)  # about the whole file: before its rows' problems
    rows: list[CaptionRow] = []
    seen: set[Path] = set()
    for where, name, text, extra in raw:
        target = safe_member(root, name)
        if isinstance(target, str):
            problems.append(Problem(where, target, "error"))
            continue
        if not target.exists():
            broken = link_problem(target)
            problems.append(Problem(where, f"{name!r} is {broken}" if broken else f"{name!r} not found in {root}",
                                    "error"))
            if broken and refused is not None:
                refused.add(target)  # named here: not also reported by the folder reader
            continue
        if target.suffix.lower() not in IMAGE_SUFFIXES or not target.is_file():
            problems.append(Problem(where, f"{name!r} is not an image file ({', '.join(IMAGE_SUFFIXES)})", "error"))
            continue
        captions = caption_values(text)
        if isinstance(captions, str):
            problems.append(Problem(where, captions, "error"))
            if refused is not None:
                refused.add(target)
            continue
        if target in seen:
            problems.append(Problem(where, f"{name!r} is listed more than once; the first row is used", "warning"))
            continue
        seen.add(target)
        rows.append(CaptionRow(target, captions, extra, name))
    return rows, problems


def caption_values(value: Any) -> tuple[str, ...] | str:
    """A row's caption value as normalized captions: a string is one, a list of strings is alternatives.

    Returns the reason as a string for anything else: a number or a mapping is not a caption, and a list must
    never reach the text encoder as its Python repr (``"['a', 'b']"``).
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = normalize_caption(value)
        return (text,) if text else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(t for t in (normalize_caption(v) for v in value) if t))
    kind = "a list with non-text items" if isinstance(value, list) else type(value).__name__
    return f"the caption must be text or a list of texts (alternatives), not {kind}: {str(value)[:60]}"


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if key in row:
            return key
    return None


def _jsonl_rows(file: Path, content: str, problems: list[Problem], file_keys: tuple[str, ...],
                tally: ColumnTally):
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(where, f"not valid JSON ({exc.msg})", "error"))
            continue
        file_key = _pick(row, file_keys) if isinstance(row, dict) else None
        if file_key is None or not isinstance(row[file_key], str):
            problems.append(Problem(where, f"expected an object with a file name ({'/'.join(file_keys)})", "error"))
            continue
        text_key = _pick(row, TEXT_KEYS)
        tally.add(row, text_key)
        text = row.get(text_key) if text_key else None
        # Every other column is kept as the file has it (lists and objects too): JSON in, the same JSON out.
        extra = {k: v for k, v in row.items() if k not in (file_key, text_key)}
        yield where, row[file_key], text, extra


def _csv_rows(file: Path, content: str, problems: list[Problem], file_keys: tuple[str, ...],
              tally: ColumnTally):
    reader = csv.reader(io.StringIO(content, newline=""))  # a quoted caption may span lines
    rows = [(reader.line_num, row) for row in reader]
    header: list[str] | None = None
    if rows and any(cell.strip().lower() in file_keys for cell in rows[0][1]):
        header = [h.strip().lower() for h in rows[0][1]]
    for lineno, row in rows[1:] if header else rows:
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f"{file}:{lineno}"
        if header is None:
            name = row[0].strip()
            text = ",".join(row[1:]) if len(row) > 1 else None
            yield where, name, text, {}
            continue
        if len(row) != len(header):
            problems.append(Problem(where, f"has {counted(len(row), 'column')}, the header has {len(header)}", "error"))
            continue
        record = dict(zip(header, row, strict=True))
        file_key = _pick(record, file_keys)
        text_key = _pick(record, TEXT_KEYS)
        tally.add(record, text_key)
        extra = {k: v for k, v in record.items() if k not in (file_key, text_key)}
        yield where, record[file_key].strip(), record[text_key] if text_key else None, extra


_WORDISH = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def estimate_tokens(caption: str) -> int:
    """Rough CLIP token count without a tokenizer: words and punctuation marks, plus start and end tokens.

    CLIP's BPE splits rare words into several pieces, so this undercounts unusual text; it is labelled an
    estimate everywhere it is shown.
    """
    return len(_WORDISH.findall(caption)) + 2


def count_tokens(caption: str, tokenizer) -> int:
    """Exact token count with the model's tokenizer, start and end tokens included (as the encoder sees it)."""
    return len(tokenizer(caption, truncation=False, verbose=False)["input_ids"])


def load_tokenizer(model: str, revision: str | None = None):
    """The tokenizer of a diffusers model (folder, hub id, tiny/toy) or a bare tokenizer folder: cheap (no weights).

    Raises ModelLoadError naming the model when it cannot be loaded.
    """
    from transformers import AutoTokenizer

    from sdtune.errors import ModelLoadError
    from sdtune.models.loading import resolve_model_ref

    folder = Path(model).expanduser()
    try:
        if folder.is_dir() and (folder / "tokenizer_config.json").exists():
            return AutoTokenizer.from_pretrained(str(folder))
        return AutoTokenizer.from_pretrained(resolve_model_ref(model), subfolder="tokenizer", revision=revision)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {model!r}: {str(exc).splitlines()[0]}") from None
