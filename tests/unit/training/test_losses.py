"""Targets and weights: epsilon vs v-prediction, min-SNR-gamma, the DreamBooth prior term."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from sdtune.training.losses import min_snr_weights, snr, training_target, weighted_loss


def test_targets_follow_the_prediction_type() -> None:
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    eps = DDPMScheduler(prediction_type="epsilon")
    assert torch.equal(training_target(eps, latents, noise, t), noise)
    v = DDPMScheduler(prediction_type="v_prediction")
    a = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(training_target(v, latents, noise, t), a * noise - s * latents, atol=1e-6)


def test_min_snr_weights() -> None:
    sched = DDPMScheduler()
    t = torch.tensor([1, 500, 999])
    ratio = snr(sched, t)
    w = min_snr_weights(sched, t, gamma=5.0)
    assert ratio[0] > 5 and torch.isclose(w[0], 5.0 / ratio[0])  # low noise: down-weighted
    assert ratio[2] < 5 and torch.isclose(w[2], torch.tensor(1.0))  # high noise: unchanged
    v = DDPMScheduler(prediction_type="v_prediction")
    assert torch.allclose(min_snr_weights(v, t, 5.0), torch.clamp(ratio, max=5) / (ratio + 1))


def test_prior_preservation_loss_is_instance_mean_plus_weighted_class_mean() -> None:
    pred, target = torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2)
    per = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    loss = weighted_loss(pred, target, torch.tensor([1.0, 1.0, 0.5, 0.5]), num_train=2)
    assert torch.isclose(loss, per[:2].mean() + 0.5 * per[2:].mean())
    assert torch.isclose(weighted_loss(pred, target, torch.ones(4), num_train=4), per.mean())


def test_the_timestep_range_is_the_whole_schedule_unless_narrowed() -> None:
    """train.min_timestep / max_timestep (kohya's options) bound what a step draws; the defaults draw exactly as
    before (randint(0, 1000)), and a range past the schedule is one clear error, not a CUDA index assert."""
    from sdtune.config import config_from_dict
    from sdtune.errors import ConfigError
    from sdtune.training.step import timestep_range

    def cfg(**train):
        return config_from_dict({"data": {"instance_dir": "x", "instance_prompt": "a photo of sks dog"},
                                 "train": train})

    assert timestep_range(cfg(), 1000) == (0, 1000)
    assert timestep_range(cfg(max_timestep=500), 1000) == (0, 500)
    assert timestep_range(cfg(min_timestep=200, max_timestep=800), 1000) == (200, 800)
    with pytest.raises(ConfigError, match=r"train.max_timestep=1200 is past the noise schedule's end "
                                          r"\(1000 timesteps\): set it to at most 1000"):
        timestep_range(cfg(max_timestep=1200), 1000)
    with pytest.raises(ConfigError, match="train.min_timestep=1000 leaves no timestep below 1000"):
        timestep_range(cfg(min_timestep=1000), 1000)
