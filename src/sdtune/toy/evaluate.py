"""Measure what a toy model draws: colour/shape accuracy, concept and person rates, forgetting, class drift.

Why a judge and a pixel check rather than CLIP similarity: the toy CLIP's image-image similarity saturates (every
fine-tune looked "0.90 similar"), while the world's ground truth is exact. Every number here is a fraction of
generated images (prompt x seed) that the judge reads as asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdtune.toy.judge import Judge, Verdict, judge_images, load_judge
from sdtune.toy.world import BACKGROUNDS, COLOURS, CONCEPT, PERSON, SHAPES, Person
from sdtune.words import counted

STEPS = 20
GUIDANCE = 4.0


@dataclass(frozen=True)
class Expect:
    """What an image generated for ``prompt`` should show (None = not checked)."""

    prompt: str
    colour: str | None = None
    shape: str | None = None
    person: bool = False


GROUPS = ("old", "concept", "person", "cls", "composite")


@dataclass
class Suite:
    """The prompts of one evaluation, grouped: old world prompts, the concept, the person, the class, and the
    composite (the person doing the concept, which no stage trains on)."""

    old: list[Expect] = field(default_factory=list)
    concept: list[Expect] = field(default_factory=list)
    person: list[Expect] = field(default_factory=list)
    cls: list[Expect] = field(default_factory=list)
    composite: list[Expect] = field(default_factory=list)
    person_look: Person = PERSON  # whose identity the person and composite groups are judged for

    def all(self) -> list[Expect]:
        return [e for group in GROUPS for e in getattr(self, group)]


def old_prompts(count: int | None = None) -> list[Expect]:
    """'a {colour} {shape}' for the pretraining world; ``count`` picks a balanced, fixed subset."""
    colours = list(COLOURS)
    pairs = [(c, s) for s in SHAPES for c in colours]
    if count is not None and count < len(pairs):  # every shape, colours spread: fixed and balanced
        pairs = [(colours[(i * 3 + i // len(SHAPES)) % len(colours)], SHAPES[i % len(SHAPES)]) for i in range(count)]
    return [Expect(f"a {c} {s}", c, s) for c, s in pairs]


EVALUATED_OLD = 12  # old-world prompts every evaluation uses (old_prompts(n) for n <= 12 is a prefix of these)


def generic_prompts(count: int | None, shapes: Sequence[str] = ()) -> list[str]:
    """``count`` world prompts for output or prior preservation, none of them an evaluated one (``old_prompts``):
    the toy's "a photo of a dog, a photo of a woman" a user lists to keep the model's other subjects. Spread over
    shapes and colours, fixed; captions' own template ("a photo of a ..."). ``shapes``: only prompts of these
    shapes (``count`` None: all of them), e.g. the words nearest the concept's, which its LoRA bends most."""
    evaluated = {(e.colour, e.shape) for e in old_prompts(EVALUATED_OLD)}
    colours = list(COLOURS)
    pairs = [(colours[(i * 5 + i // len(SHAPES)) % len(colours)], SHAPES[i % len(SHAPES)])
             for i in range(len(colours) * len(SHAPES))]
    kept = list(dict.fromkeys(p for p in pairs if p not in evaluated and (not shapes or p[1] in shapes)))
    count = len(kept) if count is None else count
    if count > len(kept):
        raise ValueError(f"at most {counted(len(kept), 'generic prompt')} (the others are evaluated)")
    return [f"a photo of a {c} {s}" for c, s in kept[:count]]


def default_suite(old: int | None = 12, concept: int = 4, person: Person = PERSON,
                  concept_word: str = CONCEPT) -> Suite:
    """``concept_word``: how prompts name the concept (a learned token for it, say); the judge still expects the
    glyph :data:`CONCEPT`."""
    colours = list(COLOURS)
    return Suite(
        old=old_prompts(old),
        concept=[Expect(f"a {colours[(i * 3) % 8]} {concept_word}", colours[(i * 3) % 8], CONCEPT)
                 for i in range(concept)],
        person=[Expect(person.instance_prompt, None, person.shape, person=True)],
        cls=[Expect(person.class_prompt, None, person.shape)],
        composite=[Expect(person.composite_prompt(concept_word), None, CONCEPT, person=True)],
        person_look=person,
    )


def load_toy_pipeline(ref: str = "toy", adapters: list[tuple[str, float]] | None = None):
    """A base model or run folder as an fp32 CPU pipeline (the shipped weights are fp16)."""
    from sdtune.inference.pipeline import load_for_inference

    return load_for_inference(ref, adapters, device="cpu", torch_dtype=torch.float32)


def default_judge() -> Judge:
    from sdtune.models.presets import toy_path

    return load_judge(toy_path() / "judge")


@torch.no_grad()
def generate(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int = STEPS, guidance: float = GUIDANCE,
             batch_size: int = 32) -> list[Image.Image]:
    """One image per (prompt, seed), prompt-major; seeded CPU generators make it reproducible."""
    jobs = [(p, s) for p in prompts for s in seeds]
    images: list[Image.Image] = []
    pipe.set_progress_bar_config(disable=True)
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        gens = [torch.Generator("cpu").manual_seed(s) for _, s in chunk]
        out = pipe(prompt=[p for p, _ in chunk], generator=gens, num_inference_steps=steps,
                   guidance_scale=guidance, output_type="pil")
        images.extend(out.images)
    return images


def _colour_labels(image: Image.Image, tolerance: float) -> np.ndarray:
    """Per pixel (H, W) the index into ``COLOURS`` of its nearest world colour, or -1 where a background colour is
    nearer or nothing is within ``tolerance`` (RGB distance)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    palette = np.array([*COLOURS.values(), *BACKGROUNDS.values()], dtype=np.float32)
    dist = np.linalg.norm(rgb[..., None, :] - palette, axis=-1)  # H x W x palette
    nearest = dist.argmin(-1)
    return np.where((dist.min(-1) < tolerance) & (nearest < len(COLOURS)), nearest, -1)


def pixel_person_check(image: Image.Image, person: Person = PERSON, tolerance: float = 70.0,
                       min_fraction: float = 0.015) -> bool:
    """Each of the person's colours (two, or the hard person's four) covers at least ``min_fraction`` of the
    image: colours only, not the pattern (the person's colours checkered pass; :func:`is_person`, the judge, reads
    the pattern too, :func:`quarters_check` the hard person's arrangement).

    A pixel counts for a colour when that colour is its nearest among the world's colours and backgrounds and is
    within ``tolerance``; the person's two colours must be the two most frequent of the world's colours. Why the
    second rule: too strong guidance draws the person's blue as a sky blue (median (55, 162, 225), measured), mostly
    nearest cyan with a fringe of blue pixels; a check by distance alone passed those images (0.83 of them) where
    the judge read cyan (0.25). A solid shape of either colour, or the person in a neighbouring colour, fails
    (tests/unit/toy/test_shipped.py); renders of the person and their VAE reconstructions (the ceiling of generated
    images) pass. The person's colours must be the most frequent ones (the top two, or top four)."""
    labels = _colour_labels(image, tolerance)
    share = {name: float((labels == i).mean()) for i, name in enumerate(COLOURS)}
    wanted = set(person.colours())
    top = set(sorted(share, key=share.__getitem__, reverse=True)[:len(wanted)])
    return top == wanted and all(share[name] >= min_fraction for name in wanted)


def quarters_check(image: Image.Image, person: Person, tolerance: float = 70.0, min_fraction: float = 0.08,
                   min_share: float = 0.65) -> bool:
    """The hard person's identity (pattern "quartered"): its four colours in their arrangement. The judge's
    pattern head was trained on solid, checkered and striped fills only (the look is outside everything the toy
    models saw), so its verdict cannot say this; the pixel arrangement can.

    The shape is the pixels nearest one of the world's colours (backgrounds excluded), at least ``min_fraction``
    of the image; its bounding box (2nd-98th percentile, so stray pixels do not move it) is split at its centre
    into quarters, and in each quarter the most frequent colour must be the person's colour for it, with at least
    ``min_share`` of that quarter's shape pixels (0.65: at 0.5 a striped shape of the same two colours passed the
    halved person's check in 0.3-0.4 of renders, at 0.65 in 0.06, at 0.75 in 0.02 but the VAE's reconstructions of
    the person itself in 0.79 against 0.88). A plain shape, the striped person, two-tone fills and the colours in
    another order fail (tests/unit/toy/test_hard_person.py)."""
    if not person.quarters:
        raise ValueError(f"{person.pattern} person: quarters_check reads the quartered look only")
    labels = _colour_labels(image, tolerance)
    ys, xs = np.nonzero(labels >= 0)
    if len(ys) < min_fraction * labels.size:
        return False
    (y0, y1), (x0, x1) = np.percentile(ys, [2, 98]), np.percentile(xs, [2, 98])
    cy, cx = (y0 + y1 + 1) / 2, (x0 + x1 + 1) / 2
    yy, xx = np.mgrid[0:labels.shape[0], 0:labels.shape[1]] + 0.5
    regions = [(yy < cy) & (xx < cx), (yy < cy) & (xx >= cx), (yy >= cy) & (xx >= cx), (yy >= cy) & (xx < cx)]
    names = list(COLOURS)
    for region, colour in zip(regions, person.quarters, strict=True):
        inside = labels[region & (labels >= 0)]
        if len(inside) == 0:
            return False
        counts = np.bincount(inside, minlength=len(names))
        if counts.argmax() != names.index(colour) or counts.max() < min_share * len(inside):
            return False
    return True


def has_identity(verdict: Verdict, image: Image.Image, person: Person = PERSON) -> bool:
    """Whether an image shows the person's identity: the judge's verdict (:func:`is_person`), or for the hard
    person, whose look the judge has no class for, its arrangement in the pixels (:func:`quarters_check`)."""
    return quarters_check(image, person) if person.quarters else is_person(verdict, person)


def is_person(verdict: Verdict, person: Person = PERSON) -> bool:
    """The judge sees the person's pattern in its two colours. The shape is not required (the first
    person was a star, the base model's weakest shape: 0.84 of star prompts), so the rate measures the identity;
    the composite requires the concept's shape on top (``person_in_shape``)."""
    return verdict.pattern == person.pattern and {person.colour, person.colour2} <= set(verdict.colours[:3])


def _mean(values: list[bool]) -> float:
    return float(np.mean(values)) if values else float("nan")


def image_values(expect: Expect, verdict: Verdict, image: Image.Image, person: Person = PERSON
                 ) -> dict[str, bool | None]:
    """What one generated image shows against what its prompt asked (None: not asked)."""
    shape_ok = not expect.shape or verdict.shape == expect.shape
    colour_ok = not expect.colour or verdict.colour == expect.colour
    seen, pixels = has_identity(verdict, image, person), pixel_person_check(image, person)
    return {"colour": verdict.colour == expect.colour if expect.colour else None,
            "shape": verdict.shape == expect.shape if expect.shape else None,
            "both": colour_ok and shape_ok, "person_judge": seen, "person_pixels": pixels,
            "solid": verdict.pattern == "solid", "person_in_shape": seen and shape_ok,
            "person_pixels_in_shape": pixels and shape_ok}


def score(expects: Sequence[Expect], seeds: Sequence[int], images: Sequence[Image.Image], judge: Judge,
          person: Person = PERSON) -> dict[str, Any]:
    """Fractions over (prompt, seed) of :func:`image_values`: colour, shape, both right; person by judge and by
    pixels; solid rate; ``person_in_shape``: the judge sees the person's identity AND the asked shape (the
    composite's verdict; ``person_pixels_in_shape`` with the pixel check for the identity)."""
    verdicts = judge_images(judge, list(images))
    rows = list(zip([e for e in expects for _ in seeds], verdicts, images, strict=True))
    values = [image_values(e, v, im, person) for e, v, im in rows]
    out: dict[str, Any] = {key: _mean([bool(x[key]) for x in values if x[key] is not None]) for key in values[0]} \
        if values else {}
    out.update(images=len(rows), verdicts=[f"{'+'.join(v.colours)} {v.pattern} {v.shape}" for _, v, _ in rows])
    return out


def evaluate(pipe, judge: Judge, suite: Suite, seeds: Sequence[int], steps: int = STEPS,
             guidance: float = GUIDANCE, group_seeds: dict[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Generate every suite prompt over ``seeds`` (``group_seeds`` overrides them per group, e.g. more for the
    single person prompt) and score each group; images are kept for grids."""
    out: dict[str, Any] = {"seeds": list(seeds), "steps": steps, "guidance": guidance}
    for group in GROUPS:
        expects = getattr(suite, group)
        if not expects:
            continue
        group_seed_list = list((group_seeds or {}).get(group, seeds))
        images = generate(pipe, [e.prompt for e in expects], group_seed_list, steps, guidance)
        out[group] = score(expects, group_seed_list, images, judge, suite.person_look)
        out[group]["seeds"] = group_seed_list
        out[group]["prompts"] = [e.prompt for e in expects]
        out[group]["images_pil"] = images
    return out


# The headline numbers of an evaluation: name -> (prompt group, image value averaged over it).
HEADLINES: dict[str, tuple[str, str]] = {
    "old_colour": ("old", "colour"), "old_shape": ("old", "shape"), "old_both": ("old", "both"),
    "concept": ("concept", "shape"),
    "person_judge": ("person", "person_judge"), "person_pixels": ("person", "person_pixels"),
    "class_shape": ("cls", "shape"), "class_solid": ("cls", "solid"), "class_person_leak": ("cls", "person_pixels"),
    # the composite's verdict (identity AND the concept's form, by judge or pixel check), and its two halves
    "composite": ("composite", "person_in_shape"), "composite_pixels": ("composite", "person_pixels_in_shape"),
    "composite_shape": ("composite", "shape"), "composite_identity": ("composite", "person_judge"),
}


def summary(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of one evaluation (what tables show)."""
    return {name: result[group][key] for name, (group, key) in HEADLINES.items() if group in result}


def world_accuracy(pipe, judge: Judge, seeds: Sequence[int] = (100, 101, 102, 103),
                   steps: int = STEPS) -> dict[str, Any]:
    """How well a model draws the pretraining world: every "a {colour} {shape}" prompt over ``seeds``; colour,
    shape and both right, and shape accuracy per prompted shape (the model card's and benchmark A's numbers)."""
    result = evaluate(pipe, judge, Suite(old=old_prompts()), seeds, steps=steps)["old"]
    asked = [p.split()[-1] for p in result["prompts"] for _ in seeds]
    drawn = [v.split()[-1] for v in result["verdicts"]]
    by_shape = {shape: float(np.mean([d == shape for a, d in zip(asked, drawn, strict=True) if a == shape]))
                for shape in SHAPES}
    return {"colour": result["colour"], "shape": result["shape"], "both": result["both"],
            "images": result["images"], "shape_by_prompt_shape": by_shape}


def save_grid(images: Sequence[Image.Image], columns: int, path: Path, scale: int = 2) -> Path:
    """A prompt-per-row grid (columns = seeds), upscaled with nearest neighbour so 64 px images are visible."""
    if not images:
        raise ValueError("no images")
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % columns) * w, (i // columns) * h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST).save(path)
    return path


@torch.no_grad()
def vae_ceiling(pipe, judge: Judge, count: int = 200, seed: int = 7, person: Person = PERSON) -> dict[str, float]:
    """What the judge reads in the VAE's reconstructions of true renders of the person and of the composite:
    the most any generated image can score (every image is decoded by that VAE), to read the metrics against."""
    import random

    from sdtune.toy.world import person_scene, render, to_model_input

    rng = random.Random(seed)
    groups = {"person": (lambda r: person_scene(r, person),
                         Expect(person.instance_prompt, None, person.shape, person=True)),
              "composite": (lambda r: person.composite_scene(r, CONCEPT),
                            Expect(person.composite_prompt(CONCEPT), None, CONCEPT, person=True))}
    out: dict[str, float] = {}
    for group, (make, expect) in groups.items():
        renders = np.stack([np.asarray(render(make(rng))) for _ in range(count)])
        latents = pipe.vae.encode(to_model_input(renders).to(pipe.vae.dtype)).latent_dist.mean
        decoded = pipe.vae.decode(latents).sample.float().clamp(-1, 1)
        pixels = ((decoded + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        result = score([expect], list(range(count)), [Image.fromarray(a) for a in pixels], judge, person)
        out.update({name: result[key] for name, (g, key) in HEADLINES.items() if g == group})
    return out
