"""A run's checkpoints as models (what the run would have saved had it stopped there), and the rule that picks the
one to keep: forgetting filters, the subject score ranks, ties go to the earlier step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtune.config import config_from_dict
from sdtune.errors import SdtuneError
from sdtune.evaluation.checkpoints import expand_checkpoints, materialise
from sdtune.evaluation.pick import choose, describe
from tests.helpers import make_images, tiny_config


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdtune.training.loop import train

    tmp = tmp_path_factory.mktemp("ckpt-run")
    cfg = tiny_config(tmp / "run", {"instance_dir": str(make_images(tmp / "me", 3)),
                                    "instance_prompt": "a photo of sks dog"},
                      {"max_steps": 4, "lora": {"rank": 2}, "train_text_encoder": True},
                      checkpoint={"every": 2, "keep": 5})
    train(config_from_dict(cfg))
    return tmp / "run"


def test_the_final_checkpoint_is_the_runs_own_lora_bitwise(lora_run: Path, tmp_path: Path) -> None:
    models = expand_checkpoints(lora_run, tmp_path)
    assert [(m.step, m.final) for m in models] == [(2, False), (4, True)]
    assert models[1].label == "run @ step 4 (final)"
    final = load_file(str(models[1].folder / "lora" / "pytorch_lora_weights.safetensors"))
    saved = load_file(str(lora_run / "lora" / "pytorch_lora_weights.safetensors"))
    assert final.keys() == saved.keys() and any(k.startswith("text_encoder.") for k in saved)
    assert all(torch.equal(final[k], saved[k]) for k in saved)
    early = load_file(str(models[0].folder / "lora" / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(early[k], saved[k]) for k in saved), "step 2 is not step 4"
    stamp = (models[0].folder / "lora" / "pytorch_lora_weights.safetensors").stat().st_mtime_ns
    expand_checkpoints(lora_run, tmp_path)  # the same weights: nothing rewritten
    assert (models[0].folder / "lora" / "pytorch_lora_weights.safetensors").stat().st_mtime_ns == stamp


def test_full_runs_and_runs_without_checkpoints_are_refused(lora_run: Path, tmp_path: Path) -> None:
    with pytest.raises(SdtuneError, match="no checkpoints"):
        expand_checkpoints(tmp_path, tmp_path / "out")
    full = tmp_path / "full"
    full.mkdir()
    text = (lora_run / "config.yaml").read_text().replace("lora:", "old_lora:")
    (full / "config.yaml").write_text("\n".join(line for line in text.splitlines() if "old_lora" not in line))
    with pytest.raises(SdtuneError):
        materialise(full, lora_run / "checkpoints" / "step-000002", tmp_path / "m")


def _results(rows: dict[int, tuple[float, float, float]], kind: str = "toy") -> dict:
    """Fake eval results: step -> (person, composite, forgetting)."""
    names = ("toy_person", "toy_composite", "toy_forgetting") if kind == "toy" else \
        ("dino", "clip_t", "generic_clip_delta")
    models = [{"label": f"run @ step {step}", "ref": f"/x/step-{step}", "checkpoint": {"step": step, "run": "/x"},
               "metrics": {n: {"mean": v} for n, v in zip(names, values, strict=True)}}
              for step, values in rows.items()]
    return {"metrics": {n: {"label": n} for n in names}, "models": models}


def test_forgetting_filters_then_the_subject_score_ranks() -> None:
    results = _results({250: (0.30, 0.10, 0.01), 500: (0.50, 0.40, 0.03), 750: (0.70, 0.60, 0.20)})
    choice = choose(results)
    assert choice.model["checkpoint"]["step"] == 500  # 750 is better but forgot 0.20 > 0.05
    assert [r["candidate"] for r in choice.rows] == [True, True, False]
    assert choice.rows[1]["score"] == pytest.approx(1.0)
    assert choose(results, max_forgetting=0.5).model["checkpoint"]["step"] == 750
    text = "\n".join(describe(choice, results))
    assert "<- keep" in text.splitlines()[2] and "forgot too much" in text.splitlines()[3]


def test_ties_go_to_the_earlier_step_and_all_forgetting_keeps_the_least() -> None:
    assert choose(_results({250: (0.5, 0.5, 0.0), 500: (0.5, 0.5, 0.0)})).model["checkpoint"]["step"] == 250
    choice = choose(_results({250: (0.5, 0.5, 0.30), 500: (0.9, 0.9, 0.20)}))
    assert choice.model["checkpoint"]["step"] == 500 and "forgot least" in choice.note


def test_real_models_rank_on_fidelity_and_clip_t_with_clip_points_forgetting() -> None:
    # dino (cosine) and CLIP-T (points) weigh the same after scaling; a CLIP-T drop of 2 points forgot too much
    results = _results({250: (0.60, 30.0, -0.5), 500: (0.70, 29.0, -0.8), 750: (0.80, 31.0, -2.0)}, kind="clip")
    choice = choose(results)
    assert choice.subject == ["dino", "clip_t"] and choice.limit == 1.0
    assert choice.model["checkpoint"]["step"] == 500


def test_pick_on_a_recipe_folder_names_the_run_folders_in_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdtune.cli import app

    for stage in ("concept", "person"):
        (tmp_path / "two-stage" / stage).mkdir(parents=True)
        (tmp_path / "two-stage" / stage / "config.yaml").write_text("data: {}\n")
    result = CliRunner().invoke(app, ["pick", str(tmp_path / "two-stage")])
    assert isinstance(result.exception, SdtuneError)  # the CLI's handler prints it as one line
    message = str(result.exception)
    assert "is not a run folder (no config.yaml); the run folders in it: " in message
    assert str(tmp_path / "two-stage" / "person") in message


def test_negative_clip_i_ranks_worst_to_best_and_the_output_says_why() -> None:
    """On the toy model CLIP-I (the toy's tiny CLIP) was negative for every checkpoint: relative to a negative best
    its part of the score was dropped without a word. Now it ranks from worst (0) to best (1), and pick says why."""
    from sdtune.evaluation.pick import describe
    from sdtune.models.presets import toy_path

    values = {2: (-0.30, 30.0), 4: (-0.10, 28.0), 6: (-0.20, 31.0)}
    models = [{"label": f"run @ step {step}", "ref": f"/x/step-{step}", "checkpoint": {"step": step, "run": "/x"},
               "metrics": {"clip_i": {"mean": i}, "clip_t": {"mean": t}}} for step, (i, t) in values.items()]
    clip = str(toy_path() / "clip")
    results = {"metrics": {"clip_i": {"label": "CLIP-I", "backbone": clip}, "clip_t": {"label": "CLIP-T",
                                                                                      "backbone": clip}},
               "models": models}
    choice = choose(results)
    assert choice.model["checkpoint"]["step"] == 4  # CLIP-I best (1.0), CLIP-T 28/31: 0.95 against 0.75 and 0.48
    scores = {r["step"]: r["score"] for r in choice.rows}
    assert abs(scores[6] - (0.5 + 1.0) / 2) < 1e-9 and abs(scores[2] - (0.0 + 30 / 31) / 2) < 1e-9
    rule = describe(choice, results)[-1]
    assert "CLIP-I is below 0 for some checkpoints (the toy's CLIP" in rule and "from worst (0) to best (1)" in rule


def test_nothing_learned_is_said_not_kept_silently() -> None:
    """Every checkpoint at person 0 and composite 0: pick used to keep one as if it had learned."""
    choice = choose(_results({250: (0.0, 0.0, 0.0), 500: (0.0, 0.0, 0.01)}))
    assert not choice.learned and "none learned the subject" in choice.note
    assert "none learned the subject" in describe(choice, _results({250: (0.0, 0.0, 0.0)}))[-1]
    assert choose(_results({250: (0.0, 0.04, 0.0)})).learned
