"""What a run trains: LoRA in fp32 over frozen low-precision weights, full fine-tuning, optimizer choices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.config import config_from_dict
from sdtune.data.class_images import generate_class_images
from sdtune.errors import ConfigError
from sdtune.models.loading import load_components
from sdtune.training.modules import build_optimizer, configure_trainables


def _cfg(**train):
    return config_from_dict({"data": {"instance_dir": "x", "instance_prompt": "sks"}, "train": train})


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_lora_weights_stay_fp32_over_half_precision_frozen_weights(precision: str, dtype: torch.dtype) -> None:
    comps = load_components("tiny")
    cfg = _cfg(lora={"rank": 2}, train_text_encoder=True, mixed_precision=precision)
    trainables = configure_trainables(cfg, comps, torch.device("cpu"))
    trained = {n: p for n, p in trainables.unet.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in trainables.unet.named_parameters() if not p.requires_grad}
    assert trained and all("lora_" in n and p.dtype == torch.float32 for n, p in trained.items())
    assert all(p.dtype == dtype for p in frozen.values())
    assert trainables.text_encoder is not None
    assert any(p.requires_grad for p in trainables.text_encoder.parameters())
    assert comps.vae.dtype == dtype and not any(p.requires_grad for p in comps.vae.parameters())


def test_full_fine_tuning_trains_every_unet_weight_and_separate_text_encoder_lr() -> None:
    comps = load_components("tiny")
    cfg = _cfg(train_text_encoder=True, learning_rate=1e-5, text_encoder_lr=5e-6)
    trainables = configure_trainables(cfg, comps, torch.device("cpu"))
    assert all(p.requires_grad for p in trainables.unet.parameters())
    optimizer = build_optimizer(cfg, trainables, world_size=1)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-5, 5e-6]


def test_8bit_adam_without_a_gpu_is_a_clear_error() -> None:
    comps = load_components("tiny")
    cfg = _cfg(lora={"rank": 2}, optimizer="adamw8bit")
    trainables = configure_trainables(cfg, comps, torch.device("cpu"))
    with pytest.raises(ConfigError, match="adamw8bit"):
        build_optimizer(cfg, trainables, world_size=1)


def test_class_images_are_generated_once_and_reused(tmp_path: Path) -> None:
    folder = tmp_path / "class"
    assert generate_class_images(folder, "a photo of a dog", 3, "tiny", resolution=32, steps=2) == 3
    first = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert sorted(first) == ["class-00000.png", "class-00001.png", "class-00002.png", "class_images.json"]
    assert generate_class_images(folder, "a photo of a dog", 3, "tiny", resolution=32, steps=2) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == first
    (folder / "class-00001.png").unlink()  # an interrupted or pruned folder is topped up
    assert generate_class_images(folder, "a photo of a dog", 3, "tiny", resolution=32, steps=2) == 1


def test_a_lora_target_that_matches_no_layer_is_named_with_the_layers_there_are() -> None:
    """peft skipped a misspelt target silently when another one matched: fewer layers trained, unnoticed."""
    comps = load_components("tiny")
    cfg = _cfg(lora={"rank": 2, "targets": ["to_q", "to_kk"]})
    with pytest.raises(ConfigError, match=r"train\.lora\.targets: \['to_kk'\] match no layer of the "
                                          r"UNet2DConditionModel; .*to_k"):
        configure_trainables(cfg, comps, torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 and 8-bit Adam run where there is CUDA")
@pytest.mark.parametrize("train,needle", [({"mixed_precision": "fp16"}, "fp16 needs a CUDA GPU"),
                                          ({"optimizer": "adamw8bit", "lora": {"rank": 2}}, "adamw8bit")])
def test_settings_this_machine_cannot_run_are_refused_before_the_data_check(tmp_path: Path, train: dict,
                                                                            needle: str) -> None:
    from sdtune.errors import SdtuneError
    from sdtune.training.loop import train as run

    cfg = config_from_dict({"output_dir": str(tmp_path / "run"), "train": train,
                            "data": {"instance_dir": str(tmp_path / "missing"), "instance_prompt": "sks"}})
    with pytest.raises(SdtuneError, match=needle):  # not the DataError of the missing folder, seconds later
        run(cfg)
