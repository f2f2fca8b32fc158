"""A finished stage run with a resumable change: the refusal gives the command that applies it (item 6)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sdtune.config import config_from_dict, load_config, save_config
from sdtune.errors import ConfigError
from sdtune.recipes.runner import preflight
from sdtune.recipes.schema import Stage
from tests.helpers import tiny_config


def _finished_stage(tmp: Path) -> tuple[Stage, dict]:
    raw = tiny_config(tmp / "out" / "person", {"instance_dir": str(tmp / "me"), "instance_prompt": "a sks dog"},
                      {"max_steps": 8, "lora": {"rank": 4}})
    run = tmp / "out" / "person"
    run.mkdir(parents=True)
    save_config(config_from_dict(raw), run / "config.yaml")
    (run / "metrics.json").write_text(json.dumps({"status": "finished", "steps": 8}))
    return Stage(name="person", config={}), raw


def test_a_resumable_change_names_the_resume_command(tmp_path: Path) -> None:
    stage, raw = _finished_stage(tmp_path)
    raw["train"]["max_steps"] = 3
    with pytest.raises(ConfigError) as caught:
        preflight([(stage, config_from_dict(raw))])
    message = str(caught.value)
    run = tmp_path / "out" / "person"
    assert "train.max_steps 8 -> 3" in message and "delete" in message
    command = message.split("`")[1]
    assert command == f"sdtune train {shlex.quote(str(run))} train.max_steps=3 --resume latest"
    # the command's overrides read back as the recipe's new values
    assert load_config(run / "config.yaml", shlex.split(command)[3:-2]).train.max_steps == 3


def test_a_change_no_checkpoint_can_take_is_refused_as_before(tmp_path: Path) -> None:
    stage, raw = _finished_stage(tmp_path)
    raw["train"]["max_steps"] = 3
    raw["train"]["lora"]["rank"] = 8
    with pytest.raises(ConfigError, match=r"was run with another config \(changed: .*train\.lora\.rank 4 -> 8") as c:
        preflight([(stage, config_from_dict(raw))])
    assert "--resume" not in str(c.value)
