"""Safe image decoding: every odd or hostile file gives RGB pixels or one DataError naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile_corpus import (
    animated_gif,
    exif_rotated_jpeg,
    gray16,
    jpeg_bytes,
    palette_with_transparency,
    pattern,
    png_bytes,
    png_header_only,
)
from PIL import Image

from sdtune.data.duplicates import near_duplicate_pairs
from sdtune.data.images import color_thumb, dhash, load_rgb, open_image, pixel_hash, probe_image, to_rgb
from sdtune.errors import DataError


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_transparent_pixels_become_white_not_black():
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgb = to_rgb(rgba)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (10, 20, 30)
    assert rgb.getpixel((3, 1)) == (255, 255, 255)


def test_palette_with_transparency_and_grayscale_alpha(tmp_path):
    path = tmp_path / "p.png"
    palette_with_transparency().save(path, transparency=0)
    rgb = load_rgb(path)
    assert rgb.getpixel((5, 5)) == (255, 0, 0)
    assert rgb.getpixel((35, 5)) == (255, 255, 255)  # transparent index composited on white
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((0, 0), (0, 255))
    assert to_rgb(la).getpixel((0, 0)) == (0, 0, 0)
    assert to_rgb(la).getpixel((1, 0)) == (255, 255, 255)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    gray16().save(path)
    assert Image.open(path).mode.startswith("I")
    values = np.asarray(load_rgb(path))[..., 0]
    assert values.min() == 0 and values.max() == 255
    assert 100 < np.median(values) < 155  # a bare convert("L") leaves almost everything at 255


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path)
    rgb = load_rgb(path)
    r, g, b = rgb.getpixel((8, 8))
    assert rgb.mode == "RGB" and r > 200 and g < 50 and b < 50


def test_exif_orientation_is_applied(tmp_path):
    path = _write(tmp_path / "rot.jpg", exif_rotated_jpeg(pattern(0, (60, 30)), orientation=6))
    assert Image.open(path).size == (60, 30)
    assert load_rgb(path).size == (30, 60)
    assert (probe_image(path).width, probe_image(path).height) == (30, 60)


def test_animated_gif_uses_first_frame_with_a_note(tmp_path):
    path = _write(tmp_path / "anim.gif", animated_gif())
    loaded = open_image(path)
    assert loaded.image.getpixel((5, 5))[0] > 200 and loaded.image.getpixel((5, 5))[1] < 50  # red first frame
    assert any("animated (3 frames)" in note for note in loaded.notes)
    assert probe_image(path).frames == 3


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"my shopping list\n", "text file, not an image"),
        ("noise.png", bytes(range(256)) * 3, "not a recognised image"),
        ("bomb.png", png_header_only(100_000, 100_000), "decompression bomb"),
        ("truncated.jpg", jpeg_bytes(pattern(1, (256, 192)))[:1500], "truncated"),
        ("truncated.png", png_bytes(pattern(2))[:300], "truncated"),
    ],
)
def test_bad_files_raise_one_clear_error_naming_the_file(tmp_path, name, data, reason):
    path = _write(tmp_path / name, data)
    for reader in (load_rgb, probe_image):
        with pytest.raises(DataError) as info:
            reader(path)
        assert str(path) in str(info.value) and reason in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_rgb(tmp_path / "nope.png")
    with pytest.raises(DataError, match="folder"):
        load_rgb(tmp_path)


def test_probe_catches_a_truncated_jpeg_that_verify_would_pass(tmp_path):
    data = jpeg_bytes(pattern(3, (512, 384)))
    path = _write(tmp_path / "cut.jpg", data[: int(len(data) * 0.8)])
    with Image.open(path) as img:
        img.verify()  # Pillow's header check says nothing is wrong...
    with pytest.raises(DataError, match="truncated"):
        probe_image(path)  # ...but decoding (at 1/8 scale) reads every byte


def test_pixel_limit_refuses_huge_images_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    pattern(0, (200, 100)).save(path)
    with pytest.raises(DataError, match=r"200x100 .*megapixel limit"):
        open_image(path, max_pixels=10_000)
    with pytest.raises(DataError, match="decompression bomb"):
        probe_image(path, max_pixels=10_000)
    assert open_image(path).image.size == (200, 100)


def test_max_size_downsizes_longest_side(tmp_path):
    path = _write(tmp_path / "big.jpg", jpeg_bytes(pattern(0, (800, 600))))
    assert open_image(path, max_size=100).image.size == (100, 75)
    png = tmp_path / "tall.png"
    pattern(0, (30, 90)).save(png)
    assert open_image(png, max_size=45).image.size == (15, 45)
    assert open_image(png, max_size=500).image.size == (30, 90)  # never upscaled


def test_unicode_file_names(tmp_path):
    path = tmp_path / "été 🌞 photo.png"
    pattern(0).save(path)
    assert load_rgb(path).size == (64, 48)


def test_hashes_tell_copies_from_near_copies_from_different_pictures():
    picture = pattern(7)
    recoded = Image.open(__import__("io").BytesIO(jpeg_bytes(picture.resize((56, 42)), quality=50)))
    other = pattern(8)
    assert pixel_hash(picture) == pixel_hash(picture.copy())
    assert pixel_hash(picture) != pixel_hash(recoded.convert("RGB"))
    hashes = [dhash(picture), dhash(recoded), dhash(other)]
    colors = [color_thumb(picture), color_thumb(recoded), color_thumb(other)]
    assert [(i, j) for i, j, _ in near_duplicate_pairs(hashes, colors)] == [(0, 1)]


def test_flat_images_of_different_colours_are_not_near_duplicates():
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    assert dhash(red) == dhash(blue) == 0
    assert near_duplicate_pairs([0, 0], [color_thumb(red), color_thumb(blue)]) == []
    assert len(near_duplicate_pairs([0, 0], [color_thumb(red), color_thumb(red.copy())])) == 1


def test_near_duplicates_scale_to_many_hashes():
    rng = np.random.default_rng(0)
    hashes = [int(h) for h in rng.integers(0, 2**63, 3000, dtype=np.int64)]
    hashes[2999] = hashes[5] ^ 0b101  # two bits apart
    assert (5, 2999, 2) in near_duplicate_pairs(hashes)
