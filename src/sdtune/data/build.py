"""Build a Hugging Face imagefolder (images + ``metadata.jsonl``) from a user's photo folder(s).

The source is only read. Every image is decoded and re-encoded (EXIF orientation applied, RGB, optionally
downsized), which also drops camera metadata such as GPS position from a dataset that may be published.
JPEG sources stay JPEG (quality 95, no chroma subsampling); everything else becomes PNG.

A build is all-or-nothing and rerun-safe: new images are written to a hidden staging folder inside OUT,
moved into place only when the build succeeded, then ``metadata.jsonl`` is replaced atomically and images
no row names any more are removed. Two builds into one OUT at once would each replace ``metadata.jsonl`` with
their own rows (one build's images would be lost), so a build holds an exclusive lock on ``OUT/.sdtune-build.lock``
(released by the OS even when the process is killed) and a second build stops with a clear message.
Rebuilding with ``concept=X`` replaces the rows of concept X only, so several sources can be merged one
command at a time and any of them rebuilt without duplicating rows.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sdtune.data.build_output import (
    PREVIOUS_METADATA,
    STAGING,
    commit,
    exclusive,
    kept_rows,
    replaced_captions,
    same_text_type,
)
from sdtune.data.caption_modes import CaptionSettings, apply_template, combine, needs_caption
from sdtune.data.captions_columns import CAPTION_COLUMN
from sdtune.data.duplicates import find_duplicates
from sdtune.data.folders import METADATA, read_folder
from sdtune.data.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    color_thumb,
    dhash,
    open_image,
    picture_digest,
    pixel_hash,
)
from sdtune.data.report import Problem, summarize, summarize_problems
from sdtune.data.walk import lexical
from sdtune.errors import DataError, ModelLoadError
from sdtune.words import counted, plural

_CONCEPT = re.compile(r"^\w[\w .+-]*$")


@dataclass
class Source:
    """One folder of images and where its captions come from."""

    folder: Path
    captions_file: Path | None = None  # CSV or JSONL of file,caption; default: SRC/metadata.jsonl or .txt sidecars
    caption: str | None = None  # fixed caption for the images that have none (DreamBooth-style)
    concept: str | None = None  # value of the ``concept`` column, and the subfolder the images go to


@dataclass
class BuildReport:
    out: Path
    written: int = 0
    kept: int = 0
    captioned: int = 0
    auto_captioned: int = 0
    captions_kept: int = 0  # images whose own caption the captioner left alone (fill mode)
    duplicates_dropped: int = 0  # exact duplicates merged into the image they copy (not written twice)
    captions_merged: int = 0  # of those, copies whose captions were added to it as alternatives
    problems: list[Problem] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return sum(1 for p in self.problems if p.level == "error")

    def to_text(self) -> str:
        lines = [f"wrote {counted(self.written, 'image')} to {self.out} ({self.captioned} with a caption"
                 + (f", {self.auto_captioned} from the captioner" if self.auto_captioned else "") + ")"]
        if self.captions_kept:
            lines.append(f"kept the own caption of {counted(self.captions_kept, 'image')} (--mode replace, "
                         "prefix or suffix "
                         "rewrites them)")
        if self.kept:
            lines.append(f"kept {counted(self.kept, 'row')} of other concepts")
        if self.duplicates_dropped:
            merged = (f"; {self.captions_merged} brought a different caption, kept as an alternative"
                      if self.captions_merged else "")
            lines.append(f"merged {counted(self.duplicates_dropped, 'exact duplicate')} into the "
                         f"{plural(self.duplicates_dropped, 'image it copies', 'images they copy')}{merged}")
        for level in ("error", "warning"):
            items = [p for p in self.problems if p.level == level]
            if items:
                title = "skipped" if level == "error" else "warnings"
                lines.append(f"{title} ({len(items)}):")  # every skipped file named; repeated warnings summarized
                shown = summarize_problems(items) if level == "warning" else summarize([str(p) for p in items], 50)
                lines += [f"  {line}" for line in shown]
        return "\n".join(lines)


@dataclass
class _Item:
    """One image on its way into the dataset."""

    source: Path
    name: str  # file_name in OUT (POSIX separators)
    captions: tuple[str, ...]  # none, one, or alternatives (a list in the source's metadata)
    extra: dict[str, Any]
    fixed_caption: str | None
    dhash: int = 0
    colors: bytes = b""
    size: tuple[int, int] = (0, 0)  # displayed size of the source, before --max-size


class _Build:
    def __init__(self, out: Path, strict: bool, report: BuildReport) -> None:
        self.out, self.strict, self.report = out, strict, report

    def problem(self, where: str | Path, reason: str, level: str = "error", kind: str = "") -> None:
        problem = Problem(str(where), reason, level, kind)  # type: ignore[arg-type]
        if self.strict and level == "error":
            raise DataError(f"{problem} (stopped by --strict)")
        self.report.problems.append(problem)

    def problems(self, items: list[Problem]) -> None:
        for item in items:
            self.problem(item.where, item.reason, item.level, item.kind)


def _validate(sources: list[Source], out: Path) -> None:
    if not sources:
        raise DataError("no source folder given")
    concepts = [s.concept for s in sources]
    if any(c is None for c in concepts) and any(c is not None for c in concepts):
        raise DataError("give a concept to every source or to none")
    resolved_out = out.resolve()
    for source in sources:
        if not source.folder.is_dir():
            raise DataError(f"{source.folder}: source folder does not exist or is not a folder")
        if source.concept is not None and not _CONCEPT.match(source.concept):
            raise DataError(f"concept {source.concept!r}: use letters, digits, spaces, '.', '+', '-' or '_' "
                            "(it is also a folder name)")
        src = source.folder.resolve()
        if resolved_out == src or resolved_out.is_relative_to(src) or src.is_relative_to(resolved_out):
            raise DataError(f"OUT {out} and SRC {source.folder} overlap; write the dataset to a separate folder")
        if source.captions_file is not None and not source.captions_file.is_file():
            raise DataError(f"{source.captions_file}: captions file not found")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.is_dir() and not (out / METADATA).exists() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise DataError(f"{out} is not empty and has no {METADATA}: refusing to write into a folder that is not "
                        "a dataset; choose a new or empty folder")


def _gather(source: Source, multi: bool, build: _Build) -> list[_Item]:
    """The images of one source with their captions, read by the folder reader training uses.

    ``--captions FILE`` captions every image of the folder (sidecars fill in); otherwise SRC/metadata.jsonl's rows
    are the images (as for training and Hugging Face), else every image with its sidecar caption.
    A captions file whose caption column is misspelt (none found, a near miss) stops the build: every caption
    of it would be lost, or land in an extra column (``sdtune.data.captions_columns``).
    """
    reading = read_folder(source.folder, captions_file=source.captions_file)
    lost = [p for p in reading.problems if p.kind == CAPTION_COLUMN and p.level == "error"]
    if lost:
        raise DataError("\n".join(str(p) for p in lost) + "\nnothing was written: rename it and rerun")
    build.problems(reading.problems)
    prefix = source.concept or (lexical(source.folder).name if multi else "")
    items = []
    for record in reading.records:
        extra = {k: v for k, v in record.extra.items() if k not in ("file_name", "text")}
        if source.concept is not None:
            extra["concept"] = source.concept
        name = (Path(prefix) / record.name).as_posix()
        items.append(_Item(record.path, name, record.captions, extra, source.caption))
    return items


def _target_name(item: _Item, fmt: str | None, digest: str, taken: set[str]) -> str:
    suffix = ".jpg" if fmt == "JPEG" else ".png"
    name = str(Path(item.name).with_suffix(suffix).as_posix())
    if name in taken:  # photo.png and photo.gif both become photo.png: keep both, told apart by content
        name = str(Path(name).with_name(f"{Path(name).stem}-{digest[:8]}{suffix}").as_posix())
    taken.add(name)
    return name


def _save(loaded, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    extra = {"icc_profile": loaded.icc_profile} if loaded.icc_profile else {}
    if loaded.format == "JPEG":
        loaded.image.save(target, "JPEG", quality=95, subsampling=0, **extra)
    else:
        loaded.image.save(target, "PNG", **extra)


def build_dataset(sources: list[Source], out: Path, *, max_size: int | None = None, strict: bool = False,
                  captioner: CaptionSettings | str | Path | None = None, progress: bool = False,
                  max_pixels: int = MAX_PIXELS) -> BuildReport:
    """Build or update the imagefolder ``out`` from ``sources``; see the module docstring for the guarantees.

    Unusable files and refused rows are reported and skipped (``strict``: the first one raises DataError).
    Images without a caption get the captioner's caption or their source's fixed caption; ``captioner`` (a model,
    or :class:`CaptionSettings` with its mode, trigger word and class) rewrites existing captions only in the
    ``replace``/``prefix``/``suffix`` modes (``sdtune.data.caption_modes``).
    """
    out = Path(out)
    _validate(sources, out)
    report = BuildReport(out=out)
    build = _Build(out, strict, report)
    items = [item for source in sources for item in _gather(source, len(sources) > 1, build)]
    if not items:
        raise DataError(f"no images found in {', '.join(str(s.folder) for s in sources)} "
                        f"(supported: {' '.join(IMAGE_SUFFIXES)})")
    # Load the captioner first: a wrong model id should fail in seconds, not after normalizing 500 photos.
    settings = captioner if isinstance(captioner, CaptionSettings) or captioner is None else CaptionSettings(captioner)
    model = _load_captioner(settings) if settings is not None else None
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        kept = kept_rows(out, {s.concept for s in sources})  # under the lock: another build may just have committed
        return _build_locked(out, kept, items, (model, settings), build, report, max_size, max_pixels, progress)


def _build_locked(out: Path, kept: list[dict[str, Any]], items: list[_Item], captioning: tuple, build: _Build,
                  report: BuildReport, max_size: int | None, max_pixels: int, progress: bool) -> BuildReport:
    # A private hidden staging folder: invisible to datasets and to the trainer, removed whatever happens.
    staging = Path(tempfile.mkdtemp(prefix=STAGING, dir=out))
    try:
        written = _write_images(items, staging, build, max_size, max_pixels, progress)
        if not written:
            raise DataError("no usable images; nothing was written:\n" + "\n".join(
                f"  {line}" for line in summarize([str(p) for p in report.problems], limit=50)))
        model, settings = captioning
        if model is not None:
            _autocaption(written, staging, model, settings, progress, report)
        for item in written:
            if not item.captions and item.fixed_caption:
                item.captions = (item.fixed_caption,)
        rows = same_text_type(kept + [_row(item) for item in written])
        replaced = replaced_captions(out, rows)
        if replaced:  # captions edited in OUT would be lost: one step of undo (hidden, so never read as data)
            shutil.copyfile(out / METADATA, out / PREVIOUS_METADATA)
        commit(out, staging, [item.name for item in written], rows)
    except OSError as exc:  # disk full, permissions: the user's problem to fix, not a traceback
        raise DataError(f"writing the dataset to {out} failed: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if replaced:
        build.problem(out, f"{counted(replaced, 'image')} had other captions in {out / METADATA} (edited "
                           "there?): a build "
                      f"rewrites OUT from SRC; the previous file is kept as {out / PREVIOUS_METADATA}", "warning")
    report.written, report.kept = len(written), len(kept)
    report.captioned = sum(1 for item in written if item.captions)
    missing = report.written - report.captioned
    if missing and report.captioned:
        build.problem(out, f"{counted(missing, 'image')} {plural(missing, 'has')} no caption (fine for "
                           "DreamBooth with a fixed prompt; "
                      "text-to-image training needs one per image)", "warning")
    return report


def _write_images(items: list[_Item], staging: Path, build: _Build, max_size: int | None, max_pixels: int,
                  progress: bool) -> list[_Item]:
    """Decode, normalize and stage every image; then merge exact duplicates and report near ones."""
    taken: set[str] = set()
    written: list[_Item] = []
    digests: list[str | None] = []  # full-size pixel hash, when the staged image is the full-size decode
    for item in tqdm(items, desc="normalizing images", unit="img", disable=not progress):
        try:
            loaded = open_image(item.source, max_size=max_size, max_pixels=max_pixels)
        except DataError as exc:
            build.problem(item.source, str(exc).removeprefix(f"{item.source}: ") + "; skipped", kind="skipped")
            continue
        for note in loaded.notes:
            build.problem(item.source, note, "warning", kind="animated")
        digest = pixel_hash(loaded.image)
        item.name = _target_name(item, loaded.format, digest, taken)
        item.dhash, item.colors, item.size = dhash(loaded.image), color_thumb(loaded.image), loaded.size
        _save(loaded, staging / item.name)
        written.append(item)
        digests.append(digest if loaded.image.size == loaded.size else None)
    return _merge_duplicates(written, digests, staging, build)


def _merge_duplicates(written: list[_Item], digests: list[str | None], staging: Path, build: _Build) -> list[_Item]:
    """One image per picture (``sdtune.data.duplicates``: the rule ``dataset check`` reports by); no caption lost.

    A copy's captions that the first image lacks become alternatives of it (a list in metadata.jsonl, each
    trained in turn). A fallback (``--caption``) counts only when neither has a caption of its own: an image with
    its own caption, through either copy, never also trains on the fallback. A copy whose other columns differ
    (another concept) is kept, since merging would lose its row. Near-duplicates are reported and kept.
    """
    def digest(i: int) -> str:
        return digests[i] or picture_digest(written[i].source)

    found = find_duplicates([it.dhash for it in written], [it.colors for it in written],
                            [it.size for it in written], digest)
    dropped: set[int] = set()
    for j, i in found.exact.items():
        first, copy = written[i], written[j]
        if copy.extra != first.extra:
            build.problem(copy.source, f"exact duplicate of {first.source} (same pixels); kept, because its columns "
                          f"differ ({_columns(copy.extra)} vs {_columns(first.extra)})", "warning", kind="duplicate")
            continue
        own = bool(first.captions or copy.captions)
        had, brought = (first.captions, copy.captions) if own else (_effective(first), _effective(copy))
        new = tuple(c for c in brought if c not in had)
        dropped.add(j)
        (staging / copy.name).unlink(missing_ok=True)
        build.report.duplicates_dropped += 1
        if new:
            first.captions = had + new
            build.report.captions_merged += 1
            shown = ", ".join(repr(c[:60]) for c in new)
            how = "kept as an alternative" if had else "kept (the image it copies has none)"
            build.problem(copy.source, f"exact duplicate of {first.source} (same pixels): merged into {first.name}, "
                          f"its caption {shown} {how}", "warning", kind="duplicate")
        else:
            same = " and caption" if brought else ""
            build.problem(copy.source, f"exact duplicate of {first.source} (same pixels{same}): merged into "
                          f"{first.name}", "warning", kind="duplicate")
    for i, j, bits in found.near:
        build.problem(written[j].source, f"near-duplicate of {written[i].source} ({bits} of 64 hash bits differ); "
                      "kept, remove one if unintended", "warning", kind="near-duplicate")
    return [item for k, item in enumerate(written) if k not in dropped]


def _effective(item: _Item) -> tuple[str, ...]:
    """The captions an image will get: its own, else its source's fixed --caption (none: the captioner's)."""
    return item.captions or ((item.fixed_caption,) if item.fixed_caption else ())


def _columns(extra: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(extra.items())) or "none"


def _load_captioner(settings: CaptionSettings):
    from sdtune.data.captioner import load_captioner

    return load_captioner(settings.model, device=settings.device, dtype=settings.dtype,
                          batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
                          prompt=settings.prompt)


def _autocaption(items: list[_Item], staging: Path, captioner, settings: CaptionSettings, progress: bool,
                 report: BuildReport) -> None:
    """Caption the images the mode selects; existing captions change only in replace/prefix/suffix modes."""
    todo = [item for item in items if needs_caption(settings.mode, item.captions)]
    report.captions_kept = len(items) - len(todo) if settings.mode == "fill" else 0
    if not todo:
        return
    try:
        captions = captioner.caption_files([staging / item.name for item in todo], progress=progress)
    except (RuntimeError, ValueError, TypeError) as exc:  # a model that is not an image-to-text captioner
        raise ModelLoadError(f"the captioning model failed: {str(exc).splitlines()[0]}") from None
    for item, caption in zip(todo, captions, strict=True):
        if caption.strip():
            text = apply_template(settings.template, caption)
            item.captions = combine(settings.mode, item.captions, text, settings.lead)
            report.auto_captioned += 1
        else:
            report.problems.append(Problem(str(item.source), "the captioner produced an empty caption", "warning"))


def _row(item: _Item) -> dict[str, Any]:
    row: dict[str, Any] = {"file_name": item.name}
    if item.captions:
        row["text"] = item.captions[0] if len(item.captions) == 1 else list(item.captions)
    row.update(item.extra)
    return row


