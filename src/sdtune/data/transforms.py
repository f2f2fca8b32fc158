"""Image -> training tensor, with augmentations decided by a per-example RNG.

Every random choice (crop offset, flip, caption dropout) comes from ``random.Random`` seeded by the run seed
and the example's position in the data stream, so an example looks the same whether the run was
interrupted and resumed or not, and whatever process or worker loads it.

A transform is first *planned* from the image's size alone (:func:`plan_transform`), then applied
(:func:`apply_transform`). The plan names the variant exactly (resize, crop box, flip), which is what the latent
cache keys on: a cached latent can be found without decoding the image.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sdtune.errors import DataError


@dataclass(frozen=True)
class Transform:
    """Resize ``source`` to ``resized``, crop ``(left, top)`` + ``target``, then flip left-right when ``flip``.
    All sizes are (width, height) in pixels."""

    source: tuple[int, int]
    resized: tuple[int, int]
    left: int
    top: int
    target: tuple[int, int]
    flip: bool

    def key(self) -> str:
        """A stable text naming this variant (part of the latent cache key)."""
        return (f"bicubic:{self.source[0]}x{self.source[1]}>{self.resized[0]}x{self.resized[1]}"
                f"/crop:{self.left},{self.top},{self.target[0]}x{self.target[1]}/flip:{int(self.flip)}")

    def crop_geometry(self) -> tuple[int, int, int, int, int, int]:
        """(original height, width, crop top, crop left, target height, width): SDXL's ``time_ids`` for this variant.

        The crop is in the resized image, as SDXL was trained (the SDXL paper; diffusers, kohya, OneTrainer). A
        flipped variant reports the crop of the flipped image (its left edge is the original's right one), which
        is what flipping before cropping gives (diffusers fixed that order for this reason, PR #6547).
        """
        left = self.resized[0] - self.target[0] - self.left if self.flip else self.left
        return (self.source[1], self.source[0], self.top, left, self.target[1], self.target[0])

    def kept_fraction(self) -> tuple[float, float, float, float]:
        """Share of the source image cut away at the (left, top, right, bottom) edges."""
        w, h = self.resized
        return (self.left / w, self.top / h, (w - self.left - self.target[0]) / w,
                (h - self.top - self.target[1]) / h)


def plan_transform(size: tuple[int, int], target: tuple[int, int], center_crop: bool, random_flip: bool,
                   rng: random.Random) -> Transform:
    """Plan the variant of an image of ``size`` trained at ``target`` (both (width, height)).

    The image is scaled to cover the target (aspect kept), then cropped: centred, or at an offset drawn from
    ``rng`` (``center_crop=False``); then flipped with probability 1/2 when ``random_flip``. The RNG is used in
    that order (crop left, crop top, flip), always the same way for the same arguments.
    """
    w, h = size
    tw, th = target
    scale = max(tw / w, th / h)
    new_w, new_h = max(tw, round(w * scale)), max(th, round(h * scale))
    if center_crop:
        left, top = (new_w - tw) // 2, (new_h - th) // 2
    else:
        left, top = rng.randint(0, new_w - tw), rng.randint(0, new_h - th)
    flip = bool(random_flip and rng.random() < 0.5)
    return Transform((w, h), (new_w, new_h), left, top, (tw, th), flip)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor C,H,W in [-1, 1] (what the VAE expects)."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def apply_transform(image: Image.Image, plan: Transform, where: object = "image") -> torch.Tensor:
    """The planned variant of ``image`` as a C,H,W tensor in [-1, 1]; DataError if the image is not the size
    the plan was made for (the file changed on disk since the run started)."""
    if image.size != plan.source:
        raise DataError(f"{where}: is {image.size[0]}x{image.size[1]} now but was {plan.source[0]}x{plan.source[1]} "
                        "when the run started (changed on disk during training?)")
    image = image.resize(plan.resized, Image.Resampling.BICUBIC)
    image = image.crop((plan.left, plan.top, plan.left + plan.target[0], plan.top + plan.target[1]))
    if plan.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image_to_tensor(image)


def prepare_image(image: Image.Image, resolution: int, center_crop: bool, random_flip: bool,
                  rng: random.Random) -> torch.Tensor:
    """Square crop at ``resolution`` (the stream without buckets): plan, then apply."""
    plan = plan_transform(image.size, (resolution, resolution), center_crop, random_flip, rng)
    return apply_transform(image, plan)
