"""The toy VAE: a 0.7 M-parameter AutoencoderKL, 32x32 pixels <-> 4x8x8 latents, trained on the wide world.

Why train it on the wide world (patterns, the held-out glyph): a VAE that only saw solid shapes cannot represent
a checkered fill, so no fine-tune could ever teach one. SD's VAE likewise saw far more than any fine-tune.
The loss is pixel MSE plus a tiny KL term (SD adds LPIPS and a GAN; at 32 px MSE is enough to be sharp).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from sdtune.toy.world import RESOLUTION, to_model_input


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=RESOLUTION,
    )


def autocast(enabled: bool):
    """bf16 autocast on CPU halves the step time of these small convolutions (measured here)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup_fraction: float = 0.05):
    """Linear warmup then cosine decay to 5 %: the schedule every toy model trains with."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1]."""
    mse = float(((a.clamp(-1, 1) - b) / 2).pow(2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def train_vae(images: np.ndarray, steps: int, seed: int = 0, batch_size: int = 32, lr: float = 2e-3,
              kl_weight: float = 1e-6, bf16: bool = True, log: Callable[[str], None] = print):
    """Train the VAE on uint8 images and set its ``scaling_factor`` so latents have unit variance (as SD's)."""
    torch.manual_seed(seed)
    vae = build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    gen = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc="vae", unit="step", dynamic_ncols=True)
    for _ in bar:
        x = to_model_input(images[gen.integers(0, len(images), batch_size)])
        with autocast(bf16):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(recon.float(), x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval()
    with torch.no_grad():
        sample = to_model_input(images[:256])
        std = float(vae.encode(sample).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    log(f"vae: latent std {std:.3f} -> scaling_factor {1.0 / std:.4f}")
    return vae


@torch.no_grad()
def evaluate_vae(vae, images: np.ndarray) -> float:
    """Mean PSNR of reconstructions (posterior mean) on held-out images."""
    vae.eval()
    values = []
    for i in range(0, len(images), 64):
        x = to_model_input(images[i:i + 64])
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        values.append(psnr(recon, x))
    return float(np.mean(values))
