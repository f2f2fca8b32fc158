"""Resume versus the data folders (``sdtune.data.stream_record``, ``sdtune.training.data_resume``).

Each kind of change a user makes to a folder between two sessions (an image removed, its pixels edited, one
added, a caption edited, class images replaced) is named; an unchanged folder is no change; a fixed DreamBooth
prompt makes the folder's captions no part of the stream. Before the record existed a resume continued silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdtune.config import DataConfig
from sdtune.data.stream_record import record_changes, stream_record
from sdtune.errors import ConfigError
from sdtune.training import checkpoint as ckpt
from sdtune.training.data_resume import ORIGIN, check_data, start_new_epoch, stream_start
from sdtune.training.resume import ResumePlan

# an edited mask, named by its image
MASK_CHANGED = "1 mask changed (the mask of img0.png: data.mask_dir or the alpha channel)"


def _photo(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path)


def _folder(root: Path, n: int = 3, metadata: bool = False) -> Path:
    for i in range(n):
        _photo(root / f"img{i}.png", i)
        if not metadata:
            (root / f"img{i}.txt").write_text(f"caption {i}", encoding="utf-8")
    if metadata:
        (root / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"img{i}.png", "text": f"caption {i}"})
                                                     + "\n" for i in range(n)), encoding="utf-8")
    return root


def _edit(folder: Path, kind: str) -> None:
    if kind == "removed":
        (folder / "img1.png").unlink()
        (folder / "img1.txt").unlink()
    elif kind == "edited pixels":
        pixels = np.asarray(Image.open(folder / "img2.png")).copy()
        pixels[0, 0] ^= 1  # one pixel, one bit: same size, same bucket
        Image.fromarray(pixels).save(folder / "img2.png")
    elif kind == "added":
        _photo(folder / "new.png", 7)
        (folder / "new.txt").write_text("new", encoding="utf-8")
    elif kind == "caption edited":
        (folder / "img0.txt").write_text("caption 0, now longer", encoding="utf-8")


@pytest.mark.parametrize(("kind", "said"), [("removed", "1 image removed (img1.png)"),
                                            ("edited pixels", "1 image edited"),
                                            ("added", "1 image added (new.png)"),
                                            ("caption edited", "1 caption changed (img0.png)")])
def test_each_kind_of_change_is_named(tmp_path, kind, said):
    data = DataConfig(train_dir=_folder(tmp_path / "photos"))
    before = stream_record(data)
    assert record_changes(before, stream_record(data)) == []  # read twice, unchanged: no change
    _edit(tmp_path / "photos", kind)
    changes = record_changes(before, stream_record(data))
    assert len(changes) == 1 and changes[0].startswith(f"data.train_dir ({tmp_path / 'photos'}): "), changes
    assert said in changes[0], changes


def test_several_changes_in_one_line_and_metadata_captions(tmp_path):
    folder = _folder(tmp_path / "photos", n=4, metadata=True)
    data = DataConfig(train_dir=folder)
    before = stream_record(data)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[0]["text"] = ["caption 0", "an alternative"]
    rows = [r for r in rows if r["file_name"] != "img3.png"] + [{"file_name": "b.png", "text": "b"},
                                                                {"file_name": "c.png", "text": "c"}]
    _photo(folder / "b.png", 11)
    _photo(folder / "c.png", 12)
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (changes,) = record_changes(before, stream_record(data))
    assert "2 images added, 1 image removed, 1 caption changed (b.png, c.png, img3.png, img0.png)" in changes


def test_a_touched_but_identical_file_is_no_change_and_hashing_follows_the_bytes(tmp_path):
    folder = _folder(tmp_path / "photos")
    data = DataConfig(train_dir=folder)
    before = stream_record(data)
    os.utime(folder / "img0.png", ns=(1, 1))  # copied back from a backup: other mtime, same bytes
    assert record_changes(before, stream_record(data)) == []


def test_a_fixed_prompt_makes_captions_no_part_of_the_stream_and_class_images_count(tmp_path):
    inst, cls = _folder(tmp_path / "inst"), _folder(tmp_path / "cls", metadata=False)
    data = DataConfig(instance_dir=inst, instance_prompt="a photo of sks dog", with_prior_preservation=True,
                      class_dir=cls, class_prompt="a photo of a dog")
    before = stream_record(data)
    _edit(inst, "caption edited")  # DreamBooth reads the fixed prompt, not this file
    assert record_changes(before, stream_record(data)) == []
    _edit(cls, "removed")
    (changes,) = record_changes(before, stream_record(data))
    assert changes.startswith(f"class images data.class_dir ({cls}): 1 image removed"), changes


def _checkpoint(tmp_path: Path, record: dict | None) -> ResumePlan:
    folder = tmp_path / "run" / "checkpoints" / "step-000040"
    folder.mkdir(parents=True)
    if record is not None:
        (folder / ckpt.DATA_FILE).write_text(json.dumps(record), encoding="utf-8")
    return ResumePlan(folder, 40)


def test_a_changed_stream_is_refused_with_what_changed_and_how_to_go_on(tmp_path):
    data = DataConfig(train_dir=_folder(tmp_path / "photos"))
    plan = _checkpoint(tmp_path, stream_record(data))
    assert check_data(plan, stream_record(data), new_data_epoch=False) == [] and plan.data == {}
    _edit(tmp_path / "photos", "added")
    _edit(tmp_path / "photos", "removed")
    with pytest.raises(ConfigError) as refused:
        check_data(plan, stream_record(data), new_data_epoch=False)
    text = str(refused.value)
    assert "step-000040" in text and "1 image added, 1 image removed" in text, text
    assert "new run" in text and "--new-data-epoch" in text and "new data epoch at step 40" in text, text


def test_new_data_epoch_starts_the_stream_at_the_resume_step(tmp_path):
    data = DataConfig(train_dir=_folder(tmp_path / "photos"))
    plan = _checkpoint(tmp_path, stream_record(data))
    _edit(tmp_path / "photos", "caption edited")
    lines = check_data(plan, stream_record(data), new_data_epoch=True)
    assert "a new data epoch starts at step 40" in lines[0] and "1 caption changed" in lines[1]
    assert plan.data["new_data_epoch"] is True and "1 caption changed" in plan.data["changed"][0]
    state = ckpt.TrainerState(step=40, micro_step=160)
    assert stream_start(state) == 160  # no new epoch yet: the absolute position
    start_new_epoch(state, plan)
    assert state.extra[ORIGIN] == 160 and stream_start(state) == 0
    state.micro_step += 8
    assert stream_start(ckpt.TrainerState(**json.loads(json.dumps(state.__dict__)))) == 8  # kept by checkpoints


def test_a_checkpoint_without_a_record_still_resumes_with_a_note(tmp_path):
    data = DataConfig(train_dir=_folder(tmp_path / "photos"))
    plan = _checkpoint(tmp_path, None)
    (line,) = check_data(plan, stream_record(data), new_data_epoch=False)
    assert line.startswith("note: checkpoint without a data record") and "note" in plan.data


# Masks (data.masked_loss): found by a new user, a resume after a mask was edited silently trained on the new mask
# while an edited photo or caption was named. A mask is now part of the record, whichever its source.

def _half(size: tuple[int, int], left: bool = True) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]) if left else (size[0] // 2, 0, size[0], size[1]))
    return mask


def _masked(tmp_path: Path) -> DataConfig:
    photos = _folder(tmp_path / "photos")
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(3):
        _half((32, 24)).save(masks / f"img{i}.png")
    return DataConfig(train_dir=photos, masked_loss=True, mask_dir=masks)


def _saved(plan: ResumePlan) -> dict:
    return json.loads((plan.checkpoint / ckpt.DATA_FILE).read_text(encoding="utf-8"))


def test_an_edited_mask_is_named_and_refused_as_an_edited_photo_is(tmp_path):
    data = _masked(tmp_path)
    plan = _checkpoint(tmp_path, stream_record(data))
    assert check_data(plan, stream_record(data), new_data_epoch=False) == []
    _half((32, 24)).save(tmp_path / "masks" / "img0.jpg")  # another format beside the PNG: still the PNG is read
    assert record_changes(stream_record(data), stream_record(data)) == []
    assert check_data(plan, stream_record(data), new_data_epoch=False) == []
    _half((32, 24), left=False).save(tmp_path / "masks" / "img0.png")
    with pytest.raises(ConfigError) as refused:
        check_data(plan, stream_record(data), new_data_epoch=False)
    assert MASK_CHANGED in str(refused.value) and "--new-data-epoch" in str(refused.value)
    lines = check_data(plan, stream_record(data), new_data_epoch=True)
    assert "a new data epoch starts at step 40" in lines[0] and MASK_CHANGED in lines[1], lines
    (tmp_path / "masks" / "img0.png").unlink()  # now the JPEG is read: another mask
    assert MASK_CHANGED in record_changes(_saved(plan), stream_record(data))[0]


def test_an_alpha_mask_is_its_alpha_channel_not_the_photo_bytes(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        pixels = np.random.default_rng(i).integers(0, 256, (24, 32, 4), dtype=np.uint8)
        pixels[..., 3] = np.asarray(_half((32, 24)))
        Image.fromarray(pixels, "RGBA").save(photos / f"img{i}.png")
        (photos / f"img{i}.txt").write_text("x", encoding="utf-8")
    data = DataConfig(train_dir=photos, masked_loss=True)
    before = stream_record(data)
    pixels = np.asarray(Image.open(photos / "img0.png")).copy()
    pixels[0, 0, 0] ^= 1  # the colour of one pixel: the photo changed, its mask did not
    Image.fromarray(pixels, "RGBA").save(photos / "img0.png")
    (changes,) = record_changes(before, stream_record(data))
    assert "1 image edited" in changes and "mask changed" not in changes, changes
    pixels[..., 3] = np.asarray(_half((32, 24), left=False))  # the alpha: now the mask changed too
    Image.fromarray(pixels, "RGBA").save(photos / "img0.png")
    (changes,) = record_changes(before, stream_record(data))
    assert "1 image edited" in changes and MASK_CHANGED in changes, changes


def test_a_record_without_masks_still_resumes_and_class_images_have_none(tmp_path):
    data = _masked(tmp_path)
    old = stream_record(data)
    for subset in old["subsets"]:
        del subset["masks"]  # as a checkpoint of an sdtune that did not record masks
    plan = _checkpoint(tmp_path, old)
    _half((32, 24), left=False).save(tmp_path / "masks" / "img1.png")
    assert check_data(plan, stream_record(data), new_data_epoch=False) == []  # not a false "changed"
    cls = _folder(tmp_path / "cls")
    dreambooth = DataConfig(instance_dir=data.train_dir, instance_prompt="a photo of sks dog", masked_loss=True,
                            mask_dir=data.mask_dir, with_prior_preservation=True, class_dir=cls,
                            class_prompt="a photo of a dog")
    inst, klass = stream_record(dreambooth)["subsets"]
    assert set(inst["masks"]) == {"img0.png", "img1.png", "img2.png"} and "masks" not in klass
