"""The body of one training step: a batch's loss, and the optimizer update that follows it.

``sdtune.training.loop`` keeps the order of a step (seed the micro-step, forward and backward each micro-batch, clip,
update, judge, save); this module is what one micro-batch computes and how one update is applied. Every random draw
of a micro-step happens here (noise, noise offset, timesteps), in this order, after the loop has reseeded the global
RNG for that micro-step: exact resume rests on it (``sdtune.training.loop``, rule 1).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from sdtune.config import RunConfig
from sdtune.data.masks import latent_weights
from sdtune.errors import ConfigError
from sdtune.training.losses import min_snr_weights, training_target, weighted_loss
from sdtune.training.pivotal import lora_steps_held
from sdtune.words import counted


def micro_step_seed(seed: int, micro_step: int, rank: int) -> int:
    """The global RNG's seed for one micro-step of one process: a function of where the run is, not of its past."""
    return (seed * 1_000_003 + micro_step * 9_973 + rank * 7_919) % (2**63 - 1)


class StepLoss:
    """A batch's loss, and the loss of predicting zero on the same batch (the divergence guard's yardstick).

    ``unet`` / ``text_encoder``: the prepared (possibly DDP-wrapped) modules the step runs; ``preservation``: the
    output-preservation term (``sdtune.training.preservation``) or None. While pivotal tuning holds the LoRA back
    (``train.textual_inversion.lora_start``) the term is not computed: it compares the model with its adapter on and
    off on prompts without the token, so it is zero (the held adapter is its initial no-op) and its gradient only
    reaches the LoRA, whose gradients are dropped; it would cost two UNet forwards per example for nothing.
    """

    def __init__(self, cfg: RunConfig, accelerator: Any, unet: Any, text_encoder: Any, conditioner: Any,
                 noise_scheduler: Any, preservation: Any, family: Any, attention: Any = None) -> None:
        self.cfg, self.accelerator, self.unet, self.text_encoder = cfg, accelerator, unet, text_encoder
        self.conditioner, self.noise_scheduler, self.preservation, self.family = (conditioner, noise_scheduler,
                                                                                  preservation, family)
        self.attention = attention  # train.attention_loss (sdtune.training.attention_loss), with the masks
        self._terms: dict[str, list[torch.Tensor]] = {}  # this step's loss terms by name, per micro-batch group
        self.timestep_range = timestep_range(cfg, noise_scheduler.config.num_train_timesteps)
        self.preservation_from = lora_steps_held(cfg)  # the first step whose update trains the LoRA
        self.masks_from = cfg.data.unmasked_steps(cfg.train.max_steps)  # data.mask_start

    def __call__(self, batch: dict[str, Any], step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch is one group (one shape) or two (class images of another bucket than the training ones): one
        forward each, their weighted losses summed (``weighted_loss`` divides each by the training examples).
        ``step``: the optimizer steps done before this update (``TrainState.step``)."""
        num_train = batch["num_train"]
        preserve = self.preservation is not None and step >= self.preservation_from
        masked = step >= self.masks_from
        losses = [self.group_loss(group, num_train, preserve, masked) for group in batch["groups"]]
        return sum(x[0] for x in losses), sum(x[1] for x in losses)  # type: ignore[return-value]

    def take_terms(self) -> dict[str, torch.Tensor]:
        """The loss terms beside the diffusion loss since the last call, each averaged over its micro-batches
        (``preservation_loss``, ``attention_loss``; detached, on the device: read with the step's one host sync)."""
        terms, self._terms = self._terms, {}
        return {name: torch.stack(values).mean() for name, values in terms.items()}

    def group_loss(self, group: dict[str, Any], num_train: int, preserve: bool = True,
                   masked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, accelerator, noise_scheduler = self.cfg, self.accelerator, self.noise_scheduler
        latents = self.conditioner.latents(group)
        conditioning = self.conditioner.unet_kwargs(group)  # text (SDXL: + pooled text and time ids), per family
        noise = torch.randn_like(latents)
        if cfg.train.noise_offset:
            noise = noise + cfg.train.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1,
                                                                 device=latents.device, dtype=latents.dtype)
        timesteps = torch.randint(*self.timestep_range, (latents.shape[0],), device=latents.device).long()
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target = training_target(noise_scheduler, latents, noise, timesteps)
        attend = self.attention is not None and masked and "loss_mask" in group and "input_ids" in group
        recording = self.attention.recording(tuple(latents.shape[-2:])) if attend else contextlib.nullcontext()
        with accelerator.autocast(), recording:
            pred = self.unet(noisy, timesteps, **conditioning, return_dict=False)[0]
        weights = group["loss_weight"].to(latents.device)
        if cfg.train.snr_gamma is not None:
            weights = weights * min_snr_weights(noise_scheduler, timesteps, cfg.train.snr_gamma)
        masks = group.get("loss_mask") if masked else None  # data.masked_loss: (B, 1, H, W) -> latent weights
        pixels = None if masks is None else latent_weights(masks.to(latents.device), tuple(latents.shape[-2:]),
                                                           cfg.data.mask_outside_weight)
        with torch.no_grad():
            zero = weighted_loss(torch.zeros_like(target), target, weights, num_train, pixels)
        loss = weighted_loss(pred, target, weights, num_train, pixels)
        if attend:  # the token's attention towards the masks (Break-A-Scene); projections as the forward ran them
            with accelerator.autocast():
                term = self.attention.loss(group["input_ids"].to(latents.device), masks, num_train)
            if term is not None:
                loss = loss + term
                self._terms.setdefault("attention_loss", []).append(term.detach())
        if preserve and self.preservation is not None:  # towards the starting model on prompts without the token
            with accelerator.autocast():
                kept = self.preservation.loss(self.unet, self.text_encoder, cfg.train.train_text_encoder,
                                              noisy[:num_train], timesteps[:num_train], self.family,
                                              _first(group.get("crop_geometry"), num_train))
            loss = loss + kept
            self._terms.setdefault("preservation_loss", []).append(kept.detach())
        return loss, zero


def timestep_range(cfg: RunConfig, schedule_length: int) -> tuple[int, int]:
    """The timesteps a step draws from, ``[low, high)`` (``train.min_timestep`` / ``max_timestep``, kohya's
    options: low timesteps draw detail and colour, high ones layout and form). The defaults give the whole
    schedule, ``randint(0, schedule_length)`` as before. Raises ConfigError for a range past the schedule."""
    low, high = cfg.train.min_timestep, cfg.train.max_timestep or schedule_length
    if high > schedule_length:
        raise ConfigError(f"train.max_timestep={high} is past the noise schedule's end ("
                          f"{counted(schedule_length, 'timestep')}): set it to at most {schedule_length} "
                          "(or null for all)")
    if low >= high:
        raise ConfigError(f"train.min_timestep={low} leaves no timestep below {high}: lower it")
    return low, high


def apply_update(optimizer, lr_scheduler, ema, averaged: torch.nn.Module | list[torch.nn.Parameter]) -> bool:
    """One optimizer update; returns False when fp16's grad scaler skipped it (overflowed gradients).

    ``averaged``: what the EMA averages (a module's parameters, or ``EvalWeights.ema_parameters``).

    A skipped step changes no weight, so the LR schedule and the EMA do not advance either (what accelerate's
    prepared scheduler does): otherwise the first fp16 steps, which the scaler skips while it finds its scale,
    would eat the warmup. Without a scaler (no / bf16) no step is ever skipped.
    """
    optimizer.step()
    skipped = bool(getattr(optimizer, "step_was_skipped", False))
    if not skipped:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None and not skipped:
        ema.step(averaged.parameters() if isinstance(averaged, torch.nn.Module) else averaged)
    return not skipped


def _first(rows: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The first ``n`` rows (the training examples of a group), or None."""
    return None if rows is None else rows[:n]
