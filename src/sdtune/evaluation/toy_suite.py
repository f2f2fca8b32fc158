"""``sdtune eval`` on the toy model: the judge's verdicts next to the CLIP scores.

On ``toy`` and the runs trained from it, what a model draws can be checked exactly (``sdtune.toy.evaluate``): the
evaluation prompts are then the toy suite - the pretraining world (forgetting), the concept, the person, the class
prompt and the composite (the person doing the concept) - and every image gets a verdict from the judge. Each
metric is a fraction of images, with its spread over seeds like every other ``sdtune eval`` number.

The toy CLIP's score of the person prompt is no person metric: that CLIP knows ``sks`` as a green-and-pink
striped heart (``toy.world.NAMED``), so CLIP-T of "a photo of sks red square" FALLS as the person is learned
(73 on the base, 69 after the concept stage, 4-9 after the person stage: 16 images, benchmark seed 0). The
judge's person and composite columns are the subject metrics here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from sdtune.evaluation.stats import summarize
from sdtune.toy.world import PERSON  # the suite's person (its prompt and colours, in the legend)

# metric -> (label, what is better, what it measures, headline name in toy.evaluate.HEADLINES)
TOY_METRICS: dict[str, tuple[str, str, str, str]] = {
    "toy_old": ("old-prompt acc", "higher", "toy judge: colour and shape right on the pretraining world's prompts",
                "old_both"),
    "toy_forgetting": ("forgetting", "near 0", "old-prompt accuracy lost against the run's base (same seeds)",
                       "old_both"),
    "toy_concept": ("concept", "higher", "toy judge: 'a <colour> arrow' draws the arrow", "concept"),
    "toy_person": ("person", "higher", f"toy judge: '{PERSON.instance_prompt}' shows the person's {PERSON.pattern} "
                   f"{PERSON.colour} and {PERSON.colour2}", "person_judge"),
    "toy_person_px": ("person (px)", "higher", "pixel check: both of the person's colours cover the image",
                      "person_pixels"),
    "toy_class_plain": ("class plain", "higher", f"'{PERSON.class_prompt}' stays a plain {PERSON.shape} (no drift)",
                        "class_solid"),
    "toy_composite": ("composite", "higher", f"'{PERSON.composite_prompt()}': the person's identity in the concept's "
                      "form (judge); no stage trains on it", "composite"),
    "toy_composite_px": ("composite (px)", "higher", "the composite with the pixel check for the identity",
                         "composite_pixels"),
}


def toy_suite():
    from sdtune.toy.evaluate import default_suite

    return default_suite(old=12)


def suite_prompts() -> list[str]:
    return [e.prompt for e in toy_suite().all()]


def _values(paths: dict[tuple[str, int], Path], judge) -> dict[str, dict[tuple[str, int], float]]:
    """Per headline name, each (prompt, seed) image's value (0 or 1) for the prompts of its group."""
    from sdtune.toy.evaluate import HEADLINES, image_values
    from sdtune.toy.judge import judge_images

    suite = toy_suite()
    group_of = {e.prompt: (group, e) for group in ("old", "concept", "person", "cls", "composite")
                for e in getattr(suite, group)}
    jobs = [job for job in paths if job[0] in group_of]
    images = []
    for job in jobs:
        with Image.open(paths[job]) as im:
            images.append(im.convert("RGB"))
    out: dict[str, dict[tuple[str, int], float]] = {name: {} for name in HEADLINES}
    for job, verdict, image in zip(jobs, judge_images(judge, images), images, strict=True):
        group, expect = group_of[job[0]]
        values = image_values(expect, verdict, image)
        for name, (g, key) in HEADLINES.items():
            if g == group and values[key] is not None:
                out[name][job] = float(values[key])
    return out


def toy_metrics(paths: dict[tuple[str, int], Path], base_paths: dict[tuple[str, int], Path] | None,
                seeds: Sequence[int], judge) -> dict[str, dict[str, Any]]:
    """``{metric: Summary dict}`` for one model's suite images (``base_paths``: its base's, for forgetting)."""
    values = _values(paths, judge)
    out = {}
    for metric, (_, _, _, headline) in TOY_METRICS.items():
        if metric == "toy_forgetting":
            if base_paths is None:
                continue
            base = _values(base_paths, judge)[headline]
            mine = values[headline]
            vals = {job: base[job] - mine[job] for job in mine if job in base}
        else:
            vals = values[headline]
        if vals:  # a group without images (no such prompt evaluated) has no number
            out[metric] = summarize(vals, seeds).as_dict()
    return out


def is_toy(models: Sequence[str]) -> bool:
    """Every model is ``toy`` or trained from it (so the toy judge can read their images)."""
    from sdtune.evaluation.clip_score import _derives_from_toy

    return bool(models) and all(_derives_from_toy(m) for m in models)


def resolve_toy(models: Sequence[str], toy: bool | None, has_prompts: bool, steps: int | None,
                guidance: float | None) -> tuple[bool, int, float]:
    """``(toy, steps, guidance)`` for an evaluation: the toy suite is on by default for toy models without prompts,
    and judged at the settings the judge was calibrated with (20 steps, guidance 4); else 25 steps, guidance 7.5."""
    from sdtune.errors import SdtuneError

    toy_models = is_toy(models)
    if toy is None:
        toy = toy_models and not has_prompts
    if toy and not toy_models:
        raise SdtuneError("--toy judges toy-world images: every model must be toy or trained from it")
    return toy, steps or (20 if toy else 25), guidance if guidance is not None else (4.0 if toy else 7.5)
