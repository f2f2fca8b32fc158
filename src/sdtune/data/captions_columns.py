"""Which column names hold a caption, and a misspelt one said instead of silently dropped.

The reader looks captions up by name in three places: a ``--captions`` CSV/JSONL and an imagefolder's
``metadata.jsonl``/``.csv`` (the columns/keys in ``TEXT_KEYS``), and the caption files next to images (the
suffixes in ``CAPTION_SUFFIXES``). A name it does not know is an extra column, kept as the file has it (Hugging
Face imagefolders legitimately carry ``concept`` and other features), so a typo (``captoin``, ``txt``) used to
turn into an extra column and an image without its caption. :class:`ColumnTally` collects what a file's rows held
and names, with the accepted name :mod:`difflib` finds closest:

* an unknown column close to a caption name: an **error** when no row has a caption column at all (the file's
  captions are all lost), else a warning;
* no near miss, no caption column, and exactly one unknown column holding text (not a known extra such as
  ``concept``): a warning naming it, since it probably holds the captions.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.data.report import Problem
from sdtune.words import counted, plural

FILE_KEYS = ("file_name", "file", "filename", "image", "path")
TEXT_KEYS = ("text", "caption", "prompt")
CAPTION_SUFFIXES = (".txt", ".caption")
CAPTION_COLUMN = "unknown caption column"  # the kind of these problems (``sdtune.data.report``)
# Extra columns that hold text but are not captions: never suggested as the caption column.
NOT_CAPTION_COLUMNS = frozenset({"concept", "label", "class", "class_name", "category", "split", "id", "url",
                                 "source", "license", "author", "hash", "md5", "sha256", "mask", "mask_file_name",
                                 "conditioning_image", "negative_prompt"})
CUTOFF = 0.8  # difflib ratio: txt/text 0.86, captoin/caption 0.86; concept 0.46, long_caption 0.74 are not close


def closest(name: str, accepted: tuple[str, ...]) -> str | None:
    """The accepted name ``name`` looks like a misspelling of (any case), or None."""
    if name in accepted:
        return None
    found = difflib.get_close_matches(name.strip().lower(), accepted, n=1, cutoff=CUTOFF)
    return found[0] if found else None


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and bool(value)
                                      and all(isinstance(v, str) for v in value))


@dataclass
class ColumnTally:
    """What the rows of one captions file held: how many had a caption column, and each unknown column."""

    noun: str = "column"  # "column" (CSV) or "key" (JSONL), as the user's file calls them
    rows: int = 0
    captioned: int = 0  # rows with a caption column
    unknown: Counter = field(default_factory=Counter)  # column -> rows that have it
    uncaptioned: Counter = field(default_factory=Counter)  # column -> rows that have it and no caption column
    textual: Counter = field(default_factory=Counter)  # column -> rows where it holds text

    def add(self, row: dict[str, Any], text_key: str | None) -> None:
        """Count one row (``text_key``: the caption column it was read by, or None)."""
        self.rows += 1
        self.captioned += text_key is not None
        for key, value in row.items():
            if key in FILE_KEYS or key in TEXT_KEYS:
                continue
            self.unknown[key] += 1
            self.uncaptioned[key] += text_key is None
            self.textual[key] += _is_text(value)

    def problems(self, file: Path) -> list[Problem]:
        """One line per flagged column (see the module docstring), naming ``file``."""
        noun, accepted = self.noun, ", ".join(TEXT_KEYS)
        found = []
        for key in self.unknown:
            near = closest(key, TEXT_KEYS)
            if near is None:
                continue
            head = f"{noun} {key!r} is not a caption {noun} (did you mean {near}?)"
            if not self.captioned:
                found.append(Problem(str(file), f"{head}; no row has a caption (caption {noun}s: {accepted})",
                                     "error", CAPTION_COLUMN))
                continue
            n = self.uncaptioned[key]
            tail = f"{counted(n, 'row')} with it {plural(n, 'has')} no caption" if n else "not read"
            found.append(Problem(str(file), f"{head}; {tail}", "warning", CAPTION_COLUMN))
        if found or self.captioned or not self.rows:
            return found
        texts = [k for k in self.unknown if self.textual[k] == self.unknown[k]
                 and k.strip().lower() not in NOT_CAPTION_COLUMNS]
        if len(texts) == 1:
            found.append(Problem(str(file), f"{noun} {texts[0]!r} is not a caption {noun}; no row has a caption "
                                 f"(caption {noun}s: {accepted}): rename it to text if it holds the captions",
                                 "warning", CAPTION_COLUMN))
        return found


def misnamed_caption_files(files: list[Path], images: list[Path]) -> list[Problem]:
    """Files named like an image's caption file but with a misspelt suffix (``photo.text``, ``photo.captions``)."""
    stems = {p.with_suffix("") for p in images}
    found = []
    for path in files:
        suffix = path.suffix.lower()
        if suffix in CAPTION_SUFFIXES or path.name.endswith("~") or path.with_suffix("") not in stems:
            continue
        near = closest(suffix, CAPTION_SUFFIXES)
        if near is not None:
            found.append(Problem(str(path), f"not read as a caption (did you mean {path.with_suffix(near).name}? "
                                 f"caption files end in {' or '.join(CAPTION_SUFFIXES)})", "warning",
                                 CAPTION_COLUMN))
    return found
