"""Validation images during training: the same prompts and seeds every time, so images compare across steps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from sdtune.atomic import atomic_save
from sdtune.config import RunConfig


class ValidationStopped(Exception):  # noqa: N818 - a state, not a failure
    """A stop request cut validation short (between denoising steps); the unfinished image was not saved."""


def validation_pipeline(comps, unet, text_encoder):
    """A pipeline that shares the live training modules (no copy), with a fast sampler."""
    from sdtune.models.samplers import make_scheduler

    # The sampler `sdtune generate` uses by default, built the same way (one rule for every sampler: see samplers).
    scheduler = make_scheduler("dpm++", comps.noise_scheduler.config)
    pipe = comps.family.assemble(vae=comps.vae, unet=unet, scheduler=scheduler, tokenizer=comps.tokenizer,
                                 text_encoder=text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_validation(cfg: RunConfig, comps, unet, text_encoder, step: int, out_root: Path, *,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   should_stop: Callable[[], bool] | None = None) -> list[Image.Image]:
    """Generate each validation prompt; save under ``RUN/samples/step-N/``; return the images.

    ``should_stop``: asked after every denoising step; True raises :class:`ValidationStopped` at once (the images
    of earlier prompts stay saved), so a stop request never waits for a long validation.

    ``autocast`` is the training's mixed-precision context (``accelerator.autocast``). Under bf16/fp16 the live
    modules do not agree on a dtype: frozen VAE and text encoder are stored in bf16/fp16 while the prepared
    UNet returns fp32, and without the same autocast the VAE fails on fp32 latents. The training loop calls it
    with the evaluated weights swapped in (``sdtune.training.eval_weights``: an EMA or schedule-free's average),
    which are the ones the run saves.
    """
    val = cfg.validation
    was_training = unet.training
    te_training = text_encoder.training
    unet.eval()
    text_encoder.eval()
    pipe = validation_pipeline(comps, unet, text_encoder)
    folder = out_root / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    images: list[Image.Image] = []
    written: list[Path] = []

    def check(pipeline, step_index, timestep, callback_kwargs):  # noqa: ARG001 - diffusers' callback signature
        if should_stop is not None and should_stop():
            raise ValidationStopped
        return callback_kwargs

    try:
        with torch.no_grad(), autocast():
            for p_index, prompt in enumerate(val.prompts):
                check(pipe, 0, None, {})
                generator = torch.Generator(device="cpu").manual_seed(val.seed)
                result = pipe(prompt, num_images_per_prompt=val.num_images, num_inference_steps=val.steps,
                              guidance_scale=val.guidance_scale, height=cfg.data.resolution,
                              width=cfg.data.resolution, generator=generator, callback_on_step_end=check).images
                for k, image in enumerate(result):
                    written.append(atomic_save(folder / f"{p_index:02d}-{k:02d}.png", image.save))  # no half PNG
                    images.append(image)
    except ValidationStopped:  # no partial set of images (or an empty step folder) is left behind
        for file in written:
            file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: images of an earlier, complete validation at this step stay
        raise
    finally:
        unet.train(was_training)
        text_encoder.train(te_training)
    return images
