"""Diffusion training targets and loss weighting (epsilon / v-prediction, min-SNR-gamma, per-sample weights)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def training_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict, from the scheduler's prediction type."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r} (epsilon and v_prediction are)")


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023); for v-prediction the target's own scale divides by snr+1."""
    ratio = snr(noise_scheduler, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (ratio + 1.0)
    return clipped / ratio


def weighted_loss(pred: torch.Tensor, target: torch.Tensor, sample_weights: torch.Tensor,
                  num_train: int, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of per-sample MSE x weight, divided by the number of training (non-class) samples.

    With unit weights and no class images this is the plain mean; with prior preservation it equals
    ``mean(instance) + prior_loss_weight * mean(class)``, the DreamBooth objective. ``pixel_weights`` (B, 1, h, w):
    a masked loss (``sdtune.data.masks.latent_weights``); each sample's MSE is then the weighted mean over its
    latent pixels, so a small mask trains its part as strongly as a whole image does (an empty one adds nothing).
    """
    error = F.mse_loss(pred.float(), target.float(), reduction="none")
    if pixel_weights is None:
        per_sample = error.mean(dim=(1, 2, 3))
    else:
        w = pixel_weights.float()
        per_sample = (error * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3)).clamp(min=1e-8)
    return (per_sample * sample_weights.float()).sum() / num_train
