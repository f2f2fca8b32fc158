"""Loss masks: where in a training image the loss counts (the person, not the room they stand in).

A mask comes from ``data.mask_dir`` (a file with the image's name stem, any image format: ``me1.png`` for
``photos/me1.jpg``; grey levels, white = counts, read as L) or, without a mask folder, from the image's own alpha
channel (opaque = counts). A mask FILE with transparency (RGBA, LA, a palette with a transparent colour) that is
not fully opaque is read by its alpha channel, not its colours (:func:`mask_from_file`): a cut-out of the person on
a transparent background (rembg and photo editors make these) is a mask of the person, and its opaque pixels are
the photo's own colours, which as grey levels would weight the loss by how bright the clothes are.

A mask follows the image's planned transform exactly (``sdtune.data.transforms``: the bucket's resize, the crop,
the flip), so the pixel it weights is the pixel it covered in the file; the loop then averages it down to the
latent grid (:func:`latent_weights`).

Masks are not VAE features: they are read from their files with the image's plan each time, in the cached and the
uncached stream alike (a few kB per example), so a latent-cached run and an uncached one see the same masks and
train bitwise alike; the latent cache keeps keying on the image file alone.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sdtune.data.transforms import Transform
from sdtune.errors import DataError

ALPHA = "alpha"  # the mask source when there is no mask folder
_READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)  # what Pillow raises for a file it cannot read


def mask_files(image: Path, mask_dir: Path) -> list[Path]:
    """Every file in ``mask_dir`` that is a mask of ``image`` as training reads it (same stem, an image suffix),
    in the order it reads them: PNG first. More than one is an ambiguity ``dataset check`` reports."""
    from sdtune.data.images import IMAGE_SUFFIXES

    # exactly the stem, by name (a stat per suffix, not a listing: masks are read per example in training); a glob
    # of the stem matched "IMG_1.edit.png" for IMG_1.jpg, and read "x[1]" as a character class
    names = dict.fromkeys(f"{image.stem}{suffix}" for suffix in sorted(IMAGE_SUFFIXES, key=lambda s: s != ".png")
                          for suffix in (suffix, suffix.upper()))
    found: list[Path] = []
    for name in names:
        path = mask_dir / name
        # on a case-insensitive disk x.png and x.PNG are one file: listed once
        if path.is_file() and not any(os.path.samefile(path, seen) for seen in found):
            found.append(path)
    return found


def mask_file(image: Path, mask_dir: Path) -> Path | None:
    """The mask of ``image`` in ``mask_dir`` (the first of :func:`mask_files`); None when missing."""
    candidates = mask_files(image, mask_dir)
    return candidates[0] if candidates else None


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` carries transparency (an alpha band, or a palette with a transparent colour)."""
    return "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)


def _cutout_alpha(img: Image.Image) -> Image.Image | None:
    """The alpha channel of a mask file when it is not fully opaque (then it IS the mask); else None."""
    if not has_alpha(img):
        return None
    alpha = img.convert("RGBA").getchannel("A")
    return alpha if alpha.getextrema()[0] < 255 else None


def mask_from_file(img: Image.Image) -> Image.Image:
    """A mask file's pixels as an L mask: its alpha channel when it has one that is not fully opaque (a cut-out on
    a transparent background: transparent = not learned, like black), else its grey levels (white = learned).

    A fully opaque alpha carries nothing, so an RGBA file of a black-and-white mask is read by its grey levels."""
    alpha = _cutout_alpha(img)
    return alpha if alpha is not None else img.convert("L")


def uses_alpha(path: Path) -> bool:
    """Whether the mask file at ``path`` is read by its alpha channel (:func:`mask_from_file`); False when
    unreadable (reported elsewhere). For ``dataset check``'s note, so the rule is never a surprise."""
    try:
        with Image.open(path) as img:
            return _cutout_alpha(img) is not None
    except _READ_ERRORS:
        return False


def _unreadable_reason(path: Path, exc: BaseException) -> str:
    reason = (str(exc) or type(exc).__name__).replace(f" '{path}'", "")  # Pillow repeats the path: named once
    return f"({reason}): re-save it as a PNG, or delete it and make it again (`sdtune dataset masks`)"


def read_mask_file(path: Path) -> Image.Image:
    """The mask in the file ``path`` (:func:`mask_from_file`); DataError naming it when it cannot be read."""
    try:
        with Image.open(path) as img:
            return mask_from_file(img)
    except _READ_ERRORS as exc:
        raise DataError(f"{path}: unreadable mask {_unreadable_reason(path, exc)}") from None


def alpha_mask(image: Path) -> Image.Image | None:
    """The alpha channel of ``image`` as training sees it (EXIF rotation applied), an L image; None when it has
    none. DataError naming the file when it cannot be read."""
    try:
        with Image.open(image) as img:
            img.load()
            oriented = ImageOps.exif_transpose(img)
    except _READ_ERRORS as exc:
        raise DataError(f"{image}: cannot read it for its alpha mask ({exc})") from None
    if not has_alpha(oriented):
        return None
    return oriented.convert("RGBA").getchannel("A")


_NO_ALPHA = ("data.masked_loss reads the mask from the alpha channel, and this image has none: save it with "
             "transparency, or set data.mask_dir to a folder of masks")


def read_mask(image: Path, mask_dir: Path | None) -> Image.Image:
    """The mask of ``image`` as an L image of the image's size as training sees it (EXIF rotation applied to an
    alpha channel); DataError naming the file when it is missing, unreadable or has no alpha channel."""
    if mask_dir is None:
        alpha = alpha_mask(image)
        if alpha is None:
            raise DataError(f"{image}: {_NO_ALPHA}")
        return alpha
    found = mask_file(image, mask_dir)
    if found is None:
        raise DataError(f"{image}: no mask in data.mask_dir {mask_dir} (expected {image.stem}.png or another image "
                        "with that name): add it, or run `sdtune dataset check` with --masks to list all missing")
    return read_mask_file(found)


def mask_digest(image: Path, mask_dir: Path | None) -> str:
    """A short digest of the mask training reads for ``image``, for a checkpoint's data record
    (``sdtune.data.stream_record``): the bytes of its mask file (the file :func:`mask_file` picks), or the pixels
    of its alpha channel (an RGB edit of the photo is no mask change). ``missing`` / ``unreadable`` / ``none``
    when there is no mask to read (the check before training refuses those)."""
    if mask_dir is None:
        try:
            alpha = alpha_mask(image)
        except DataError:
            return "unreadable"
        if alpha is None:
            return "none"
        digest = hashlib.sha256(f"{alpha.size}".encode())
        digest.update(alpha.tobytes())
        return f"alpha:{digest.hexdigest()[:16]}"
    from sdtune.data.images import content_hash

    found = mask_file(image, mask_dir)
    if found is None:
        return "missing"
    try:
        return content_hash(found)[:16]
    except OSError:
        return "unreadable"


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
    """``(image, reason, kind)`` for every image whose mask is missing, unreadable, of another size or empty (no
    pixel counts); kinds ``mask missing``, ``mask unreadable``, ``mask size``, ``mask empty``. What ``dataset check``
    and the check before training report (they say how to see the full list; the reasons do not)."""
    from sdtune.data.images import image_size

    found = []
    for image in images:
        if mask_dir is None:
            try:
                mask = alpha_mask(image)
            except DataError as exc:  # the image itself, read for its alpha channel
                found.append((image, str(exc).removeprefix(f"{image}: "), "mask unreadable"))
                continue
            if mask is None:
                found.append((image, _NO_ALPHA, "mask missing"))
                continue
        else:
            file = mask_file(image, mask_dir)
            if file is None:
                found.append((image, f"no mask in data.mask_dir {mask_dir} (expected {image.stem}.png or another "
                              "image with that name): add it (`sdtune dataset masks` makes missing ones)",
                              "mask missing"))
                continue
            try:
                with Image.open(file) as img:
                    mask = mask_from_file(img)
            except _READ_ERRORS as exc:
                found.append((image, f"its mask {file} is unreadable {_unreadable_reason(file, exc)}",
                              "mask unreadable"))
                continue
        size = image_size(image)
        if mask.size != size:
            found.append((image, f"its mask is {mask.size[0]}x{mask.size[1]}, the image {size[0]}x{size[1]}: masks "
                          "must have their image's size", "mask size"))
        elif is_empty(mask):
            found.append((image, "its mask is empty (all black / transparent): nothing of it would be learned",
                          "mask empty"))
    return found
