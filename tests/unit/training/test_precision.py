"""The fp16 pieces a CPU can run: validation and class images in half precision, the grad scaler's skipped steps and
its checkpointed state. (fp16 training itself needs CUDA: accelerate gives a CPU no fp16 autocast or scaler.)"""

from __future__ import annotations

from pathlib import Path
from types import MethodType

import numpy as np
import pytest
import torch
from PIL import Image

from sdtune.config import config_from_dict
from sdtune.data.class_images import generate_for_run
from sdtune.models.loading import load_components
from sdtune.training import checkpoint as ckpt
from sdtune.training.loop import apply_update
from sdtune.training.modules import configure_trainables
from sdtune.training.validation import run_validation


def _cfg(tmp: Path, **train):
    return config_from_dict({"data": {"instance_dir": str(tmp / "photos"), "instance_prompt": "sks", "resolution": 32,
                                      "with_prior_preservation": True, "class_dir": str(tmp / "class"),
                                      "class_prompt": "a dog",
                                      "num_class_images": 1, "class_generation_steps": 2},
                             "train": train, "validation": {"prompts": ["a photo of sks dog"], "steps": 1}})


def _fp16_autocast():
    return torch.autocast("cpu", dtype=torch.float16)


def _prepare_like_accelerate(model: torch.nn.Module) -> None:
    """What ``accelerator.prepare`` does to a model under fp16 on a GPU: autocast inside, fp32 outputs."""
    from accelerate.utils import convert_outputs_to_fp32

    forward = torch.autocast("cpu", dtype=torch.float16)(model.forward.__func__)
    model.forward = MethodType(convert_outputs_to_fp32(forward), model)


def test_validation_under_fp16_autocast_with_half_frozen_weights(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, lora={"rank": 2}, train_text_encoder=True, mixed_precision="fp16")
    comps = load_components("tiny")
    trainables = configure_trainables(cfg, comps, torch.device("cpu"))
    assert comps.vae.dtype == torch.float16
    _prepare_like_accelerate(trainables.unet)
    _prepare_like_accelerate(trainables.text_encoder)
    before = [p.detach().clone() for p in trainables.parameters()]

    with pytest.raises(RuntimeError, match="should be the same"):  # the fault: fp32 latents into an fp16 VAE
        run_validation(cfg, comps, trainables.unet, trainables.text_encoder, 1, tmp_path / "plain")
    images = run_validation(cfg, comps, trainables.unet, trainables.text_encoder, 1, tmp_path / "samples",
                            autocast=_fp16_autocast)
    pixels = np.asarray(images[0], dtype=np.float32)
    assert pixels.shape == (32, 32, 3) and pixels.std() > 1.0, "an fp16 overflow draws a flat image"
    assert (tmp_path / "samples" / "step-000001" / "00-00.png").is_file()
    assert trainables.unet.training and trainables.text_encoder.training, "training mode is restored"
    assert all(p.dtype == torch.float32 for p in trainables.parameters()), "LoRA weights stay fp32"
    assert all(torch.equal(a, b) for a, b in zip(before, trainables.parameters(), strict=True))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_class_images_are_made_in_the_runs_compute_dtype(tmp_path: Path, precision: str) -> None:
    fp32 = _cfg(tmp_path / "fp32")
    half = _cfg(tmp_path / "half", mixed_precision=precision)
    assert generate_for_run(fp32, "cpu") == 1 and generate_for_run(half, "cpu") == 1
    a, b = ([np.asarray(Image.open(p), dtype=np.float32) for p in sorted((tmp_path / run / "class").glob("*.png"))]
            for run in ("fp32", "half"))
    assert all(x.std() > 1.0 for x in b), "an overflow draws flat images"
    assert any(np.abs(x - y).max() > 0 for x, y in zip(a, b, strict=True)), f"the base must run in {precision}"


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)


def test_a_skipped_fp16_step_advances_neither_lr_schedule_nor_ema(accelerator) -> None:
    from accelerate.optimizer import AcceleratedOptimizer
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    model = torch.nn.Linear(3, 1)
    inner = torch.optim.AdamW(model.parameters(), lr=1.0)
    lr_scheduler = get_scheduler("linear", optimizer=inner, num_warmup_steps=0, num_training_steps=10)
    scaler = torch.amp.GradScaler("cpu")  # the scaler accelerate gives fp16 on a GPU, here on the CPU
    optimizer = AcceleratedOptimizer(inner, device_placement=False, scaler=scaler)
    ema = EMAModel(model.parameters(), decay=0.9)
    weights = [p.detach().clone() for p in model.parameters()]

    scaler.scale(model(torch.full((2, 3), float("inf"))).sum()).backward()  # overflowed gradients
    assert apply_update(optimizer, lr_scheduler, ema, model) is False
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert lr_scheduler.last_epoch == 0 and ema.optimization_step == 0, "a skipped step must not count"
    assert scaler.get_scale() == 2.0**15

    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    assert apply_update(optimizer, lr_scheduler, ema, model) is True
    assert lr_scheduler.last_epoch == 1 and ema.optimization_step == 1
    assert not torch.equal(weights[0], model.weight)


def test_grad_scaler_state_is_checkpointed(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    for value in (float("inf"), 1.0, 1.0):  # one overflow halves the scale, two good steps advance the tracker
        scaler.scale(model(torch.full((1, 3), value)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
    path = ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=3), {"m": model}, optimizer, lr_scheduler,
                                scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", growth_interval=3)
    ckpt.load_checkpoint(path, {"m": model}, optimizer, lr_scheduler, scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict() and fresh.get_scale() == 2.0**15
