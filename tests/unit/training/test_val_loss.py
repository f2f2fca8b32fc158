"""Validation loss: which images are held out (fixed by the seed, never trained on), its fixed timesteps, and its
config refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.config import RunConfig
from sdtune.data.held_out import held_out_examples, held_out_paths
from sdtune.data.subsets import build_stream
from sdtune.errors import ConfigError, DataError
from sdtune.training.val_loss import fixed_timesteps
from tests.helpers import make_images


def _cfg(tmp: Path, **loss) -> RunConfig:
    return RunConfig.model_validate({"data": {"instance_dir": str(tmp / "inst"), "instance_prompt": "a sks dog",
                                              "resolution": 32},
                                     "validation": {"loss": loss}})


def test_timesteps_are_the_centres_of_equal_bins() -> None:
    assert fixed_timesteps(4, 1000) == [125, 375, 625, 875]
    assert fixed_timesteps(1, 1000) == [500]


def test_split_holds_out_the_same_images_for_a_seed_and_the_stream_never_sees_them(tmp_path: Path) -> None:
    from sdtune.models.loading import load_components

    make_images(tmp_path / "inst", 10)
    cfg = _cfg(tmp_path, split=0.2, seed=3)
    held = held_out_paths(cfg)
    assert len(held) == 2 and held == held_out_paths(_cfg(tmp_path, split=0.2, seed=3))
    assert held != held_out_paths(_cfg(tmp_path, split=0.2, seed=4))
    stream = build_stream(cfg.data, load_components("tiny").tokenizer, 0, held_out=held)
    assert len(stream.train) == 8 and not held & {e.path for e in stream.train}
    assert [e.prompts for e in held_out_examples(cfg)] == [("a sks dog",)] * 2


def test_a_split_that_leaves_nothing_is_one_line(tmp_path: Path) -> None:
    make_images(tmp_path / "inst", 2)
    with pytest.raises(DataError, match=r"validation.loss.split=0.1 of 2 training images holds out 0"):
        held_out_examples(_cfg(tmp_path, split=0.1))


@pytest.mark.parametrize("loss", [{}, {"split": 0.1, "data_dir": "val"}])
def test_validation_loss_needs_exactly_one_source(loss: dict) -> None:
    from sdtune.config import config_from_dict

    with pytest.raises(ConfigError, match="exactly one of split"):
        config_from_dict({"data": {"train_dir": "d"}, "validation": {"loss": loss}})


def test_the_report_charts_the_runs_validation_loss_curve(tmp_path: Path) -> None:
    import json

    from sdtune.evaluation.report import val_loss_chart

    (tmp_path / "metrics.json").write_text(json.dumps({"val_loss": {"10": 0.31, "2": 0.42, "4": 0.35}}))
    (chart,) = val_loss_chart(tmp_path)
    assert chart.startswith("<svg") and "validation loss" in chart
    assert chart.index("step 2<") < chart.index("step 4<") < chart.index("step 10<"), "steps in numeric order"
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "finished"}))
    assert val_loss_chart(tmp_path) == []
