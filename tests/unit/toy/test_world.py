"""The toy world is deterministic, its captions say what is drawn, and its datasets have the promised layout."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from sdtune.toy import world


def test_same_seed_same_scenes_and_pixels() -> None:
    first = list(world.scenes(7, 20, "wide"))
    again = list(world.scenes(7, 20, "wide"))
    assert first == again
    a = world.render_arrays([s for s, _ in first])
    b = world.render_arrays([s for s, _ in again])
    assert np.array_equal(a, b)
    assert a.shape == (20, world.RESOLUTION, world.RESOLUTION, 3)
    assert list(world.scenes(8, 20, "wide")) != first


def test_captions_name_colour_and_shape() -> None:
    for scene, text in world.scenes(0, 200, "wide"):
        assert scene.shape in text and scene.colour in text
        if scene.pattern != "solid":
            assert scene.pattern in text and scene.colour2 in text


def test_pretrain_region_holds_out_the_concept_and_the_person() -> None:
    scenes = [s for s, _ in world.scenes(0, 3000, "pretrain")]
    assert {s.shape for s in scenes} == set(world.SHAPES)
    # patterns are attributes the base knows on every shape (so a person's pattern can go onto the concept's form)
    assert {s.pattern for s in scenes} == set(world.PATTERNS)
    assert {s.shape for s in scenes if s.pattern == "striped"} == set(world.SHAPES)
    # ... but never the person's own colours and pattern, in any shape, nor the concept
    assert not [s for s in scenes if world.is_person_identity(s.colour, s.colour2, s.pattern)]
    red_cyan = [s for s in scenes if {s.colour, s.colour2} == {"red", "cyan"}]
    assert red_cyan and all(s.pattern == "checkered" for s in red_cyan)
    wide = [s for s, _ in world.scenes(0, 500, "wide")]
    assert world.CONCEPT in {s.shape for s in wide}
    assert {s.pattern for s in wide} == set(world.PATTERNS)


def test_wide_region_is_unchanged_by_the_pretrain_region() -> None:
    """The VAE, CLIP and judge train on the wide region: its scenes must not move when the pretrain region does
    (they are shipped, trained from this seed; the digest is of the scenes they were trained on)."""
    import hashlib

    scenes = [s for s, _ in world.scenes(0, 200, "wide")]
    assert hashlib.sha256(repr(scenes).encode()).hexdigest()[:16] == "654553966e1f6f37"


def test_rendered_shape_has_its_colour() -> None:
    scene = world.Scene("square", "red", background="black", x=0.5, y=0.5, size=0.8)
    pixels = np.asarray(world.render(scene))
    centre = pixels[world.RESOLUTION // 2, world.RESOLUTION // 2]
    assert np.abs(centre.astype(int) - world.COLOURS["red"]).max() < 3


def test_dataset_folders(tmp_path: Path) -> None:
    concept = world.write_concept_set(tmp_path / "concept", 5, captioned=True)
    rows = [json.loads(line) for line in (concept / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and all(world.CONCEPT in r["text"] for r in rows)
    person = world.write_person_set(tmp_path / "person", 3)
    assert not (person / "metadata.jsonl").exists()  # instance-only: DreamBooth gives the fixed prompt
    truth = [json.loads(line) for line in (person / "scenes.jsonl").read_text().splitlines()]
    assert all(t["shape"] == world.PERSON.shape and t["pattern"] == world.PERSON.pattern for t in truth)
    assert len(list(person.glob("*.png"))) == 3


def test_two_tone_concept_set_never_shows_the_persons_look() -> None:
    """Two-tone arrows are the gesture done by other people: never the person's pattern in its two colours (the
    composite, which no stage trains on); with two_tone=0 every arrow is solid."""
    rng = random.Random(0)
    scenes = [world.concept_scene(rng, two_tone=1.0) for _ in range(2000)]
    person = world.PERSON
    assert all(s.shape == world.CONCEPT and s.pattern != "solid" and s.colour2 not in (None, s.colour)
               for s in scenes)
    looks = {(s.pattern, frozenset((s.colour, s.colour2))) for s in scenes}
    assert (person.pattern, frozenset((person.colour, person.colour2))) not in looks
    assert ("checkered", frozenset((person.colour, person.colour2))) in looks  # only the exact look is held out
    assert all(world.concept_scene(rng).pattern == "solid" for _ in range(200))
    mixed = [world.concept_scene(rng, two_tone=0.5).pattern for _ in range(400)]
    assert 0.4 < sum(p != "solid" for p in mixed) / len(mixed) < 0.6


def test_person_in_several_poses_is_captioned_with_each_shape(tmp_path: Path) -> None:
    """The identity (colours, stripes) is constant and the identifier names it; the shape varies and each caption
    names it; the concept's arrow (the composite's form) is never among the photos."""
    person = world.write_person_set(tmp_path / "person", 8, captioned=True, poses=4)
    truth = [json.loads(line) for line in (person / "scenes.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (person / "metadata.jsonl").read_text().splitlines()]
    assert [t["shape"] for t in truth] == list(world.PERSON.poses[:4]) * 2
    assert world.CONCEPT not in {t["shape"] for t in truth}
    assert all(world.is_person_identity(t["colour"], t["colour2"], t["pattern"]) for t in truth)
    assert all(r["text"].startswith(world.PERSON.pose_prompt(t["shape"])) for r, t in zip(rows, truth, strict=True))
    assert world.PERSON.class_prompts(2) == ["a photo of a red square", "a photo of a red circle"]
    with pytest.raises(ValueError, match="captions"):
        world.write_person_set(tmp_path / "bare", 4, poses=4)


def test_person_scenes_vary_only_in_placement_and_background() -> None:
    rng = random.Random(0)
    scenes = [world.person_scene(rng) for _ in range(10)]
    assert {(s.shape, s.colour, s.colour2, s.pattern) for s in scenes} == {
        (world.PERSON.shape, world.PERSON.colour, world.PERSON.colour2, world.PERSON.pattern)}
    assert len({s.x for s in scenes}) == 10


def test_named_instances_are_called_by_name_and_described() -> None:
    """The CLIP learns rare names ("sks") from named instances; the UNet's pretraining never sees them."""
    rng = random.Random(0)
    named = [world.named_scene(rng, "sks") for _ in range(40)]
    texts = [world.caption(s, rng) for s in named]
    assert any(t.startswith("a photo of sks") for t in texts)
    assert any("striped heart" in t for t in texts)  # the description also names it
    assert (named[0].shape, named[0].colour, named[0].colour2, named[0].pattern) == world.NAMED["sks"]
    pretrain_words = {w for _, text in world.scenes(0, 2000, "pretrain") for w in text.split()}
    assert not pretrain_words & set(world.NAMED)
    assert set(world.NAMED) <= set(world.vocabulary_corpus())
    # the person is not the name's prior: DreamBooth must teach it
    assert world.NAMED[world.PERSON.token][:2] != (world.PERSON.shape, world.PERSON.colour)


def test_clip_targets_count_a_name_as_a_true_description() -> None:
    from sdtune.toy.clip import _caption_parts, _describes

    rng = random.Random(1)
    sks = world.named_scene(rng, "sks")
    plain = world.Scene("heart", "green")
    parts = [("sks", None), (world.subject_phrase(sks), None), ("green heart", None)]
    target = _describes([sks, plain], parts)
    assert target.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    by_name = [_caption_parts(sks, random.Random(i)) for i in range(20)]
    assert {p[0] for _, p in by_name} == {"sks", world.subject_phrase(sks)}


def test_generic_preservation_prompts_are_never_the_evaluated_ones() -> None:
    """Output preservation on "other prompts" must not train on the prompts forgetting is measured with."""
    from sdtune.toy.evaluate import EVALUATED_OLD, generic_prompts, old_prompts

    evaluated = {(e.colour, e.shape) for e in old_prompts(EVALUATED_OLD)}
    prompts = generic_prompts(36)
    pairs = {tuple(p.removeprefix("a photo of a ").split()) for p in prompts}
    assert len(pairs) == 36 and not pairs & evaluated
    assert {s for _, s in pairs} == set(world.SHAPES)
    # a smaller evaluation (the quick demo's 6) takes a prefix of the 12, so it is never among them either
    assert old_prompts(6) == old_prompts(EVALUATED_OLD)[:6]
    with pytest.raises(ValueError, match="at most 36"):
        generic_prompts(37)
