"""Masks for the masked loss from CLIPSeg (sdtune.data.segmenter): a tiny random CLIPSeg built offline runs the real
load-and-segment path; masks are kept unless overwrite; thresholds and growth; bad models and names. The command
itself: tests/integration/test_dataset_masks_cli.py."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tiny_segmenters import build_tiny_clipseg  # noqa: E402

from sdtune.data.segmenter import binary_mask, load_segmenter, write_masks  # noqa: E402
from sdtune.errors import DataError, ModelLoadError  # noqa: E402
from tests.helpers import make_images  # noqa: E402


@pytest.fixture(scope="module")
def clipseg(tmp_path_factory) -> Path:
    return build_tiny_clipseg(tmp_path_factory.mktemp("clipseg") / "model")


def test_existing_masks_are_kept_unless_overwrite(tmp_path, clipseg):
    photos = make_images(tmp_path / "me", 2)
    masks = tmp_path / "drawn"
    masks.mkdir()
    drawn = Image.new("L", Image.open(photos / "img00.png").size, 0)
    drawn.paste(255, (0, 0, 5, 5))
    drawn.save(masks / "img00.png")
    before = (masks / "img00.png").read_bytes()
    segmenter = load_segmenter(clipseg, batch_size=1)
    report = write_masks(sorted(photos.glob("*.png")), masks, "a dog", segmenter, threshold=0.0, progress=False)
    assert (report.written, report.kept) == (1, 1) and (masks / "img00.png").read_bytes() == before
    report = write_masks(sorted(photos.glob("*.png")), masks, "a dog", segmenter, threshold=0.0, overwrite=True,
                         progress=False)
    assert report.written == 2 and (masks / "img00.png").read_bytes() != before
    assert not list(masks.glob(".*partial")) and report.shadowed == []


def test_a_mask_of_another_format_left_unread_beside_a_new_one_is_named(tmp_path, clipseg):
    photos = make_images(tmp_path / "me", 2)
    masks = tmp_path / "drawn"
    masks.mkdir()
    size = Image.open(photos / "img00.png").size
    Image.new("L", size, 255).save(masks / "img00.jpg")  # drawn by hand, as a JPEG
    Image.new("L", size, 255).save(masks / "img01.edit.png")  # another name: not img01's mask
    segmenter = load_segmenter(clipseg, batch_size=1)
    report = write_masks(sorted(photos.glob("*.png")), masks, "a dog", segmenter, threshold=0.0, overwrite=True,
                         progress=False)
    # the new img00.png is read before img00.jpg from now on: the JPEG is kept (never lost) and named
    assert report.written == 2 and report.shadowed == [masks / "img00.jpg"] and (masks / "img00.jpg").is_file()


def test_a_batch_segments_as_single_images_do_and_bf16_loads(clipseg):
    images = [Image.new("RGB", (50, 40), (200, 0, 0)), Image.new("RGB", (30, 60), (0, 0, 200))]
    fp32 = load_segmenter(clipseg)
    batch = fp32.probabilities(images, "a person")
    single = [fp32.probabilities([image], "a person")[0] for image in images]  # CLIPSeg squeezes a batch of one
    assert [p.shape for p in batch] == [(40, 50), (60, 30)]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(batch, single, strict=True))
    bf16 = load_segmenter(clipseg, dtype="bf16")  # what a GPU gets by default, here on CPU
    assert str(bf16.model.dtype) == "torch.bfloat16"
    assert [p.shape for p in bf16.probabilities(images, "a person")] == [(40, 50), (60, 30)]


def test_threshold_and_expand() -> None:
    probability = np.zeros((20, 30), dtype=np.float32)
    probability[10, 15] = 0.9
    probability[2, 2] = 0.2
    plain = np.asarray(binary_mask(probability, 0.3, 0))
    assert plain.shape == (20, 30) and plain.sum() == 255 and plain[10, 15] == 255
    grown = np.asarray(binary_mask(probability, 0.3, 2))
    assert (grown == 255).sum() == 25 and grown[8:13, 13:18].min() == 255  # a 5 x 5 square around the pixel
    assert np.asarray(binary_mask(probability, 0.1, 0)).sum() == 2 * 255


def test_bad_inputs_are_one_line_errors(tmp_path, clipseg):
    photos = make_images(tmp_path / "me", 2)
    captioner = tmp_path / "other"
    captioner.mkdir()
    (captioner / "config.json").write_text('{"architectures": ["BlipForConditionalGeneration"]}')
    with pytest.raises(ModelLoadError, match="not CLIPSeg"):
        load_segmenter(captioner)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_segmenter(tmp_path / "nope")
    (photos / "sub").mkdir()
    Image.new("RGB", (40, 36)).save(photos / "sub" / "img00.jpg")
    with pytest.raises(DataError, match="share the name"):
        write_masks([photos / "img00.png", photos / "sub" / "img00.jpg"], tmp_path / "m", "a dog",
                    load_segmenter(clipseg), progress=False)


def test_a_long_prompt_unreadable_photos_and_empty_masks(tmp_path, clipseg):
    photos = make_images(tmp_path / "me", 2)
    (photos / "broken.png").write_bytes(b"not an image")
    segmenter = load_segmenter(clipseg)
    with pytest.raises(DataError, match="CLIPSeg reads at most 77"):
        write_masks(sorted(photos.glob("*.png")), tmp_path / "m", "a dog " * 60, segmenter, progress=False)
    assert not (tmp_path / "m").exists()  # refused before anything was written
    report = write_masks(sorted(photos.glob("*.png")), tmp_path / "m", "a dog", segmenter, threshold=0.9999999,
                         progress=False)
    assert [p.name for p, _ in report.unreadable] == ["broken.png"] and report.written == 2  # skipped, named
    assert len(report.empty) == 2
    report = write_masks(sorted(photos.glob("img*.png")), tmp_path / "m", "a dog", segmenter, threshold=0.0,
                         progress=False)
    assert (report.written, report.kept, report.empty) == (2, 0, [])  # empty masks are made again


def test_a_large_photo_is_masked_at_its_size_and_grown_in_its_pixels(tmp_path, clipseg):
    photo = tmp_path / "big" / "a.png"
    photo.parent.mkdir()
    Image.new("RGB", (3000, 600), (100, 50, 20)).save(photo)
    write_masks([photo], tmp_path / "m", "a dog", load_segmenter(clipseg), threshold=0.0, expand=64,
                progress=False)
    mask = Image.open(tmp_path / "m" / "a.png")
    assert mask.size == (3000, 600) and mask.getextrema() == (255, 255)
