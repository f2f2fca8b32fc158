"""One person method everywhere (issue #23): the demo, both two-stage configs and personalize without --config
train the person the same way - pivotal tuning in sequence, the token alone first, then a LoRA around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.config import config_from_dict
from sdtune.recipes.personalize import template_stage
from sdtune.toy.demo_settings import DemoSettings

REPO = Path(__file__).resolve().parents[3]


def _person(template: dict) -> dict:
    train = template["train"]
    return {"lora": train["lora"], "learning_rate": train["learning_rate"], "max_steps": train["max_steps"],
            "textual_inversion": {k: v for k, v in train["textual_inversion"].items() if k != "token"}}


@pytest.mark.parametrize("recipe", ["two-stage.yaml", "sdxl-two-stage.yaml"])
def test_the_two_stage_configs_train_the_person_as_personalize_does(recipe: str) -> None:
    shipped, _ = template_stage(REPO / "configs" / recipe, "person")
    default, _ = template_stage(None)
    assert _person(shipped) == _person(default)
    learned = config_from_dict({"data": shipped["data"], "train": shipped["train"]}).train.textual_inversion
    assert learned is not None and learned.token == "<sks>" and learned.lora_start == learned.ti_fraction == 0.5
    assert "<sks>" in shipped["data"]["instance_prompt"]


def test_the_demo_trains_its_person_by_the_same_method() -> None:
    settings = DemoSettings()
    assert settings.person_method == "pivotal"
    assert settings.person_lora_start == settings.person_ti_fraction == 0.5
