"""Generate a hostile photo folder in code: every kind of bad or odd file a user's folder really contains.

No binary fixtures: each file is made here, so the test says exactly what it is.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth random picture: distinct per seed (for dHash), robust to JPEG re-encoding."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB")
    return small.resize(size, Image.Resampling.BILINEAR)


def jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=kw.pop("quality", 95), **kw)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kw)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width x height``, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(image: Image.Image, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(image, exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def gray16() -> Image.Image:
    """A 16-bit grayscale ramp (0 .. 65535): a bare convert('L') would clip it to white."""
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    return Image.fromarray(ramp)


def palette_with_transparency() -> Image.Image:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    image.paste(1, (0, 0, 20, 40))  # left half red, right half index 0 = transparent (black in the palette)
    image.info["transparency"] = 0
    return image


GOOD = {  # file name -> (seed, caption or None)
    "beach.jpg": (1, "a photo of a beach at sunset"),
    "with space é ü.png": (2, "a cat 🐱 on a mat — ünïcode"),
    "sub/dog.png": (3, "a dog in the park"),
}
BAD = {  # file name -> words the reason must contain
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "empty.jpg": "empty",
    "notes.jpg": "text file",
    "bomb.png": "decompression bomb",
    "garbage.webp": "not a recognised image",
}


def make_corpus(root: Path) -> Path:
    """Write the hostile folder; see GOOD, BAD and the odd-but-usable files below."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    for name, (seed, caption) in GOOD.items():
        image = pattern(seed)
        (root / name).write_bytes(jpeg_bytes(image) if name.endswith(".jpg") else png_bytes(image))
        (root / name).with_suffix(".txt").write_text(caption or "", encoding="utf-8")
    full = jpeg_bytes(pattern(10, (256, 192)))
    (root / "truncated.jpg").write_bytes(full[: len(full) // 2])
    full_png = png_bytes(pattern(11))
    (root / "truncated.png").write_bytes(full_png[: len(full_png) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is my shopping list, not a photo\n", encoding="utf-8")
    (root / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (root / "garbage.webp").write_bytes(bytes(range(256)) * 4)
    # Odd but usable.
    (root / "rotated.jpg").write_bytes(exif_rotated_jpeg(pattern(4, (60, 30))))  # displays as 30x60
    Image.new("CMYK", (40, 30), (255, 255, 0, 0)).save(root / "cmyk.jpg")  # blue in print colours
    gray16().save(root / "gray16.png")
    palette_with_transparency().save(root / "palette.png", transparency=0)
    rgba = pattern(5).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 0).point(lambda _: 0))
    rgba.paste((10, 20, 30, 255), (0, 0, 32, 48))
    rgba.save(root / "alpha.png")  # left half opaque dark, right half fully transparent
    (root / "animated.gif").write_bytes(animated_gif())
    # Duplicates: the same pixels as beach.jpg saved as PNG (exact), and re-encoded at low quality (near).
    beach = Image.open(root / "beach.jpg").convert("RGB")
    beach.save(root / "beach copy.png")
    (root / "beach-small.jpg").write_bytes(jpeg_bytes(pattern(1).resize((56, 42)), quality=60))
    # A caption file whose image is gone.
    (root / "deleted photo.txt").write_text("a photo that was deleted", encoding="utf-8")
    return root


def tree_digest(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file's (mtime_ns, bytes) under root: proves a build did not modify its source."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}
