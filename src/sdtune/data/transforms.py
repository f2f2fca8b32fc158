"""Image -> training tensor, with augmentations decided by a per-example RNG.

Every random choice (crop offset, flip, caption dropout) comes from ``random.Random`` seeded by the run seed
and the example's position in the data stream, so an example looks the same whether the run was
interrupted and resumed or not, and whatever process or worker loads it.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def resize_and_crop(image: Image.Image, resolution: int, center_crop: bool, rng: random.Random) -> Image.Image:
    """Resize the short side to ``resolution`` then crop a square (centre or random)."""
    w, h = image.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    if center_crop:
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    else:
        left, top = rng.randint(0, new_w - resolution), rng.randint(0, new_h - resolution)
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor C,H,W in [-1, 1] (what the VAE expects)."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def prepare_image(image: Image.Image, resolution: int, center_crop: bool, random_flip: bool,
                  rng: random.Random) -> torch.Tensor:
    image = resize_and_crop(image, resolution, center_crop, rng)
    if random_flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image_to_tensor(image)
