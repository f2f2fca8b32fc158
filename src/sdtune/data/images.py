"""Open user images safely: one clear error naming the file, never a traceback from deep inside Pillow."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from sdtune.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white (not black, as a bare convert does)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 256).convert("L").convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Load an image as RGB with its EXIF orientation applied, or raise DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.seek(0)
            img = ImageOps.exif_transpose(img)
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large ({exc}); downsize it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}); re-export it or remove it") from None
