"""``dataset check --masks`` on a mask folder as a whole (``sdtune.data.mask_checks``) and how a mask file is read.

Found by a new user: a mask folder inside the photo folder passed (its masks counted as photos, each its own mask);
a transparent cut-out in the mask folder was read by its colours; two masks of one photo, and files that are no
photo's mask, went unsaid; an all-well check said nothing about masks, a corrupt mask was counted as missing, and
the missing-mask line told the user to run the very command they ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sdtune.data.check import check_folder
from sdtune.data.folders import read_folder
from sdtune.data.masks import is_empty, mask_problems, read_mask
from sdtune.data.segmenter import empty_mask, masks_to_make
from tests.helpers import make_images

SIZE = (40, 36)  # make_images' size


def _left_half(mode: str = "L") -> Image.Image:
    mask = Image.new("L", SIZE, 0)
    mask.paste(255, (0, 0, SIZE[0] // 2, SIZE[1]))
    return mask.convert(mode)


def _masks(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _left_half().save(folder / f"img{i:02d}.png")
    return folder


def _kinds(report) -> dict[str, str]:
    return {p.kind: str(p) for p in report.problems}


@pytest.mark.parametrize("inside", ["masks", "a/b/masks"])
def test_a_mask_folder_inside_the_photo_folder_is_an_error_naming_both_and_the_fix(tmp_path, inside):
    photos = make_images(tmp_path / "me2", 4)
    masks = _masks(photos / inside)
    assert len(read_folder(photos).records) == 8  # the reader walks sub-folders: the masks ARE read as photos
    report = check_folder(photos, masks=str(masks))
    assert not report.ok and report.images == 8, report.to_text()
    line = _kinds(report)["mask folder inside"]
    assert line.startswith(f"{masks}: the mask folder is inside the dataset folder {photos}"), line
    assert "trained as photos" in line and f"e.g. to {tmp_path / 'me2-masks'}" in line, line
    assert "mask name shared" not in _kinds(report)  # the root cause is said once, not as its symptoms


def test_the_photo_folder_as_its_own_mask_folder_and_a_hidden_mask_folder(tmp_path):
    photos = make_images(tmp_path / "me", 2)
    same = check_folder(photos, masks=str(photos))
    assert "is the dataset folder itself" in _kinds(same)["mask folder inside"] and not same.ok
    hidden = _masks(photos / ".masks", 2)  # hidden folders are skipped by the reader: nothing read as photos
    report = check_folder(photos, masks=str(hidden))
    assert report.ok and report.images == 2, report.to_text()


def test_an_all_well_check_says_how_many_masks_it_found(tmp_path):
    photos = make_images(tmp_path / "me", 4)
    masks = _masks(tmp_path / "me-masks")
    report = check_folder(photos, masks=str(masks))
    assert report.ok and f"masks: 4 of 4 found ({masks})" in report.to_text().splitlines()
    assert report.to_dict()["masks"] == {"source": str(masks), "images": 4, "found": 4}
    assert report.notes == []
    assert "masks:" not in check_folder(photos).to_text()  # not asked: not said


def test_a_corrupt_mask_is_counted_as_unreadable_and_missing_ones_are_not_told_to_rerun(tmp_path):
    photos = make_images(tmp_path / "me", 4)
    masks = _masks(tmp_path / "me-masks", 2)
    (masks / "img02.png").write_bytes(b"not a png")
    report = check_folder(photos, masks=str(masks))
    assert report.counts["mask unreadable"] == 1 and report.counts["mask missing"] == 1, report.counts
    text = report.to_text()
    assert "found: mask missing 1, mask unreadable 1" in text and "masks: 3 of 4 found" in text, text
    assert f"its mask {masks / 'img02.png'} is unreadable (cannot identify image file)" in text, text
    assert "with --masks" not in text and "no mask in" in text, text  # the user is running exactly that


def test_a_transparent_cutout_mask_is_read_by_its_alpha(tmp_path):
    photos = make_images(tmp_path / "me", 4)
    masks = tmp_path / "me-masks"
    masks.mkdir()
    cutout = Image.new("RGBA", SIZE, (200, 180, 170, 0))  # rembg-style: the person's colours, transparent around
    cutout.paste((200, 180, 170, 255), (0, 0, SIZE[0] // 2, SIZE[1]))
    cutout.save(masks / "img00.png")
    Image.new("RGBA", SIZE, (255, 255, 255, 0)).save(masks / "img01.png")  # white but all transparent: empty
    _left_half("RGBA").save(masks / "img02.png")  # opaque RGBA: its grey levels
    _left_half("LA").save(masks / "img03.png")
    for name in ("img00", "img02", "img03"):
        assert list(read_mask(photos / f"{name}.png", masks).getdata()) == list(_left_half().getdata()), name
    found = {p.name: kind for p, _, kind in mask_problems(sorted(photos.glob("*.png")), masks)}
    assert found == {"img01.png": "mask empty"}  # the message's "all black / transparent" is so
    report = check_folder(photos, masks=str(masks))
    assert any("2 masks" in n and "transparent cut-outs, read by the alpha channel" in n and "img00.png, img01.png"
               in n for n in report.notes), report.notes
    assert empty_mask(masks / "img01.png") and not empty_mask(masks / "img00.png")  # `dataset masks` agrees
    assert masks_to_make(sorted(photos.glob("*.png")), masks) == [photos / "img01.png"]  # made again


def test_a_palette_mask_with_a_transparent_colour_is_read_by_its_transparency(tmp_path):
    mask = Image.new("P", SIZE, 0)
    mask.putpalette([255, 255, 255] * 2 + [0] * 762)  # both colours white: only the transparency tells them apart
    mask.paste(1, (SIZE[0] // 2, 0, SIZE[0], SIZE[1]))
    mask.save(tmp_path / "img00.png", transparency=1)  # index 1, the right half, transparent
    read = read_mask(tmp_path / "photos" / "img00.jpg", tmp_path)
    assert list(read.getdata()) == list(_left_half().getdata()) and not is_empty(read)


def test_two_masks_of_one_photo_warn_and_files_of_no_photo_are_a_note(tmp_path):
    photos = make_images(tmp_path / "me", 4)
    masks = _masks(tmp_path / "me-masks")
    _left_half().save(masks / "img00.jpg")
    _left_half().save(masks / "other.png")
    (masks / "notes.txt").write_text("drawn in GIMP", encoding="utf-8")
    (masks / "img03.jpg.bak").write_bytes((masks / "img03.png").read_bytes())
    (masks / "old").mkdir()
    report = check_folder(photos, masks=str(masks))
    assert report.ok, report.to_text()  # neither stops training
    (warning,) = report.warnings
    assert warning.startswith(str(photos / "img00.png")) and "(img00.png, img00.jpg)" in warning, warning
    assert "training reads img00.png" in warning and "delete img00.jpg" in warning, warning
    (note,) = report.notes
    assert "4 files in" in note and "img03.jpg.bak, notes.txt, old/, other.png" in note, note
    assert "not read" in note and f"note: {note}" in report.to_text()


def test_two_photos_with_one_name_share_a_mask_and_are_an_error(tmp_path):
    photos = make_images(tmp_path / "me", 2)
    (photos / "b").mkdir()
    Image.new("RGB", SIZE, (1, 2, 3)).save(photos / "b" / "img00.jpg")
    report = check_folder(photos, masks=str(_masks(tmp_path / "me-masks", 2)))
    line = _kinds(report)["mask name shared"]
    assert "'img00'" in line and str(photos / "b" / "img00.jpg") in line and not report.ok, line


def test_alpha_masks_are_counted_and_an_image_without_alpha_is_missing(tmp_path):
    photos = tmp_path / "me"
    photos.mkdir()
    _left_half("LA").save(photos / "a.png")
    Image.new("RGB", SIZE).save(photos / "b.png")
    report = check_folder(photos, masks="alpha")
    assert "masks: 1 of 2 found (the images' alpha channels)" in report.to_text()
    assert report.counts["mask missing"] == 1 and "has none" in _kinds(report)["mask missing"]
