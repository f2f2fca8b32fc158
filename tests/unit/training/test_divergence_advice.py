"""A diverged run's advice names the usual rates of its method and suggests one in that range."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdtune.config import config_from_dict
from sdtune.training.divergence import DivergenceGuard


def _advice(tmp_path: Path, **train) -> str:
    cfg = config_from_dict({"data": {"train_dir": "d"}, "train": train})
    guard = DivergenceGuard(cfg, tmp_path, main_process=True, grad_scaler=False, resumed_step=None)
    return str(guard.stop("the loss became nan at step 3"))


def _suggested(message: str) -> dict[str, str]:
    command = message[message.index("e.g. sdtune train"):]
    return dict(re.findall(r"(train\.\w+)=(\S+)", command))


@pytest.mark.parametrize("train,expected,usual", [
    # the reported case: a full fine-tune from 1e4 needed five restarts at /10 each
    ({"learning_rate": 1e4}, {"train.learning_rate": "1e-05"}, "1e-06..1e-05 for full fine-tuning"),
    ({"learning_rate": 1e4, "lora": {"rank": 4}}, {"train.learning_rate": "0.001"}, "0.0001..0.001 for LoRA"),
    ({"learning_rate": 5e-6}, {"train.learning_rate": "5e-07"}, "within the usual 1e-06..1e-05"),
    # the text encoder follows learning_rate when text_encoder_lr is unset; its own range is lower
    ({"learning_rate": 1e-4, "train_text_encoder": True},
     {"train.learning_rate": "1e-05", "train.text_encoder_lr": "5e-06"}, "the text encoder trains at 0.0001"),
    ({"learning_rate": 1e-3, "lora": {"rank": 4}, "train_text_encoder": True, "text_encoder_lr": 5e-4},
     {"train.learning_rate": "0.0001", "train.text_encoder_lr": "5e-05"}, "usual for LoRA: 1e-05..0.0001"),
    # scale_lr multiplies the rate by the batch: the suggestion is the config value that lands in the range
    ({"learning_rate": 1e-4, "scale_lr": True, "batch_size": 4}, {"train.learning_rate": "2.5e-06"},
     "x4 by train.scale_lr"),
])
def test_suggested_rates_land_in_the_methods_usual_range(tmp_path: Path, train: dict, expected: dict,
                                                         usual: str) -> None:
    message = _advice(tmp_path, **{"max_grad_norm": 1.0, **train})
    assert _suggested(message) == expected, message
    assert usual in message, message
