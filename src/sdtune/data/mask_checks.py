"""What ``dataset check --masks`` (and the check before a masked-loss run) says about the masks of a folder.

Per image (:func:`sdtune.data.masks.mask_problems`): a mask missing, unreadable, of another size or empty is an
error. Across the folder, the mistakes no single image shows:

* the mask folder inside the photo folder (``me/masks``): the reader takes every image under a dataset folder,
  sub-folders included (``sdtune.data.folders``), so the masks are trained as photos and each finds itself as its
  own mask. An error, naming both folders and where to move the masks (``dataset masks --out`` refuses the same);
* two photos with one name stem (``a/me.jpg``, ``b/me.png``): a mask folder matches by stem, so both would train
  with one mask. An error;
* two masks of one photo (``me0.png`` and ``me0.jpg``): training reads the PNG, silently. A warning naming both;
* files of the mask folder that are no photo's mask (``other.png``, ``notes.txt``, ``me3.jpg.bak``), and masks read
  by their alpha channel (transparent cut-outs): notes, so nothing there is ignored or reinterpreted unsaid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdtune.data.masks import ALPHA, mask_files, mask_problems, uses_alpha
from sdtune.data.report import Problem
from sdtune.data.walk import lexical
from sdtune.words import counted, first_few, plural


@dataclass
class MaskCheck:
    """What the masks of one folder look like: ``found`` of ``images`` have one; problems and notes to report."""

    source: str  # the mask folder as given, or "alpha"
    images: int = 0
    found: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """``masks: 4 of 4 found (me-masks)``: said whether or not anything is wrong."""
        where = "the images' alpha channels" if self.source == ALPHA else self.source
        return f"masks: {self.found} of {self.images} found ({where})"

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "images": self.images, "found": self.found}


def check_masks(folder: Path, records: Sequence[Path], readable: Sequence[Path], masks: Path | str) -> MaskCheck:
    """Check the masks of the images of ``folder``: ``records`` every image the reader lists, ``readable`` those
    that decode (the ones trained); ``masks`` a mask folder or ``"alpha"``."""
    mask_dir = None if masks == ALPHA else Path(masks)
    check = MaskCheck(str(masks), images=len(readable))
    for image, reason, kind in mask_problems(list(readable), mask_dir):
        check.problems.append(Problem(str(image), reason, "error", kind))
    check.found = len(readable) - sum(1 for p in check.problems if p.kind == "mask missing")
    if mask_dir is None:
        return check
    inside = {path for path in records if _under(path, mask_dir)}
    if inside:
        check.problems.append(_inside_problem(folder, mask_dir, len(inside)))
    outside = [path for path in readable if path not in inside]
    check.problems += _shared_stems(outside, mask_dir)
    files = {path: mask_files(path, mask_dir) for path in records}  # a stat per suffix: once per image
    check.problems += _ambiguous({path: files[path] for path in readable}, mask_dir)
    check.notes += _extra_files(files, mask_dir)
    cutouts = sorted({files[path][0].name for path in readable if files[path] and uses_alpha(files[path][0])})
    if cutouts:
        n = len(cutouts)
        what = plural(n, "is a transparent cut-out", "are transparent cut-outs")
        check.notes.append(f"{counted(n, 'mask')} in {mask_dir} {what}, read by the alpha channel (transparent = "
                           f"not learned): {first_few(cutouts, 5)}")
    return check


def _under(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` or below, as listed or through links (a mask folder reached by a link)."""
    return lexical(path).is_relative_to(lexical(folder)) or path.resolve().is_relative_to(folder.resolve())


def _inside_problem(folder: Path, mask_dir: Path, count: int) -> Problem:
    named = folder if folder.name else lexical(folder)
    beside = named.with_name(f"{named.name}-masks")
    where = ("is the dataset folder itself" if lexical(mask_dir) == lexical(folder)
             else f"is inside the dataset folder {folder}")
    return Problem(str(mask_dir), f"the mask folder {where}: training reads every image under {folder}, sub-folders "
                   f"too, so its {counted(count, 'mask')} would be trained as photos (each its own mask); move the "
                   f"masks out of {folder}, e.g. to {beside}, and pass that folder to --masks (data.mask_dir)",
                   "error", "mask folder inside")


def _shared_stems(images: Sequence[Path], mask_dir: Path) -> list[Problem]:
    by_stem: dict[str, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.stem, []).append(image)
    return [Problem(str(same[0]), f"{', '.join(map(str, same[1:]))} {plural(len(same) - 1, 'has')} its name "
                    f"{stem!r} too: a mask folder matches masks to photos by name, so they would all train with "
                    f"one mask from {mask_dir}; rename all but one", "error", "mask name shared")
            for stem, same in by_stem.items() if len(same) > 1]


def _ambiguous(masks_of: dict[Path, list[Path]], mask_dir: Path) -> list[Problem]:
    problems = []
    for image, files in masks_of.items():
        if len(files) > 1:
            others = [f.name for f in files[1:]]
            problems.append(Problem(str(image), f"{counted(len(files), 'mask')} in {mask_dir} match it ("
                                    f"{', '.join(f.name for f in files)}): training reads {files[0].name} (PNG "
                                    f"first); delete {' and '.join(others)} or rename {plural(len(others), 'it')}",
                                    "warning", "mask ambiguous"))
    return problems


def _extra_files(masks_of: dict[Path, list[Path]], mask_dir: Path) -> list[str]:
    """A note naming what in ``mask_dir`` is no photo's mask (masks are read from its top level, by name)."""
    matched = {lexical(found) for files in masks_of.values() for found in files}
    try:
        entries = sorted(os.scandir(mask_dir), key=lambda e: e.name)
    except OSError:
        return []
    extra = [f"{e.name}/" if e.is_dir() else e.name for e in entries
             if not e.name.startswith(".") and lexical(mask_dir / e.name) not in matched]
    if not extra:
        return []
    return [f"{counted(len(extra), 'file')} in {mask_dir} {plural(len(extra), 'matches', 'match')} no photo and "
            f"{plural(len(extra), 'is', 'are')} not read: {first_few(extra, 5)} (a mask is named after its photo, "
            "me1.png for me1.jpg, at the folder's top level)"]
