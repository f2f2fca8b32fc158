"""Checkpoints a pivotal run saved before its LoRA started (``train.textual_inversion.lora_start``): their LoRA is the
identity and only the token learned. Keeping one is legitimate, but every table, pick's rule and pick.json say it
(pick used to keep step 2 of such a run and export a LoRA that changes nothing without a word)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.evaluation.pick import before_lora_line, choose, describe, mark_token_only
from tests.helpers import make_images, tiny_config, write_config


def _pivotal_run(tmp: Path, lora_start: float = 0.5) -> Path:
    train = {"max_steps": 4, "lora": {"rank": 2},
             "textual_inversion": {"token": "<sks>", "ti_fraction": 0.5, "lora_start": lora_start}}
    cfg = tiny_config(tmp / "piv", {"instance_dir": str(make_images(tmp / "me", 1)),
                                    "instance_prompt": "a photo of <sks> dog"}, train)
    (tmp / "piv").mkdir()
    write_config(tmp / "piv" / "config.yaml", cfg)
    return tmp / "piv"


def _results(run: Path, scores: dict[int, float]) -> dict:
    models = [{"label": f"piv @ step {step}", "ref": f"/x/step-{step}",
               "checkpoint": {"step": step, "run": str(run), "final": step == 4},
               "metrics": {"toy_person": {"mean": v}, "toy_composite": {"mean": v}}} for step, v in scores.items()]
    return {"metrics": {"toy_person": {"label": "person"}, "toy_composite": {"label": "composite"}},
            "models": models}


def test_checkpoints_before_the_lora_starts_are_labelled_and_a_kept_one_is_said(tmp_path: Path) -> None:
    results = _results(_pivotal_run(tmp_path), {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.6})
    notes = mark_token_only(results)
    assert notes == ["note: piv: steps 1 and 2 are before the LoRA starts (step 3, train.textual_inversion.lora_start "
                     "0.5): only the token's embedding has learned; their LoRA is the identity"]
    assert [m["label"] for m in results["models"]] == ["piv @ step 1 (token only)", "piv @ step 2 (token only)",
                                                       "piv @ step 3", "piv @ step 4"]
    assert mark_token_only(results) == notes and results["models"][0]["label"].count("token only") == 1  # idempotent
    choice = choose(results)
    assert choice.model["checkpoint"]["step"] == 2  # the embedding alone scored best: kept, and said
    rule = describe(choice, results)[-1]
    assert ("the kept step 2 is before the LoRA starts (step 3, train.textual_inversion.lora_start 0.5): only the "
            "token's embedding has learned; its LoRA is the identity") in rule
    assert "piv @ step 2 (token only) |" in "\n".join(describe(choice, results))


@pytest.mark.parametrize("lora_start", [0.0, None])
def test_runs_whose_lora_trains_from_the_first_step_are_not_labelled(tmp_path: Path, lora_start) -> None:
    run = _pivotal_run(tmp_path, lora_start or 0.0) if lora_start is not None else tmp_path / "gone"
    results = _results(run, {1: 0.9, 2: 0.5})
    assert mark_token_only(results) == []
    assert [m["label"] for m in results["models"]] == ["piv @ step 1", "piv @ step 2"]
    assert "before the LoRA" not in describe(choose(results), results)[-1]


def test_one_step_reads_as_one() -> None:
    assert before_lora_line([2], 3, 0.5).startswith("step 2 is before the LoRA starts (step 3, ")
    assert before_lora_line([2], 3, 0.5).endswith("; its LoRA is the identity")
