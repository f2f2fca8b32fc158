"""Loss masks: where in a training image the loss counts (the person, not the room they stand in).

A mask comes from ``data.mask_dir`` (a file with the image's name stem, any image format: ``me1.png`` for
``photos/me1.jpg``; grey levels, white = counts, read as L) or, without a mask folder, from the image's own alpha
channel (opaque = counts). It follows the image's planned transform exactly (``sdtune.data.transforms``: the
bucket's resize, the crop, the flip), so the pixel it weights is the pixel it covered in the file; the loop then
averages it down to the latent grid (:func:`latent_weights`).

Masks are not VAE features: they are read from their files with the image's plan each time, in the cached and the
uncached stream alike (a few kB per example), so a latent-cached run and an uncached one see the same masks and
train bitwise alike; the latent cache keeps keying on the image file alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sdtune.data.transforms import Transform
from sdtune.errors import DataError

ALPHA = "alpha"  # the mask source when there is no mask folder


def mask_files(image: Path, mask_dir: Path) -> list[Path]:
    """Every file in ``mask_dir`` that is a mask of ``image`` as training reads it (same stem, an image suffix),
    in the order it reads them: PNG first."""
    from sdtune.data.images import IMAGE_SUFFIXES

    # exactly the stem, by name (a stat per suffix, not a listing: masks are read per example in training); a glob
    # of the stem matched "IMG_1.edit.png" for IMG_1.jpg, and read "x[1]" as a character class
    names = dict.fromkeys(f"{image.stem}{suffix}" for suffix in sorted(IMAGE_SUFFIXES, key=lambda s: s != ".png")
                          for suffix in (suffix, suffix.upper()))
    return [mask_dir / name for name in names if (mask_dir / name).is_file()]


def mask_file(image: Path, mask_dir: Path) -> Path | None:
    """The mask of ``image`` in ``mask_dir`` (the first of :func:`mask_files`); None when missing."""
    candidates = mask_files(image, mask_dir)
    return candidates[0] if candidates else None


def read_mask(image: Path, mask_dir: Path | None) -> Image.Image:
    """The mask of ``image`` as an L image of the image's size as training sees it (EXIF rotation applied to an
    alpha channel); DataError naming the file when it is missing, unreadable or has no alpha channel."""
    if mask_dir is None:
        try:
            with Image.open(image) as img:
                img.load()
                oriented = ImageOps.exif_transpose(img)
        except (OSError, ValueError) as exc:
            raise DataError(f"{image}: cannot read it for its alpha mask ({exc})") from None
        if "A" not in oriented.getbands() and not (oriented.mode == "P" and "transparency" in oriented.info):
            raise DataError(f"{image}: data.masked_loss reads the mask from the alpha channel, and this image has "
                            "none: save it with transparency, or set data.mask_dir to a folder of masks")
        return oriented.convert("RGBA").getchannel("A")
    found = mask_file(image, mask_dir)
    if found is None:
        raise DataError(f"{image}: no mask in data.mask_dir {mask_dir} (expected {image.stem}.png or another image "
                        "with that name): add it, or run `sdtune dataset check` with --masks to list all missing")
    try:
        with Image.open(found) as img:
            return img.convert("L")
    except (OSError, ValueError) as exc:
        raise DataError(f"{found}: unreadable mask ({exc})") from None


def mask_tensor(mask: Image.Image, plan: Transform, where: object = "mask") -> torch.Tensor:
    """The planned variant of ``mask`` as a (1, H, W) float tensor in [0, 1] at the training pixel size."""
    if mask.size != plan.source:
        raise DataError(f"{where}: the mask is {mask.size[0]}x{mask.size[1]}, its image {plan.source[0]}x"
                        f"{plan.source[1]}: masks must have their image's size")
    mask = mask.resize(plan.resized, Image.Resampling.BILINEAR)
    mask = mask.crop((plan.left, plan.top, plan.left + plan.target[0], plan.top + plan.target[1]))
    if plan.flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0).unsqueeze(0)


def latent_weights(masks: torch.Tensor, latent_size: tuple[int, int], outside: float) -> torch.Tensor:
    """Per-latent-pixel loss weights (B, 1, h, w) from pixel masks (B, 1, H, W): the mask's mean over each latent
    pixel's patch (area interpolation), mapped to ``outside`` (mask 0) ... 1 (mask 1)."""
    small = F.interpolate(masks.float(), size=latent_size, mode="area")
    return outside + (1.0 - outside) * small


def is_empty(mask: Image.Image) -> bool:
    """Whether no pixel of ``mask`` (an L image) counts: all black, or an alpha channel fully transparent. Nothing
    of its image would be learned, so training refuses it and ``dataset masks`` makes it again."""
    return mask.getextrema()[1] == 0


def mask_problems(images: list[Path], mask_dir: Path | None) -> list[tuple[Path, str, str]]:
    """``(file, reason, kind)`` for every image whose mask is missing, unreadable, of another size or empty (no
    pixel counts). What ``dataset check`` and the check before training report."""
    from sdtune.data.images import image_size

    found = []
    for image in images:
        try:
            mask = read_mask(image, mask_dir)
        except DataError as exc:
            found.append((image, str(exc).split(": ", 1)[-1], "mask missing"))
            continue
        size = image_size(image)
        if mask.size != size:
            found.append((image, f"its mask is {mask.size[0]}x{mask.size[1]}, the image {size[0]}x{size[1]}: masks "
                          "must have their image's size", "mask size"))
        elif is_empty(mask):
            found.append((image, "its mask is empty (all black / transparent): nothing of it would be learned",
                          "mask empty"))
    return found
