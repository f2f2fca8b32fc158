"""A run used for inference samples with the objective it trained (``model.prediction_type``), not its base's."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from sdtune.config import config_from_dict
from sdtune.inference.pipeline import load_for_inference, model_fingerprint, read_run
from sdtune.inference.testing import make_lora_file, make_run_folder
from sdtune.models.presets import preset_path
from sdtune.recipes.runs import concept_run, write_stack_profile
from sdtune.training.outputs import save_fused_model


def _set_prediction_type(run: Path, prediction_type: str | None) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["prediction_type"] = prediction_type
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_lora_run_and_old_full_run_sample_with_the_runs_objective(tmp_path: Path) -> None:
    lora = make_run_folder(tmp_path / "lora", kind="lora")
    before = model_fingerprint(str(lora))
    _set_prediction_type(lora, "v_prediction")  # trained v on an epsilon base ("tiny")
    assert load_for_inference(str(lora)).scheduler.config.prediction_type == "v_prediction"
    assert model_fingerprint(str(lora)) != before, "cached generations of the other objective must not be reused"

    full = make_run_folder(tmp_path / "full", kind="full")  # a model/ whose scheduler still says epsilon
    _set_prediction_type(full, "v_prediction")
    assert load_for_inference(str(full)).scheduler.config.prediction_type == "v_prediction"
    assert load_for_inference("tiny").scheduler.config.prediction_type == "epsilon"


def test_fused_model_scheduler_says_the_runs_objective(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_lora_file(run / "lora")
    cfg = config_from_dict({"output_dir": str(run), "model": {"base": "tiny", "prediction_type": "v_prediction"},
                            "data": {"instance_dir": str(tmp_path), "instance_prompt": "sks"},
                            "train": {"lora": {"rank": 4}}})
    save_fused_model(run, cfg)
    config = json.loads((run / "model" / "scheduler" / "scheduler_config.json").read_text())
    base = json.loads((preset_path("tiny") / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert config["_class_name"] == base["_class_name"], "the base's own sampler, only the objective changes"


def test_stack_profile_samples_with_the_objective_the_stack_was_trained_for(tmp_path: Path) -> None:
    concept = tmp_path / "concept"
    (concept / "model").mkdir(parents=True)
    (concept / "model" / "model_index.json").write_text("{}")
    make_lora_file(concept / "lora")
    (concept / "config.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny",
                                                                   "prediction_type": "v_prediction"}}))
    person = tmp_path / "person"
    make_lora_file(person / "lora", seed=2)
    (person / "config.yaml").write_text(yaml.safe_dump({"model": {"base": str(concept / "model")}}))
    stack = write_stack_profile(person, concept_run(concept))
    assert stack is not None and read_run(stack).prediction_type == "v_prediction", "inherited from the concept"
    assert load_for_inference(str(stack)).scheduler.config.prediction_type == "v_prediction"

    _set_prediction_type(person, "epsilon")  # the person stage's own override wins
    write_stack_profile(person, concept_run(concept))
    assert read_run(stack).prediction_type == "epsilon"
