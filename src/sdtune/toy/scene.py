"""The toy world's vocabulary and its two records: the colours, shapes, patterns and backgrounds a picture is made
of, the people (:class:`Person`: the easy striped one and the hard halved one), the named instances the toy CLIP
knows, and :class:`Scene` (everything that determines one picture). Sampling, captions and rendering live in
:mod:`sdtune.toy.world`, which re-exports every name here (``world.PERSON``, ``world.Scene`` keep working)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

RESOLUTION = 32  # small on purpose: every toy model must train in minutes on a shared 2-core CPU
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "orange": (245, 130, 25),
    "purple": (140, 55, 190),
    "pink": (245, 135, 195),
    "cyan": (40, 205, 215),
}
SHAPES = ("circle", "square", "triangle", "star", "heart", "diamond")
CONCEPT = "arrow"  # the held-out glyph: never in the UNet's pretraining data
ALL_SHAPES = (*SHAPES, CONCEPT)
PATTERNS = ("solid", "checkered", "striped")  # what captions name (and the judge reads)
QUARTERED = "quartered"  # the hard person's look only: no caption or judge class has it (see HARD_PERSON)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"grey": (128, 128, 128), "white": (236, 236, 236),
                                                "black": (24, 24, 24)}
TEXTURES = ("plain", "noisy", "textured")


@dataclass(frozen=True)
class Person:
    """A specific instance (DreamBooth's "person"): one shape, two colours, one pattern, a unique token.

    Why a striped square: every generated image passes through the 32 px VAE, so the person must be something it
    reproduces. The first person, a blue and yellow checkered star, came back from the VAE as the person in only
    0.65-0.68 of 100-200 renders by the judge (its 5 px checks blur to orange and cyan, the star's points to a
    blob: the judge read its shape in 0.37); a striped star 0.74 (shape 0.43); a striped square 0.95 (shape 0.97),
    the striped arrow (the composite) 0.86 (shape 0.98). Measured 29 Nov 2026 on the shipped toy VAE.

    Why red and cyan: at guidance 4 (the base model's best, see docs/two-stage.md) a blue and yellow person came
    out with sky-blue stripes the judge read as cyan (person 0.00-0.29 at guidance 4, 0.50-0.83 at 2): where the
    fine stripes are not yet resolved the conditional prediction is their average colour, and blue + yellow
    average to a green tint that guidance amplifies. Red (220, 40, 40) and cyan (40, 205, 215) average to grey
    (130, 122, 128), the backgrounds' colour: the same run drew a red and cyan person in 1.00 of images at
    guidance 4 (VAE ceiling 1.00, its arrow 0.96)."""

    token: str = "sks"
    shape: str = "square"
    colour: str = "red"
    colour2: str = "cyan"
    pattern: str = "striped"
    # The shapes its photos may show (``write_person_set(poses=N)`` takes the first N), as a person's photos show
    # several poses: the identity is the colours and the pattern, the form varies. Never the concept's arrow. The
    # demo takes 4; the star, nearest the arrow in the toy CLIP (cosine 0.75), comes last.
    poses: tuple[str, ...] = ("square", "circle", "triangle", "diamond", "heart", "star")
    # pattern "quartered": the four quarters' colours (top-left first, clockwise); ``colour`` names the first
    quarters: tuple[str, ...] | None = None

    def colours(self) -> tuple[str, ...]:
        """The colours of the look: both stripes' colours, or the quarters' (each once)."""
        return tuple(dict.fromkeys(self.quarters)) if self.quarters else (self.colour, self.colour2)

    # The prompts name a colour: the pretraining captions always do, so a colourless "a photo of a star" is
    # outside what the base model learned (it draws noise) and could not serve as the class prompt.
    @property
    def instance_prompt(self) -> str:
        return self.pose_prompt(self.shape)

    @property
    def class_prompt(self) -> str:
        return self.class_prompt_of(self.shape)

    def pose_prompt(self, shape: str) -> str:
        """The caption of a photo of the person in ``shape`` ("a photo of sks red circle")."""
        return f"a photo of {self.token} {self.colour} {shape}"

    def class_prompt_of(self, shape: str) -> str:
        """The class prompt of a pose: the caption without the identifier ("a photo of a red circle")."""
        return f"a photo of a {self.colour} {shape}"

    def class_prompts(self, poses: int) -> list[str]:
        """The class prompt of each of the first ``poses`` shapes (what output preservation keeps plain)."""
        return [self.class_prompt_of(shape) for shape in self.poses[:poses]]

    def composite_prompt(self, concept: str = "arrow") -> str:
        """The person doing the concept: the instance prompt with the concept's noun in place of the class noun
        ("a photo of sks red arrow"), as "a photo of sks person giving a thumbs up" keeps the identifier and adds
        the gesture. What it should draw: the person's identity (pattern and both colours) in the concept's form,
        a picture neither stage trains on (the concept's arrows are solid or two-tone, never in the person's look;
        the person's photos are never arrows)."""
        return f"a photo of {self.token} {self.colour} {concept}"

    def composite_scene(self, rng: random.Random, concept: str = "arrow") -> Scene:
        """A render of what :meth:`composite_prompt` asks for (to calibrate the judge, never to train on)."""
        return placed_scene(rng, shape=concept, colour=self.colour, colour2=self.colour2, pattern=self.pattern,
                       quarters=self.quarters)


PERSON = Person()
# The hard person: a look no words of the toy world can draw, as no words draw a real face: the shape's top half
# green, its bottom half purple, split at the middle of the shape itself (pattern "quartered" with two equal
# quarters on each side). Every caption of the pretraining, concept and CLIP data names a solid fill or a two-colour
# pattern tied to the image grid (checks, stripes a sixth of the image high), never a split of the shape, and no
# training scene of the UNet, VAE, CLIP or judge has one; the judge's pattern head has no class for it, so its
# identity is read by a pixel check of the arrangement (``evaluate.quarters_check``): a green and purple striped
# or checkered shape passes it in 0.06 and 0.00 of VAE reconstructions (measured 7 Dec 2026, 100 renders each).
# Why halves: the 32 px VAE (8x8 latents) must reproduce the look. Measured on its reconstructions (the check,
# 100 renders of the 4 poses + arrow): four colours in quarters 0.14-0.24 (neighbouring quarters blend, red and
# yellow to orange); left and right halves 0.84-0.85 but the arrow's narrow shaft 0.45; top and bottom halves,
# green over purple, 0.88, the arrow 0.85. Green and purple: not the easy person's colours, and not "sks"'s pink
# (the toy CLIP's name for a green and pink striped heart). Same poses and captions as PERSON
# ("a photo of sks green circle").
HARD_PERSON = Person(colour="green", colour2="purple", pattern=QUARTERED,
                     quarters=("green", "green", "purple", "purple"))
PERSONS: dict[str, Person] = {"striped": PERSON, "halved": HARD_PERSON}  # DemoSettings.person_look -> person

# Rare words the toy CLIP knows as names of specific things, as a web-trained CLIP knows "sks" (a rifle) or a
# celebrity's name. Why: a DreamBooth identifier needs a text representation of its own for the UNet to bind the
# subject to. A word the CLIP never saw stays a random, untrained embedding that its text tower all but ignores
# (measured on the first toy CLIP: "a photo of sks blue star" differed from "a photo of a blue star" by 1.3 in
# hidden-state norm where a colour change moved it by 14), so instance and class prompts were the same prompt
# and prior preservation fought the instance directly. The CLIP learns these names; the UNet never sees them,
# and "sks" names something unlike the demo's person (DreamBooth overrides the word's prior, as on real SD).
NAMED: dict[str, tuple[str, str, str, str]] = {  # name -> (shape, colour, second colour, pattern)
    "sks": ("heart", "green", "pink", "striped"),
    "zwx": ("circle", "orange", "purple", "checkered"),
    "ohwx": ("triangle", "cyan", "red", "striped"),
    "qlv": ("square", "yellow", "green", "checkered"),
    "tkr": ("diamond", "pink", "blue", "striped"),
    "vbn": ("arrow", "purple", "yellow", "checkered"),
}


@dataclass(frozen=True)
class Scene:
    """Everything that determines one picture (and what a judge should read back from it)."""

    shape: str
    colour: str
    colour2: str | None = None  # second colour of a two-tone pattern
    pattern: str = "solid"
    background: str = "grey"
    texture: str = "plain"
    x: float = 0.5  # centre, as a fraction of the image
    y: float = 0.5
    size: float = 0.5  # bounding-box side, as a fraction of the image
    noise_seed: int = 0
    name: str | None = None  # a named instance (see NAMED): captions may call it by its name alone
    # pattern "quartered" (the hard person's look, never in any training scene): the colours of the shape's four
    # quarters, top-left, top-right, bottom-right, bottom-left, split at its bounding box's centre. Not in the
    # repr: the shipped VAE, CLIP and judge's training scenes are pinned by the digest of their reprs
    # (tests/unit/toy/test_world.py); asdict (scenes.jsonl) has it.
    quarters: tuple[str, ...] | None = field(default=None, repr=False)

    def colours(self) -> tuple[str, ...]:
        if self.quarters:
            return tuple(dict.fromkeys(self.quarters))
        return (self.colour,) if self.colour2 is None else (self.colour, self.colour2)


def random_placement(rng: random.Random) -> dict[str, float]:
    size = rng.uniform(0.5, 0.85)
    half = size / 2
    return {"size": size, "x": rng.uniform(half, 1 - half), "y": rng.uniform(half, 1 - half)}


def placed_scene(rng: random.Random, **what) -> Scene:
    """A scene of ``what`` (shape, colours, pattern, ...) at a random place and size, on a random background."""
    return Scene(**what, background=rng.choice(list(BACKGROUNDS)), texture=rng.choice(TEXTURES),
                 noise_seed=rng.randrange(2**31), **random_placement(rng))
