"""Aspect-ratio buckets: train each photo at about ``resolution²`` pixels in a shape close to its own.

A square crop cuts a portrait's head or a landscape's sides out of frame. Buckets are image shapes whose sides
are multiples of the model's *step* (64 px on SD 1/2: 8x VAE, 3 UNet down-samplings) and whose area is about
``resolution²`` (between 80 % and 106.25 %, aspect up to 4:1). Each image goes to the bucket nearest its aspect
ratio; it is resized to cover the bucket and cropped only by what is left over. At 512 px that is at most 5.3 %
of a side on each edge for aspects up to 3:1 (at 256 px with a 64 px step the grid is coarse: up to 11 %).

Batches must hold one shape, yet the stream stays position-addressed (exact resume with no sampler state, as
OneTrainer does): :class:`PositionOrder` derives, from (seed, epoch, salt) alone, an epoch made of groups of
``batch`` items of one bucket each, in shuffled order. A bucket whose size is not a multiple of the batch is
**padded** with its own items (the first of its shuffled order again) rather than dropped: small DreamBooth sets
spread over several buckets would otherwise lose photos every epoch. With a single bucket (square photos, or
buckets off) the order is the plain per-epoch permutation the stream always had.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch

AREA_MIN, AREA_MAX = 0.8, 1.0625  # bucket area / resolution²
MAX_ASPECT = 4.0
SD_STEP = 64  # SD 1.x / 2.x: VAE 8x and three UNet down-samplings


def vae_downscale(vae_config) -> int:
    """How many pixels one latent pixel covers on a side: 2 per VAE down block after the first (8 on SD and SDXL).
    ``vae_config``: the VAE's config (a dict or diffusers' FrozenDict)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def bucket_step_of(vae_config, unet_config) -> int:
    """Pixels a side must be a multiple of: VAE down-sampling x UNet down-sampling (64 on SD 1/2, 4 on tiny).

    SDXL (``text_time`` conditioning) downsamples only twice (32 px) but was trained on 64 px buckets (the SDXL
    paper's list, kohya's default step): twice its factor, so 1024 px makes its usual shapes (1152x896, ...)
    rather than hundreds of near-duplicate ones that split small datasets into padded one-image batches."""
    vae_factor = vae_downscale(vae_config)
    unet_factor = 2 ** (len(unet_config["down_block_types"]) - 1)
    xl = 2 if unet_config.get("addition_embed_type") == "text_time" else 1
    return vae_factor * unet_factor * xl


def model_bucket_step(model_ref: str, revision: str | None = None) -> tuple[int, str]:
    """(step, where it came from) for a model reference, reading only its config files.

    Falls back to SD's 64 px (and says so) when the configs cannot be read without loading the model.
    """
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        from sdtune.models.loading import resolve_model_ref

        source = resolve_model_ref(model_ref)
        if Path(source).is_file():
            return SD_STEP, "single-file checkpoint: SD's"
        vae = AutoencoderKL.load_config(source, subfolder="vae", revision=revision)
        unet = UNet2DConditionModel.load_config(source, subfolder="unet", revision=revision)
        return bucket_step_of(vae, unet), f"{model_ref}'s"
    except Exception:  # noqa: BLE001 - a model we cannot read here only means we assume SD
        return SD_STEP, "SD's (model config not readable)"


def check_bucket_resolution(data, model_ref: str, revision: str | None = None) -> None:
    """Refuse ``data.resolution`` below the model's bucket step (64 px on SD 1/2) while buckets are on, before the
    model loads: no bucket can be made, and the run used to stop on a ValueError once the model was loaded.
    Models whose configs cannot be read yet (a stage's base still to be trained) are left to the stream."""
    from sdtune.errors import ConfigError

    if not data.buckets:
        return
    step, where = model_bucket_step(model_ref, revision)
    if "not readable" in where or "single-file" in where or data.resolution >= step:
        return
    raise ConfigError(f"data.resolution={data.resolution} is smaller than {where} bucket step of {step} px (sides of "
                      f"its buckets are multiples of {step}): use data.resolution={step} or more, or "
                      "data.buckets=false")


def bucket_resolutions(resolution: int, step: int) -> list[tuple[int, int]]:
    """All bucket shapes (width, height) for ``resolution`` px training, sorted by aspect ratio.

    Sides are multiples of ``step``; area in [AREA_MIN, AREA_MAX] x resolution²; aspect at most MAX_ASPECT.
    Per aspect ratio the shape whose area is nearest resolution² is kept. The square bucket is always present
    (``resolution`` rounded to the step), so square images train as before.
    """
    if step < 1 or resolution < step:
        raise ValueError(f"resolution {resolution} is smaller than the bucket step {step}")
    area = resolution * resolution
    best: dict[tuple[int, int], tuple[int, int]] = {}
    top = int(resolution * 2 * math.sqrt(MAX_ASPECT)) // step * step
    for width in range(step, top + step, step):
        for height in range(step, top + step, step):
            if max(width, height) > MAX_ASPECT * min(width, height):
                continue
            if not AREA_MIN * area <= width * height <= AREA_MAX * area:
                continue
            g = math.gcd(width, height)
            ratio = (width // g, height // g)
            if ratio not in best or abs(width * height - area) < abs(best[ratio][0] * best[ratio][1] - area):
                best[ratio] = (width, height)
    square = max(step, round(resolution / step) * step)
    best[(1, 1)] = (square, square)
    return sorted(best.values(), key=lambda b: (b[0] / b[1], b[0]))


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log space); ties go to the larger area."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - aspect), 12), -b[0] * b[1]))


def target_sizes(sizes: list[tuple[int, int]], resolution: int, step: int | None) -> list[tuple[int, int]]:
    """The training shape (width, height) of each image: its bucket, or the square when ``step`` is None."""
    if step is None:
        return [(resolution, resolution)] * len(sizes)
    buckets = bucket_resolutions(resolution, step)
    return [nearest_bucket(w, h, buckets) for w, h in sizes]


def histogram(shapes: Iterable[tuple[int, int]]) -> dict[str, int]:
    """``{"512x448": 3, ...}``, most common first."""
    return {f"{w}x{h}": n for (w, h), n in Counter(shapes).most_common()}


class PositionOrder:
    """Which item (and epoch) each stream position holds, so that every batch is one bucket.

    ``buckets[i]`` is item i's bucket (any hashable). Positions come in batches of ``batch`` consecutive
    positions starting at multiples of ``batch`` (``StreamPositions``); each such batch is one group of one
    bucket. Everything is a function of (seed, epoch, salt): nothing to save for an exact resume.
    """

    def __init__(self, buckets: list, batch: int, seed: int, salt: int):
        if not buckets:
            raise ValueError("no items")
        self.batch, self.seed, self.salt = batch, seed, salt
        keys = sorted(set(buckets), key=str)
        self.members = [[i for i, b in enumerate(buckets) if b == key] for key in keys]
        self.count = len(buckets)
        self.single = len(keys) == 1
        self.epoch_length = (self.count if self.single
                             else sum(math.ceil(len(m) / batch) * batch for m in self.members))
        self._epochs: dict[int, list[int]] = {}

    def _generator(self, epoch: int, extra: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + self.salt + extra)

    def _epoch(self, epoch: int) -> list[int]:
        if epoch not in self._epochs:
            if len(self._epochs) > 8:
                self._epochs.clear()
            if self.single:  # the stream's historical order: a permutation per epoch
                order = torch.randperm(self.count, generator=self._generator(epoch)).tolist()
            else:
                groups: list[list[int]] = []
                for b, members in enumerate(self.members):
                    perm = torch.randperm(len(members), generator=self._generator(epoch, 104_729 * (b + 1))).tolist()
                    padded = [members[perm[j % len(perm)]] for j in range(math.ceil(len(perm) / self.batch)
                                                                         * self.batch)]
                    groups += [padded[k:k + self.batch] for k in range(0, len(padded), self.batch)]
                shuffle = torch.randperm(len(groups), generator=self._generator(epoch, 15_485_863)).tolist()
                order = [i for g in shuffle for i in groups[g]]
            self._epochs[epoch] = order
        return self._epochs[epoch]

    def item(self, position: int) -> tuple[int, int]:
        """(item index, epoch) at a stream position."""
        epoch, offset = divmod(position, self.epoch_length)
        return self._epoch(epoch)[offset], epoch
