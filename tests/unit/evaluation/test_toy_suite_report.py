"""``sdtune eval`` on toy: the judge's verdicts per image become the suite's metrics (composite included), and
the HTML report fits the page in headless Chromium, whatever the number of seeds, with a chart across checkpoints
and no raw JSON on it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from sdtune.evaluation.report import write_reports
from sdtune.evaluation.toy_suite import TOY_METRICS, suite_prompts, toy_metrics
from sdtune.toy import world
from sdtune.toy.evaluate import default_judge
from tests.browser import assert_fits

PERSON = world.PERSON


def _render(folder: Path, name: str, scene: world.Scene) -> Path:
    path = folder / f"{name}.png"
    world.render(scene).save(path)
    return path


def test_judge_verdicts_become_the_suite_metrics(tmp_path: Path) -> None:
    rng = random.Random(3)
    seeds = [0, 1]
    paths, base = {}, {}
    for seed in seeds:
        paths[(PERSON.instance_prompt, seed)] = _render(tmp_path, f"p{seed}", world.person_scene(rng))
        paths[(PERSON.class_prompt, seed)] = _render(tmp_path, f"c{seed}", world.placed_scene(rng, shape=PERSON.shape,
                                                                                          colour="blue"))
        # seed 0 draws the composite (the person's identity as an arrow), seed 1 the person's own shape instead
        scene = PERSON.composite_scene(rng) if seed == 0 else world.person_scene(rng)
        paths[(PERSON.composite_prompt(), seed)] = _render(tmp_path, f"x{seed}", scene)
        paths[("a red circle", seed)] = _render(tmp_path, f"o{seed}", world.placed_scene(rng, shape="square",
                                                                                    colour="red"))
        base[("a red circle", seed)] = _render(tmp_path, f"b{seed}", world.placed_scene(rng, shape="circle",
                                                                                   colour="red"))
    metrics = toy_metrics(paths, base, seeds, default_judge())
    assert set(metrics) == set(TOY_METRICS) - {"toy_concept"}  # no concept prompt among these images
    assert metrics["toy_person"]["mean"] == 1.0 and metrics["toy_class_plain"]["mean"] == 1.0
    assert metrics["toy_composite"]["mean"] == 0.5, "the person in its own shape is not the composite"
    assert metrics["toy_old"]["mean"] == 0.0 and metrics["toy_forgetting"]["mean"] == 1.0  # square for circle
    assert metrics["toy_composite"]["n"] == 2
    assert PERSON.composite_prompt() in suite_prompts() and "a photo of sks red arrow" in suite_prompts()


def _fake_results(out: Path, seeds: int) -> dict:
    """Eval results of two checkpoints over many seeds, with real PNGs (no generation)."""
    (out / "cache").mkdir(parents=True)
    prompts = ["a photo of sks blue arrow", "a red circle"]
    models = []
    for step in (250, 500):
        images = []
        for p in range(len(prompts)):
            row = []
            for s in range(seeds):
                rel = f"cache/{step}-{p}-{s}.png"
                Image.new("RGB", (64, 64), (40 * s % 255, 90, 30 * p)).save(out / rel)
                row.append(rel)
            images.append(row)
        per_seed = {str(s): 20.0 + s for s in range(seeds)}
        models.append({
            "label": f"person @ step {step}", "ref": f"/runs/person-{step}", "base": None, "fingerprint": "f",
            "checkpoint": {"run": "/runs/person", "step": step, "final": step == 500},
            "metrics": {"clip_t": {"mean": 25.0, "std": 1.0, "n": 4, "backbone": "toy clip", "scale": "CLIP-T"},
                        "toy_person": {"mean": step / 1000, "std": 0.1, "n": 4, "backbone": "toy judge",
                                       "scale": "fraction"}},
            "per_prompt": {"clip_t": [{"prompt": q, "mean": 25.0, "std": 1.0, "n": seeds, "per_seed": per_seed}
                                      for q in prompts]},
            "images": {"main": images}, "generated": 0, "reused": 0})
    return {"settings": {"steps": 20, "guidance": 4.0, "scheduler": "dpm++", "width": None, "height": None,
                         "negative_prompt": "", "seeds": list(range(seeds)), "prompts": prompts,
                         "generic_prompts": []},
            "backbones": {"clip": "toy clip"}, "generation": {"generated": 0, "reused": 0},
            "metrics": {"clip_t": {"label": "CLIP-T", "backbone": "toy clip", "scale": "CLIP-T", "better": "higher",
                                   "help": "image-prompt agreement"},
                        "toy_person": {"label": "person", "backbone": "toy judge", "scale": "fraction",
                                       "better": "higher", "help": "the judge sees the person"}},
            "references": [], "models": models}


@pytest.mark.parametrize("seeds", [3, 12])
def test_eval_report_fits_the_page_with_a_chart_across_checkpoints(tmp_path: Path, seeds: int) -> None:
    results = _fake_results(tmp_path, seeds)
    page = write_reports(results, tmp_path)["html"]
    seen = assert_fits(page)
    assert seen["charts"] == 2, "one chart per scale: CLIP-T points and fractions never share an axis"
    assert seen["images"] >= 2 * 2 * seeds


def test_the_legends_describe_the_person_the_suite_judges() -> None:
    """The legend once said "striped red and yellow" for the red and cyan person: the texts now come from it."""
    from sdtune.evaluation.toy_suite import TOY_METRICS
    from sdtune.toy.report import COLUMNS
    from sdtune.toy.world import PERSON

    person_texts = [TOY_METRICS["toy_person"][2], dict((k, w) for k, _, w in COLUMNS)["person_judge"]]
    for text in person_texts:
        assert PERSON.instance_prompt in text and PERSON.colour in text and PERSON.colour2 in text, text
    assert PERSON.composite_prompt() in TOY_METRICS["toy_composite"][2]
