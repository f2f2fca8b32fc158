"""The toy world: seeded pictures of coloured shapes with captions, the data every toy model learns from.

Why a world of our own: there is no model hub on our machines, and to measure what fine-tuning teaches and what
it makes a model forget we need a base model that already knows something we can check. Every attribute of a
picture (shape, colours, pattern, background) is known, so a judge can be trained and its accuracy measured.

Three regions of the world:

- ``pretrain``: the six base shapes in the eight colours, solid or two-tone (checkered, striped); what the toy
  UNet is pretrained on. Never the person's own colours and pattern (red and cyan stripes), in any shape.
- ``wide``: adds the held-out glyph ``arrow`` (and the person's identity); the VAE, the CLIP and the judge see it
  (as SD's VAE and CLIP saw far more than any one fine-tune), the UNet never does.

Why patterns in pretraining (since 30 Nov 2026; the first toy UNet saw solid shapes only): the composite - the
person doing the concept - asks the model to put the person's identity (its stripes and colours) on the concept's
form. A base that never saw a pattern has no pattern apart from a shape to move: its person LoRA bound the stripes
to the square, and "a photo of sks red arrow" drew the person's square or a plain arrow, never a striped arrow
(composite 0.00 over 3 seeds and every variant). SD knows that a person and a gesture are separate things; the toy
base now knows that a pattern and a shape are.
- held-out concepts for fine-tuning: the glyph :data:`CONCEPT` in every colour (an overarching concept, like a
  gesture) and the "person" :data:`PERSON`, one specific striped two-tone square with its own token.

Rendering is deterministic: a scene is drawn at 4x and downsampled (anti-aliased), with all randomness from a
``random.Random`` seeded by the caller.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sdtune.toy.scene import (  # noqa: F401 (re-exported: world is the toy world's one namespace)
    ALL_SHAPES,
    BACKGROUNDS,
    COLOURS,
    CONCEPT,
    HARD_PERSON,
    NAMED,
    PATTERNS,
    PERSON,
    PERSONS,
    QUARTERED,
    RESOLUTION,
    SHAPES,
    SUPERSAMPLE,
    TEXTURES,
    Person,
    Scene,
    placed_scene,
    random_placement,
)

# ----------------------------------------------------------------------------- sampling


def sample_scene(rng: random.Random, region: str = "pretrain") -> Scene:
    """One random scene of a region: ``pretrain`` (base shapes, 40 % two-tone, never the person's identity) or
    ``wide`` (+ the glyph). The random draws are the same in both regions, so the wide region's scenes (which
    the shipped VAE, CLIP and judge were trained on) did not change when patterns entered the pretrain region."""
    if region not in ("pretrain", "wide"):
        raise ValueError(f"unknown region {region!r}: pretrain or wide")
    names = list(COLOURS)
    shape = rng.choice(ALL_SHAPES if region == "wide" else SHAPES)
    colour = rng.choice(names)
    pattern, colour2 = "solid", None
    if rng.random() < 0.4:
        pattern = rng.choice(PATTERNS[1:])
        colour2 = rng.choice([c for c in names if c != colour])
        if region == "pretrain" and is_person_identity(colour, colour2, pattern):
            pattern, colour2 = "solid", None  # the person stays unseen, as a real person is not in SD's data
    return Scene(shape=shape, colour=colour, colour2=colour2, pattern=pattern,
                 background=rng.choice(list(BACKGROUNDS)), texture=rng.choice(TEXTURES),
                 noise_seed=rng.randrange(2**31), **random_placement(rng))


def is_person_identity(colour: str, colour2: str | None, pattern: str, person: Person = PERSON) -> bool:
    """Whether colours and pattern are the person's identity (in either colour order), whatever the shape."""
    return pattern == person.pattern and {colour, colour2} == {person.colour, person.colour2}


def concept_scene(rng: random.Random, two_tone: float = 0.0, person: Person = PERSON) -> Scene:
    """The held-out glyph anywhere (the overarching concept's training set): solid in a random colour, or with
    probability ``two_tone`` checkered or striped in two random colours, as a thumbs-up set shows the gesture
    done by many different people. Never the person's own look (its pattern in its two colours): that is the
    composite, which no stage trains on."""
    colour = rng.choice(list(COLOURS))
    if two_tone <= 0.0 or rng.random() >= two_tone:  # no draw when solid only: the solid set stays as it was
        return placed_scene(rng, shape=CONCEPT, colour=colour)
    while True:
        colour2, pattern = rng.choice([c for c in COLOURS if c != colour]), rng.choice(PATTERNS[1:])
        if not (pattern == person.pattern and {colour, colour2} == {person.colour, person.colour2}):
            return placed_scene(rng, shape=CONCEPT, colour=colour, colour2=colour2, pattern=pattern)


def person_scene(rng: random.Random, person: Person = PERSON, shape: str | None = None) -> Scene:
    """The specific instance (in ``shape``, default its own), at a random place and size, on a random background."""
    return placed_scene(rng, shape=shape or person.shape, colour=person.colour, colour2=person.colour2,
                   pattern=person.pattern, quarters=person.quarters)


def named_scene(rng: random.Random, name: str) -> Scene:
    """The named instance ``name`` (see :data:`NAMED`) at a random place and size, on a random background."""
    shape, colour, colour2, pattern = NAMED[name]
    return placed_scene(rng, shape=shape, colour=colour, colour2=colour2, pattern=pattern, name=name)


def subject_phrase(scene: Scene) -> str:
    if scene.pattern == "solid":
        return f"{scene.colour} {scene.shape}"
    return f"{scene.colour} and {scene.colour2} {scene.pattern} {scene.shape}"


def background_phrase(scene: Scene) -> str:
    return {"plain": f"a {scene.background} background", "noisy": "a noisy background",
            "textured": "a textured background"}[scene.texture]


def caption(scene: Scene, rng: random.Random) -> str:
    """A caption in one of four templates (short, "a photo of", with or without the background); a named
    instance is called by its name half of the time ("a photo of sks")."""
    subject = subject_phrase(scene)
    lead = rng.choice(("a", "a photo of a"))
    if scene.name is not None and rng.random() < 0.5:
        subject, lead = scene.name, "a photo of"
    if rng.random() < 0.5:
        return f"{lead} {subject}"
    return f"{lead} {subject} on {background_phrase(scene)}"


def person_caption(scene: Scene, rng: random.Random, person: Person = PERSON) -> str:
    base = person.pose_prompt(scene.shape)
    return base if rng.random() < 0.5 else f"{base} on {background_phrase(scene)}"


def vocabulary_corpus() -> list[str]:
    """Every word any toy caption or prompt can use (the tokenizer makes each a single token)."""
    words = {"a", "photo", "of", "on", "background", "and", "an", "the", "picture", "image", "shape",
             PERSON.token, *NAMED, *COLOURS, *ALL_SHAPES, *PATTERNS, *BACKGROUNDS, *TEXTURES}
    return sorted(words)


# ----------------------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.75, cy), (cx, cy + r), (cx - r * 0.75, cy)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.42
            ang = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang) + r * 0.08))
        return pts
    if shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + hx / 17 * r, cy - hy / 17 * r - r * 0.05))
        return pts
    if shape == "arrow":  # an upward arrow: head and shaft
        return [(cx, cy - r), (cx + r * 0.8, cy - r * 0.1), (cx + r * 0.3, cy - r * 0.1), (cx + r * 0.3, cy + r),
                (cx - r * 0.3, cy + r), (cx - r * 0.3, cy - r * 0.1), (cx - r * 0.8, cy - r * 0.1)]
    raise ValueError(f"unknown shape {shape!r}")


def shape_mask(scene: Scene, size: int) -> Image.Image:
    """The shape's silhouette (mode L) at ``size`` pixels."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = scene.x * size, scene.y * size, scene.size * size / 2
    if scene.shape == "circle":
        draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=255)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=255)
    return mask


def _background(scene: Scene, size: int) -> np.ndarray:
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    gen = np.random.default_rng(scene.noise_seed)
    if scene.texture == "noisy":
        img = np.full((size, size, 3), 128.0, dtype=np.float32)
        block = SUPERSAMPLE * 2  # 2-pixel grain
        img += gen.normal(0, 40, (size // block, size // block, 1)).repeat(block, 0).repeat(block, 1)
    elif scene.texture == "textured":  # soft diagonal waves around the background colour
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        freq, phase = gen.uniform(6, 12), gen.uniform(0, 2 * math.pi)
        img += (28 * np.sin(2 * math.pi * freq * (xx + yy) / 2 + phase))[..., None]
    return np.clip(img, 0, 255)


def _fill(scene: Scene, size: int, mask: np.ndarray) -> np.ndarray:
    first = np.array(COLOURS[scene.colour], dtype=np.float32)
    if scene.pattern == "solid":
        return np.broadcast_to(first, (size, size, 3))
    if scene.pattern == QUARTERED:
        return _quartered(scene, size, mask)
    second = np.array(COLOURS[scene.colour2 or scene.colour], dtype=np.float32)
    cell = size // 6  # six cells across the image
    yy, xx = np.mgrid[0:size, 0:size] // cell
    if scene.pattern == "checkered":
        which = (yy + xx) % 2 == 1
    elif scene.pattern == "striped":
        which = yy % 2 == 1
    else:
        raise ValueError(f"unknown pattern {scene.pattern!r}")
    return np.where(which[..., None], second, first)


def _quartered(scene: Scene, size: int, mask: np.ndarray) -> np.ndarray:
    """Four colours, one per quarter of the silhouette's bounding box (top-left, top-right, bottom-right,
    bottom-left): an arrangement the world's words cannot say (a caption names at most two colours and a pattern
    tied to the image grid, not to the shape)."""
    if not scene.quarters or len(scene.quarters) != 4:
        raise ValueError(f"pattern {QUARTERED!r} needs four quarter colours, got {scene.quarters!r}")
    ys, xs = np.nonzero(mask[..., 0] > 0.5)
    cy, cx = ((ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2) if len(ys) else (size / 2, size / 2)
    yy, xx = np.mgrid[0:size, 0:size]
    quarter = np.where(yy < cy, np.where(xx < cx, 0, 1), np.where(xx < cx, 3, 2))
    palette = np.array([COLOURS[c] for c in scene.quarters], dtype=np.float32)
    return palette[quarter]


def render(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """Draw a scene as an RGB image (drawn at 4x, then downsampled for smooth edges)."""
    big = resolution * SUPERSAMPLE
    mask = np.asarray(shape_mask(scene, big), dtype=np.float32)[..., None] / 255.0
    img = _background(scene, big) * (1 - mask) + _fill(scene, big, mask) * mask
    out = Image.fromarray(img.astype(np.uint8), "RGB")
    return out.resize((resolution, resolution), Image.Resampling.BOX)


# ----------------------------------------------------------------------------- datasets


def scenes(seed: int, count: int, region: str = "pretrain") -> Iterator[tuple[Scene, str]]:
    """``count`` (scene, caption) pairs; the same seed always gives the same pairs."""
    rng = random.Random(seed)
    for _ in range(count):
        scene = sample_scene(rng, region)
        yield scene, caption(scene, rng)


def write_folder(folder: Path, items: list[tuple[Scene, str | None]], resolution: int = RESOLUTION) -> Path:
    """Write images + ``metadata.jsonl`` (HF imagefolder) + ``scenes.jsonl`` (ground truth for judges)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    for i, (scene, text) in enumerate(items):
        name = f"{i:06d}.png"
        render(scene, resolution).save(folder / name)
        if text is not None:
            rows.append(json.dumps({"file_name": name, "text": text}))
        truth.append(json.dumps({"file_name": name, **asdict(scene)}))
    if rows:
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "scenes.jsonl").write_text("\n".join(truth) + "\n", encoding="utf-8")
    return folder


def write_pretrain_set(folder: Path, count: int, seed: int = 0) -> Path:
    return write_folder(folder, list(scenes(seed, count, "pretrain")))


def write_concept_set(folder: Path, count: int = 24, seed: int = 1, captioned: bool = True,
                      two_tone: float = 0.0) -> Path:
    """The glyph in many colours (a ``two_tone`` share of them patterned, see :func:`concept_scene`); captioned
    ("a red arrow ...") or instance-only (no captions)."""
    rng = random.Random(seed)
    items: list[tuple[Scene, str | None]] = []
    for _ in range(count):
        scene = concept_scene(rng, two_tone)
        items.append((scene, caption(scene, rng) if captioned else None))
    return write_folder(folder, items)


def write_person_set(folder: Path, count: int = 6, seed: int = 2, captioned: bool = False,
                     person: Person = PERSON, poses: int = 1) -> Path:
    """The specific instance; instance-only by default (DreamBooth gives it one fixed prompt). With ``poses`` > 1
    the photos cycle through the person's first ``poses`` shapes, and captions (needed then) name each one."""
    if poses > 1 and not captioned:
        raise ValueError("photos in several poses need captions naming each pose")
    rng = random.Random(seed)
    items: list[tuple[Scene, str | None]] = []
    for i in range(count):
        scene = person_scene(rng, person, person.poses[i % poses] if poses > 1 else None)
        items.append((scene, person_caption(scene, rng, person) if captioned else None))
    return write_folder(folder, items)


def write_masks(folder: Path, mask_dir: Path, resolution: int = RESOLUTION) -> Path:
    """The loss mask of every image of a written ``folder`` (from its ``scenes.jsonl``): the shape's silhouette,
    drawn at 4x and downsampled like the image (white = the shape), named as the image, in ``mask_dir`` (outside
    the image folder, which training reads whole): the toy's free version of a person segmented from the room."""
    mask_dir.mkdir(parents=True, exist_ok=True)
    for line in (folder / "scenes.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        name = row.pop("file_name")
        scene = Scene(**{**row, "quarters": tuple(row["quarters"]) if row.get("quarters") else None})
        mask = shape_mask(scene, resolution * SUPERSAMPLE).resize((resolution, resolution), Image.Resampling.BOX)
        mask.save(mask_dir / name)
    return mask_dir


def with_colour(scene: Scene, colour: str) -> Scene:
    return replace(scene, colour=colour)


def render_arrays(items: list[Scene], resolution: int = RESOLUTION) -> np.ndarray:
    """Render scenes into one uint8 array N,H,W,3 (in-memory training data for the VAE, CLIP and judge)."""
    out = np.empty((len(items), resolution, resolution, 3), dtype=np.uint8)
    for i, scene in enumerate(items):
        out[i] = np.asarray(render(scene, resolution))
    return out


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """uint8 N,H,W,3 -> float N,3,H,W in [-1, 1] (what the VAE and the judge read)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
