"""The demo's person stage builds a valid run config for each person method (pivotal tuning included)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sdtune.config import config_from_dict
from sdtune.toy.demo import DemoSettings, person_method_label, person_stage


def test_pivotal_person_stage_trains_the_token_beside_the_lora(tmp_path: Path) -> None:
    settings = replace(DemoSettings(), person_method="pivotal", person_poses=4, person_images=8, preservation=2.0,
                       person_lr=1e-3, person_ti_lr=2e-2, person_ti_fraction=0.5)
    cfg = config_from_dict(person_stage(settings, tmp_path, tmp_path / "person", "toy"))
    assert cfg.method == "text-to-image-pivotal" and cfg.is_pivotal
    learned = cfg.train.textual_inversion
    assert (learned.token, learned.learning_rate, learned.ti_fraction) == ("sks", 2e-2, 0.5)
    assert cfg.train.learning_rate == 1e-3 and cfg.train.adam_weight_decay == 0.0
    assert cfg.train.preservation.weight == 2.0
    assert person_method_label(settings) == "pivotal tuning"
    with pytest.raises(ValueError, match="textual-inversion, pivotal or lora"):
        person_stage(replace(settings, person_method="dreambooth"), tmp_path, tmp_path / "p", "toy")
