"""The validation loss (``validation.loss``): the training objective on held-out images, comparable across steps
and runs.

Comparable because everything random is fixed once: each held-out image (``sdtune.data.held_out``) is centre-cropped
to its bucket without flip or caption dropout, its latent drawn from the VAE posterior with a fixed seed, and it is
noised at ``validation.loss.timesteps`` timesteps spread evenly over the schedule (the centres of equal bins) with
noise drawn once from ``validation.loss.seed``. The loss is the plain mean squared error against the training
target (epsilon or v, no min-SNR weighting), averaged over images x timesteps, measured with the evaluated weights
(EMA / schedule-free average, ``sdtune.training.eval_weights``) in eval mode (no dropout) under the training's
autocast. No draw touches the global RNG, so measuring it never changes the training.

Measured every ``validation.loss.every`` steps (0: at every checkpoint) and at the last step; each value is logged
to the trackers (``val_loss``), kept in the trainer state (so every checkpoint and metrics.json carry the curve up
to it) and read by ``sdtune pick --by val_loss``.
"""

from __future__ import annotations

import random

import torch

from sdtune.config import RunConfig
from sdtune.data.cache import Conditioner, on_device
from sdtune.data.held_out import held_out_examples
from sdtune.data.subsets import ExampleStream, collate
from sdtune.training.losses import training_target

STATE_KEY = "val_loss"  # TrainerState.extra[STATE_KEY]: {"<step>": loss}


def fixed_timesteps(count: int, total: int) -> list[int]:
    """``count`` timesteps at the centres of equal bins of ``[0, total)``: 4 of 1000 -> [125, 375, 625, 875]."""
    return [int((k + 0.5) * total / count) for k in range(count)]


class ValidationLoss:
    """The held-out set, its fixed timesteps and noise, and the measurement."""

    def __init__(self, cfg: RunConfig, comps, text_encoder: torch.nn.Module, device: torch.device,
                 bucket_step: int | None) -> None:
        assert cfg.validation.loss is not None
        self.cfg, self.settings = cfg, cfg.validation.loss
        self.comps, self.device = comps, device
        data = cfg.data.model_copy(update={"random_flip": False, "center_crop": True, "caption_dropout": 0.0})
        self.stream = ExampleStream(held_out_examples(cfg), [], comps.tokenizer, data, self.settings.seed,
                                    bucket_step=bucket_step)
        self.text_encoder = text_encoder
        self.timesteps = fixed_timesteps(self.settings.timesteps, comps.noise_scheduler.config.num_train_timesteps)
        self.every = self.settings.every or cfg.checkpoint.every

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.cfg.train.max_steps

    @torch.no_grad()
    def measure(self, unet: torch.nn.Module, autocast) -> float:
        """The loss of ``unet`` (with the run's frozen or trained text encoder) on the held-out set."""
        conditioner = Conditioner(self.comps.vae, self.text_encoder, self.comps.vae.dtype, self.cfg.train.trains_text,
                                  device=self.device, family=self.comps.family)
        scheduler = self.comps.noise_scheduler
        total, count = 0.0, 0
        modes = [(m, m.training) for m in (unet, self.text_encoder)]
        for module, _ in modes:
            module.eval()
        try:
            with on_device(self.device, self.comps.vae, self.text_encoder):
                for index in range(len(self.stream.train)):
                    example = self.stream.train[index]
                    item = self.stream._item(example, 0, self.stream.train_targets[index], random.Random(0), False)
                    group = {k: v.to(self.device) for k, v in collate([item])["groups"][0].items()}
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(self.settings.seed * 1_000_003 + index)
                        latents = conditioner.latents(group)
                    conditioning = conditioner.unet_kwargs(group)
                    for k, step in enumerate(self.timesteps):
                        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + index * 9_973 + k)
                        noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
                        timesteps = torch.tensor([step], device=latents.device)
                        noisy = scheduler.add_noise(latents, noise, timesteps)
                        target = training_target(scheduler, latents, noise, timesteps)
                        with autocast():
                            pred = unet(noisy, timesteps, **conditioning, return_dict=False)[0]
                        total += float(torch.nn.functional.mse_loss(pred.float(), target.float()))
                        count += 1
        finally:
            for module, training in modes:
                module.train(training)
        return total / count

    def after_step(self, state, accelerator, unet: torch.nn.Module, view) -> float | None:
        """Measure when due (with ``view``'s evaluated weights), record it in ``state.extra`` and the trackers."""
        if not self.due(state.step):
            return None
        with view.swapped():
            value = self.measure(unet, accelerator.autocast)
        state.extra.setdefault(STATE_KEY, {})[str(state.step)] = value
        accelerator.log({"val_loss": value}, step=state.step)
        return value


def build_validation_loss(cfg: RunConfig, comps, text_encoder: torch.nn.Module, device: torch.device,
                          bucket_step: int | None) -> ValidationLoss | None:
    return None if cfg.validation.loss is None else ValidationLoss(cfg, comps, text_encoder, device, bucket_step)
