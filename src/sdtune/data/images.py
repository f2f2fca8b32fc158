"""Open user images safely: one clear error naming the file, never a traceback from deep inside Pillow.

Users' photo folders contain everything: phone photos rotated by an EXIF tag, CMYK JPEGs from print
workflows, 16-bit PNGs, palette PNGs with transparency, animated GIFs, truncated downloads, zero-byte files,
text files renamed to ``.jpg`` and, now and then, a decompression bomb. Everything here turns those into an
RGB image or a :class:`~sdtune.errors.DataError` whose message names the file and says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from sdtune.errors import DataError
from sdtune.words import counted

# Photo formats a user's folder holds, as far as this Pillow decodes them (AVIF, JPEG 2000 and HEIF depend on
# how Pillow was built or which plugins are installed). One list for check, build and training; any other file
# that Pillow can read is reported by the folder reader, never silently dropped.
_PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".dib", ".gif", ".apng", ".tif",
                   ".tiff", ".avif", ".jp2", ".j2k", ".heic", ".heif")
# Formats with a reliable signature: what a file of another name is sniffed for (no false alarms on random bytes).
_SNIFF_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "JPEG2000", "HEIF", "PPM", "QOI", "PSD",
                  "ICO")


def _decodable_suffixes() -> tuple[str, ...]:
    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(s for s in _PHOTO_SUFFIXES if s in readable)


IMAGE_SUFFIXES = _decodable_suffixes()

# Pillow refuses images over twice its warning threshold as possible decompression bombs. We apply the same
# limit ourselves (before any pixel is decoded) so it holds even if some library changes Pillow's global.
MAX_PIXELS = 178_956_970



def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def sniff_format(path: Path) -> str | None:
    """The image format Pillow recognises in a file's signature (e.g. 'JPEG'), whatever its name; else None."""
    formats = [f for f in _SNIFF_FORMATS if f in Image.OPEN]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=formats) as img:
                return img.format
    except Exception:  # noqa: BLE001 - anything Pillow cannot identify is simply not an image
        return None


@dataclass
class LoadedImage:
    """A decoded RGB image plus what the user should hear about it (e.g. 'animated: first frame used')."""

    image: Image.Image
    format: str | None
    notes: list[str] = field(default_factory=list)
    icc_profile: bytes | None = None  # kept when it describes RGB, so wide-gamut photos keep their colours
    size: tuple[int, int] = (0, 0)  # displayed (width, height) before any downsizing


@dataclass
class ImageInfo:
    """What ``probe_image`` learned cheaply: displayed size (EXIF orientation applied), format, a 64-bit dHash."""

    width: int
    height: int
    mode: str
    format: str | None
    frames: int
    dhash: int
    colors: bytes  # 4x4 RGB thumbnail: tells flat images of different colours apart (their dHash is all zeros)
    notes: list[str] = field(default_factory=list)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is composited on white (not black, as a bare convert does)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale: a bare convert("L") clips everything above 255 to white; scale to 8 bits instead.
        array = np.asarray(image)
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:  # 16-bit range: keep the top 8 bits
            scaled = (np.clip(array, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        else:
            scaled = np.clip(array, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = 1.0 if array.max(initial=0.0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(array / top * 255, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sniff_text(path: Path) -> bool:
    """True when a file that Pillow cannot identify is plain text (a caption or HTML page saved as .jpg)."""
    try:
        head = path.open("rb").read(512)
        head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return bool(head) and all(b >= 9 for b in head)


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> DataError:
    return DataError(
        f"{path}: image is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the "
        f"{max_pixels / 1e6:.0f} megapixel limit (possible decompression bomb); downsize it or remove it"
    )


def _unreadable(path: Path, exc: BaseException) -> DataError:
    """Map whatever Pillow raised to one sentence the user can act on."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: file not found")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an image")
    if isinstance(exc, PermissionError):
        return DataError(f"{path}: permission denied")
    if isinstance(exc, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        return DataError(f"{path}: image dimensions{size} are over the {MAX_PIXELS / 1e6:.0f} megapixel limit "
                         "(possible decompression bomb); downsize it or remove it")
    if isinstance(exc, MemoryError):
        return DataError(f"{path}: too large to decode in memory; downsize it")
    if type(exc).__name__ == "UnidentifiedImageError":
        if _sniff_text(path):
            return DataError(f"{path}: is a text file, not an image (wrong extension?)")
        return DataError(f"{path}: not a recognised image format (corrupt header or wrong extension)")
    reason = str(exc) or type(exc).__name__
    return DataError(f"{path}: corrupt or truncated image ({reason}); re-export it or remove it")


def _open_checked(path: Path, max_pixels: int) -> Image.Image:
    """Open (header only) and refuse empty files and images over the pixel limit before decoding anything."""
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    img = Image.open(path)
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise _too_large(path, width, height, max_pixels)
    if width == 0 or height == 0:
        img.close()
        raise DataError(f"{path}: image has zero width or height")
    return img


def _frames_note(img: Image.Image) -> tuple[int, list[str]]:
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        img.seek(0)
        return frames, [f"animated ({counted(frames, 'frame')}): only the first frame is used"]
    return frames, []


def _orient(img: Image.Image, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block is ignored (with a note) rather than losing the photo."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001 - malformed EXIF must not make good pixels unusable
        notes.append(f"unreadable EXIF orientation ignored ({exc})")
        return img


def open_image(path: Path, *, max_size: int | None = None, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Decode an image to RGB with EXIF orientation applied, downsized so its longest side is <= ``max_size``.

    Raises DataError naming the file for anything unusable. JPEGs are decoded at a reduced scale when
    ``max_size`` allows it, which is much faster and lighter than decoding 48 megapixels and shrinking.
    """
    path = Path(path)
    try:
        with _opened_quietly(path, max_pixels) as img:
            fmt, (width, height) = img.format, img.size
            _, notes = _frames_note(img)
            if max_size and fmt == "JPEG":
                img.draft(img.mode, (max_size, max_size))
            img.load()
            icc = img.info.get("icc_profile")
            oriented = _orient(img, notes)
            if oriented.size != img.size:  # rotated by 90 degrees
                width, height = height, width
            rgb = to_rgb(oriented)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure on a user file is "unreadable", never a traceback
        raise _unreadable(path, exc) from None
    if max_size and max(rgb.size) > max_size:
        rgb.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    rgb_icc = icc if isinstance(icc, bytes) and icc[16:20] == b"RGB " else None
    return LoadedImage(rgb, fmt, notes, rgb_icc, (width, height))


def load_rgb(path: Path) -> Image.Image:
    """Load an image as RGB with its EXIF orientation applied, or raise DataError naming the file."""
    return open_image(Path(path)).image


@contextlib.contextmanager
def _opened_quietly(path: Path, max_pixels: int) -> Iterator[Image.Image]:
    """:func:`_open_checked` without Pillow's decompression-bomb warning (the pixel limit is checked there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with _open_checked(path, max_pixels) as img:
            yield img


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as :func:`load_rgb` returns the image (EXIF rotation applied), from the header only.

    What training needs to plan a crop or find a cached latent without decoding the pixels; DataError when the
    file cannot be opened.
    """
    path = Path(path)
    try:
        with _opened_quietly(path, MAX_PIXELS) as img:
            width, height = img.size
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # noqa: BLE001 - as _orient: a broken EXIF block means no rotation
                orientation = 1
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see open_image
        raise _unreadable(path, exc) from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (what the latent cache keys an image by)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_HASHES: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime_ns) -> sha256 of the bytes


def content_hash(path: Path) -> str:
    """:func:`file_hash`, computed once per process per version of a file (inode, size, mtime_ns): the run's data
    record (``sdtune.data.stream_record``) and the latent cache's keys share one read of each image."""
    info = os.stat(path)
    key = (os.path.abspath(path), info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = file_hash(path)
    return _HASHES[key]


def color_thumb(image: Image.Image) -> bytes:
    """A 4x4 RGB thumbnail (48 bytes), the colour half of a near-duplicate fingerprint."""
    return image.convert("RGB").resize((4, 4), Image.Resampling.BOX).tobytes()


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: near-identical pictures (re-encoded, resized) differ in a few bits only."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def pixel_hash(image: Image.Image) -> str:
    """Content hash of decoded pixels: the same picture saved twice (other name, other metadata) matches."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def picture_digest(path: Path) -> str:
    """:func:`pixel_hash` of the fully decoded picture (RGB, EXIF rotation applied): what "the same picture"
    means for check and build alike (``sdtune.data.duplicates``). Raises DataError as :func:`open_image`."""
    return pixel_hash(open_image(Path(path)).image)


def probe_image(path: Path, *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Check that an image decodes, cheaply: JPEGs are decoded at 1/8 scale, which still reads every byte.

    Header-only checks (``Image.verify``) miss the most common real problem, a truncated JPEG download.
    """
    path = Path(path)
    try:
        with _opened_quietly(path, max_pixels) as img:
            width, height = img.size
            mode, fmt = img.mode, img.format
            frames, notes = _frames_note(img)
            if fmt == "JPEG":  # 1/8 scale for photos, but keep >= 128 px so dHash still sees the picture
                img.draft(img.mode, (min(width, max(width // 8, 128)), min(height, max(height // 8, 128))))
            img.load()
            oriented = to_rgb(_orient(img, notes))
            fingerprint, colors = dhash(oriented), color_thumb(oriented)
            if oriented.size != img.size:  # rotated by 90 degrees: report the size the user sees
                width, height = height, width
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - see open_image
        raise _unreadable(path, exc) from None
    return ImageInfo(width, height, mode, fmt, frames, fingerprint, colors, notes)
