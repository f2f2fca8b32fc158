"""Check a dataset folder before a GPU hour is spent on it.

``check_folder`` reads a folder with the trainer's own reader (``sdtune.data.folders``) and reports what would
make training fail (errors) or quietly worse (warnings).
``sdtune train`` calls it before loading a model and stops on errors; ``sdtune dataset check`` prints it.
It is fast: JPEGs are decoded at 1/8 scale, which still reads every byte and so catches truncated files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sdtune.data.buckets import SD_STEP, histogram, target_sizes
from sdtune.data.captions import CLIP_MAX_TOKENS, count_tokens, estimate_tokens
from sdtune.data.duplicates import find_duplicates
from sdtune.data.folders import ImageRecord, read_folder
from sdtune.data.images import ImageInfo, picture_digest, probe_image
from sdtune.data.mask_checks import MaskCheck, check_masks
from sdtune.data.report import Problem, summarize, summarize_problems
from sdtune.errors import DataError
from sdtune.words import counted, plural

# Buckets of the shorter side, in pixels: what decides how much an image is up- or downscaled in training.
RESOLUTION_BUCKETS = ((0, "<256"), (256, "256-511"), (512, "512-767"), (768, "768-1023"), (1024, "1024-2047"),
                      (2048, ">=2048"))


_ASSUMED_STEP = "SD's, assumed without --model: a model with a smaller step, like the toy's 16, has buckets here"


def _bucket(short_side: int) -> str:
    label = RESOLUTION_BUCKETS[0][1]
    for low, name in RESOLUTION_BUCKETS:
        if short_side >= low:
            label = name
    return label


@dataclass
class CheckReport:
    """What ``check_folder`` found. ``ok`` means no errors: training can start (warnings are advice)."""

    folder: Path
    images: int = 0
    layout: str = ""
    resolutions: dict[str, int] = field(default_factory=dict)
    sizes: Counter = field(default_factory=Counter)
    captioned: int = 0
    token_count: str = "estimate"
    token_limit: int = CLIP_MAX_TOKENS  # tokens the text encoder reads (the tokenizer's model_max_length)
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    dataset: list[ImageRecord] = field(default_factory=list)  # what training reads: every decodable image
    buckets: dict[str, int] = field(default_factory=dict)  # aspect-ratio bucket "WxH" -> images (data.buckets)
    bucket_resolution: int = 512
    bucket_step: int = SD_STEP
    bucket_source: str = _ASSUMED_STEP  # whose step: "toy's", or SD's assumed without a model
    masks: MaskCheck | None = None  # with --masks: how many images have one, and where from
    notes: list[str] = field(default_factory=list)  # neither error nor warning: said so nothing goes unsaid

    @property
    def errors(self) -> list[str]:
        return [str(p) for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[str]:
        return [str(p) for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def bucketed(self) -> bool:
        """Whether ``buckets`` are aspect-ratio buckets: False below the step, where only squares can be shown."""
        return self.bucket_step <= self.bucket_resolution

    def add(self, where: str | Path, reason: str, level: str, kind: str, count: int = 1) -> None:
        """Record a problem; ``count``: how many of what ``kind`` counts it is about (one line for 2 images: 2)."""
        self.problems.append(Problem(str(where), reason, level, kind))  # type: ignore[arg-type]
        self.counts[kind] += count

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "images": self.images,
            "layout": self.layout,
            "captioned": self.captioned,
            "token_count": self.token_count,
            "token_limit": self.token_limit,
            "resolutions": dict(self.resolutions),
            "sizes": {size: n for size, n in self.sizes.most_common()},
            "buckets": dict(self.buckets),
            "bucket_resolution": self.bucket_resolution,
            "bucket_step": self.bucket_step,
            "bucketed": self.bucketed,
            "counts": dict(self.counts),
            "masks": self.masks.to_dict() if self.masks is not None else None,
            "errors": self.errors,
            "warnings": self.warnings,
            "notes": list(self.notes),
        }

    def _buckets_title(self) -> str:
        res, step = self.bucket_resolution, self.bucket_step
        if self.bucketed:
            return (f"aspect-ratio buckets at {res} px (sides multiples of {step}; what training uses with "
                    "data.buckets on):")
        return (f"no aspect-ratio buckets at {res} px: their sides are multiples of the bucket step, {step} px "
                f"({self.bucket_source}), more than {res}; training refuses this resolution with data.buckets on, "
                f"and trains {res}x{res} squares with data.buckets=false:")

    def to_text(self) -> str:
        lines = [f"{self.folder}: {counted(self.images, 'image')} ({self.layout}), as training reads them"]
        if self.counts["duplicate"]:
            n = self.counts["duplicate"]
            lines.append(f"duplicates: {n} of them {plural(n, 'is an exact copy', 'are exact copies')} of another "
                         "image (see warnings)")
        if self.images:
            lines.append(f"captions: {self.captioned} of {counted(self.images, 'image')} "
                         f"{plural(self.captioned, 'has')} one")
            lines.append("resolution (shorter side):")
            widest = max(self.resolutions.values(), default=1)
            for _, name in RESOLUTION_BUCKETS:
                if name in self.resolutions:
                    n = self.resolutions[name]
                    lines.append(f"  {name:>9}  {n:6d}  {'#' * max(1, round(30 * n / widest))}")
            common = ", ".join(f"{size} x{n}" for size, n in self.sizes.most_common(3))
            lines.append(f"most common sizes: {common}")
            lines.append(self._buckets_title())
            most = max(self.buckets.values(), default=1)
            for shape, n in self.buckets.items():
                lines.append(f"  {shape:>9}  {n:6d}  {'#' * max(1, round(30 * n / most))}")
        if self.masks is not None:
            lines.append(self.masks.line())
        if self.counts:
            lines.append("found: " + ", ".join(f"{kind} {n}" for kind, n in sorted(self.counts.items())))
        for level, title in (("error", "errors"), ("warning", "warnings")):
            items = [p for p in self.problems if p.level == level]
            if items:  # every error names its file (each must be fixed); repeated warnings are summarized by kind
                lines.append(f"{title} ({len(items)}):")
                shown = summarize_problems(items) if level == "warning" else summarize([str(p) for p in items])
                lines += [f"  {line}" for line in shown]
        lines += [f"note: {note}" for note in self.notes]
        lines.append("OK: ready to train" if self.ok else f"NOT OK: {counted(len(self.errors), 'error')}; fix "
                                                          f"{plural(len(self.errors), 'it')} and re-run")
        return "\n".join(lines)


def _records(folder: Path, report: CheckReport) -> list[ImageRecord]:
    """The images training would read (the shared folder reader), with every layout problem recorded."""
    if not folder.is_dir():
        report.add(folder, "does not exist or is not a folder; check the path", "error", "missing folder")
        return []
    reading = read_folder(folder)
    report.layout = reading.layout
    for problem in reading.problems:
        kind = problem.kind or ("file not used" if "not used" in problem.reason else "caption/row problem")
        report.add(problem.where, problem.reason, problem.level, kind)
    return reading.records


def token_limit(tokenizer) -> int:
    """How many tokens the text encoder reads: the tokenizer's ``model_max_length`` (CLIP: 77, the toy: 32)."""
    limit = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    return int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else CLIP_MAX_TOKENS


def check_folder(folder: Path, *, resolution: int | None = None, require_captions: bool = False, tokenizer=None,
                 fixed_prompt: str | None = None, progress: bool = False, bucket_step: int = SD_STEP,
                 masks: Path | str | None = None, bucket_source: str | None = None) -> CheckReport:
    """Check a dataset folder; never raises for bad data, everything lands in the report.

    ``resolution``: warn about images whose shorter side is below it (they are upscaled, hence blurry).
    ``require_captions``: text-to-image training needs a caption for every image (DreamBooth does not).
    ``tokenizer``: the model's tokenizer: exact token counts against its ``model_max_length``; without it
    counts are estimates against CLIP's 77, and the report says so.
    ``fixed_prompt``: the prompt every image trains with (DreamBooth): its length is checked instead of captions.
    ``bucket_step``: the model's bucket side multiple (64 on SD); buckets are reported at ``resolution`` (or 512);
    below the step there are none (training refuses it with buckets on), and the squares training makes with buckets
    off are shown. ``bucket_source``: whose step it is, for the report (``"toy's"``; default: SD's, assumed).
    ``masks``: a masked loss's masks (``sdtune.data.masks``): a folder of them, or ``"alpha"`` for the images' alpha
    channels; each image's mask missing, unreadable, of another size or empty is an error, and so is a mask folder
    inside ``folder`` (``sdtune.data.mask_checks``).
    """
    folder = Path(folder)
    report = CheckReport(folder=folder, token_count="tokenizer" if tokenizer is not None else "estimate",
                         token_limit=token_limit(tokenizer))
    records = _records(folder, report)
    if report.counts["missing folder"]:
        return report
    readable: list[ImageRecord] = []
    infos: list[ImageInfo] = []
    buckets: Counter = Counter()
    shapes: list[tuple[int, int]] = []
    for record in tqdm(records, desc="checking images", unit="img", disable=not progress):
        path = record.path
        try:
            info = probe_image(path)
        except DataError as exc:
            report.add(path, str(exc).removeprefix(f"{path}: "), "error", "unreadable")
            continue
        readable.append(record)
        infos.append(info)
        for note in info.notes:
            report.add(path, note, "warning", "animated")
        short = min(info.width, info.height)
        shapes.append((info.width, info.height))
        buckets[_bucket(short)] += 1
        report.sizes[f"{info.width}x{info.height}"] += 1
        if resolution and short < resolution:
            report.add(path, f"{info.width}x{info.height} is smaller than the training resolution {resolution} "
                       "(it will be upscaled and look soft)", "warning", "small")
    report.dataset = readable
    report.images = len(readable)  # what training reads: every decodable image, duplicates included
    report.bucket_resolution = resolution or 512
    report.bucket_step = bucket_step
    report.bucket_source = bucket_source or report.bucket_source
    step = bucket_step if report.bucketed else None  # below the step: the squares of data.buckets=false
    report.buckets = histogram(target_sizes(shapes, report.bucket_resolution, step))
    report.resolutions = {name: buckets[name] for _, name in RESOLUTION_BUCKETS if buckets[name]}
    if not readable:
        report.add(folder, "no readable images: nothing to train on", "error", "empty")
    report.captioned = sum(1 for record in readable if record.captions)
    if fixed_prompt is not None:
        _check_prompt(report, fixed_prompt, tokenizer)
    else:
        _check_captions(report, readable, require_captions, tokenizer)
    _check_duplicates(report, readable, infos)
    if masks is not None:
        report.masks = check_masks(folder, [r.path for r in records], [r.path for r in readable], masks)
        for problem in report.masks.problems:
            report.add(problem.where, problem.reason, problem.level, problem.kind)
        report.notes += report.masks.notes
    return report


def _check_duplicates(report: CheckReport, readable: list[ImageRecord], infos: list[ImageInfo]) -> None:
    """Exact and near duplicates by the rule ``dataset build`` uses (``sdtune.data.duplicates``)."""
    def digest(i: int) -> str:
        try:
            return picture_digest(readable[i].path)
        except DataError:  # decoded at reduced scale but not at full size: not the same as anything
            return f"undecodable:{i}"

    found = find_duplicates([info.dhash for info in infos], [info.colors for info in infos],
                            [(info.width, info.height) for info in infos], digest)
    for j, i in found.exact.items():
        first, copy = readable[i], readable[j]
        both = ", with both captions" if copy.captions and set(copy.captions) - set(first.captions) else ""
        report.add(copy.path, f"exact duplicate of {first.path} (same pixels): trained twice as often; "
                   f"`dataset build` keeps one{both}", "warning", "duplicate")
    for i, j, bits in found.near:
        report.add(readable[j].path, f"near-duplicate of {readable[i].path} ({bits} of 64 hash bits differ)",
                   "warning", "near-duplicate")


def _too_long(report: CheckReport, text: str, tokenizer) -> str | None:
    """Why ``text`` is cut off by the text encoder, or None when it fits."""
    n = count_tokens(text, tokenizer) if tokenizer is not None else estimate_tokens(text)
    if n <= report.token_limit:
        return None
    if tokenizer is not None:
        return (f"{counted(n, 'token')}; the text encoder reads {report.token_limit} (this model's tokenizer), "
                "the rest is cut off")
    return (f"{counted(n, 'token')} (estimated without the model's tokenizer); the limit assumed is CLIP's "
            f"{CLIP_MAX_TOKENS} (an estimate: pass the model to count exactly), the rest is cut off")


def _check_prompt(report: CheckReport, prompt: str, tokenizer) -> None:
    reason = _too_long(report, prompt, tokenizer)
    if reason:
        report.add(report.folder, f"the prompt {prompt[:60]!r} is {reason}", "warning", "long caption")


def _check_captions(report: CheckReport, readable: list[ImageRecord], require_captions: bool, tokenizer) -> None:
    missing = [record.path for record in readable if not record.captions]
    if require_captions:
        for path in missing:
            report.add(path, "no caption (text-to-image training needs one per image)", "error", "missing caption")
    elif missing and report.captioned:
        report.add(report.folder, f"{len(missing)} of {counted(len(readable), 'image')} "
                                  f"{plural(len(missing), 'has')} no caption; "
                   f"{plural(len(missing), 'it trains', 'they train')} on an empty "
                   "prompt unless a fixed prompt is set", "warning", "missing caption", count=len(missing))
    for record in readable:
        for i, caption in enumerate(record.captions):
            reason = _too_long(report, caption, tokenizer)
            if reason:
                which = f"caption {i + 1} of {len(record.captions)}" if len(record.captions) > 1 else "caption"
                report.add(record.path, f"{which} is {reason}", "warning", "long caption")
