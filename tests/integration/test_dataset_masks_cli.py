"""``sdtune dataset masks`` through the real CLI, with a tiny random CLIPSeg built offline: masks have their photo's
size as training reads it (EXIF rotation applied), `dataset check` and a masked-loss training run read them; bad
inputs are one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_segmenters import build_tiny_clipseg  # noqa: E402

from tests.helpers import make_images, run_cli, tiny_config, write_config  # noqa: E402


@pytest.fixture(scope="module")
def clipseg(tmp_path_factory) -> Path:
    return build_tiny_clipseg(tmp_path_factory.mktemp("clipseg") / "model")


def _rotated_jpeg(path: Path) -> Path:
    """A 60 x 30 JPEG whose EXIF says 'rotate 90': training reads it as 30 x 60."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (60, 30), (10, 200, 10)).save(path, exif=exif.tobytes())
    return path


@pytest.mark.slow
def test_masks_have_their_photos_size_as_training_reads_it_and_feed_check_and_training(tmp_path, clipseg):
    photos = make_images(tmp_path / "me", 3, captions=["a photo of sks dog"])
    _rotated_jpeg(photos / "turned.jpg")
    (photos / "turned.txt").write_text("a photo of sks dog", encoding="utf-8")
    out = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(clipseg), "--threshold", "0")
    masks = tmp_path / "me-masks"  # the default: beside the photos, never inside them
    assert f"wrote 4 masks to {masks}" in out.stdout and "masks ('a dog')" in out.stderr  # a progress bar
    for photo in [*photos.glob("*.png"), photos / "turned.jpg"]:
        mask = Image.open(masks / f"{photo.stem}.png")
        expected = (30, 60) if photo.suffix == ".jpg" else Image.open(photo).size
        assert mask.mode == "L" and mask.size == expected, (photo.name, mask.size)
        assert mask.getextrema() == (255, 255)  # threshold 0: every pixel scores above it
    assert run_cli("dataset", "check", str(photos), "--masks", str(masks)).returncode == 0
    cfg = tiny_config(tmp_path / "run", {"train_dir": str(photos), "masked_loss": True, "mask_dir": str(masks)},
                      {"max_steps": 2, "lora": {"rank": 4}}, checkpoint={"every": 2, "keep": 1})
    assert "done: 2 steps" in run_cli("train", str(write_config(tmp_path / "run.yaml", cfg))).stdout


def test_bad_inputs_are_one_line(tmp_path, clipseg):
    photos = make_images(tmp_path / "me", 2)
    inside = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(clipseg), "--out",
                     str(photos / "masks"), check=False)
    assert inside.returncode != 0 and "inside" in inside.stderr and "Traceback" not in inside.stderr
    assert not (photos / "masks").exists()
    missing = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(tmp_path / "nope"),
                      check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    one = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(clipseg), "--threshold", "1",
                  check=False)
    assert one.returncode != 0 and "no score is above 1" in one.stderr and "Traceback" not in one.stderr
    empty = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(clipseg), "--threshold",
                    "0.9999999", check=False)  # nothing scores above it: every mask empty
    assert empty.returncode == 1 and "2 masks came out empty" in empty.stderr and "--threshold" in empty.stderr
    assert "Traceback" not in empty.stderr
    again = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(clipseg), "--threshold", "0")
    assert "wrote 2 masks" in again.stdout  # the empty ones are made again, as the message says
    assert "every photo has a mask" in run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model",
                                               str(tmp_path / "not-loaded")).stdout  # nothing to do: no model
    Image.new("L", Image.open(photos / "img00.png").size, 255).save(tmp_path / "me-masks" / "img00.jpg")
    over = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--model", str(clipseg), "--threshold", "0",
                   "--overwrite")
    assert "1 older mask of another format kept" in over.stderr and "(img00.jpg)" in over.stderr
    gpu = run_cli("dataset", "masks", str(photos), "--prompt", "a dog", "--device", "gpu", "--overwrite",
                  check=False)
    assert gpu.returncode != 0 and "is not a device" in gpu.stderr and "Traceback" not in gpu.stderr


def test_check_with_masks_says_what_it_found_and_refuses_a_mask_folder_inside_the_photos(tmp_path):
    """Found by a new user: `dataset check me2 --masks me2/masks` counted 8 images and said "OK: ready to train"
    (each mask its own mask), and an all-well check said nothing about masks."""
    photos = make_images(tmp_path / "me", 4)
    masks = tmp_path / "me-masks"
    masks.mkdir()
    for photo in sorted(photos.glob("*.png")):
        Image.new("L", Image.open(photo).size, 255).save(masks / photo.name)
    ok = run_cli("dataset", "check", str(photos), "--masks", str(masks))
    assert f"masks: 4 of 4 found ({masks})" in ok.stdout and "OK: ready to train" in ok.stdout, ok.stdout
    inside = photos / "masks"
    masks.rename(inside)
    refused = run_cli("dataset", "check", str(photos), "--masks", str(inside), check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stdout + refused.stderr
    assert f"{inside}: the mask folder is inside the dataset folder {photos}" in refused.stdout, refused.stdout
    assert f"e.g. to {tmp_path / 'me-masks'}" in refused.stdout and "NOT OK" in refused.stdout
