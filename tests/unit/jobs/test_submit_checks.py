"""`sdtune jobs submit` says at submit what would stop the train job in its first second (not at 3 a.m.).

Found by a newcomer: a train job on a missing data folder, and one whose shared class folder held images made at
another resolution, were queued without a word and failed when they ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sdtune.data.class_images import MANIFEST, class_identity
from sdtune.errors import ConfigError
from sdtune.jobs.kinds import train_submission
from sdtune.jobs.workspace import find_workspace


def _config(tmp_path: Path, **data) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"model": {"base": "tiny"}, "data": {"instance_prompt": "a photo of sks person",
                                                                       "resolution": 32, **data}}), encoding="utf-8")
    return config


def test_a_missing_data_folder_is_said_at_submit(tmp_path: Path) -> None:
    ws = find_workspace(tmp_path / "ws")
    sub = train_submission(ws, _config(tmp_path, instance_dir="nope"), [], cwd=tmp_path)
    assert any(f"data.instance_dir {tmp_path / 'nope'} does not exist" in note for note in sub.notes), sub.notes
    (tmp_path / "me").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "me" / "a.png")
    sub = train_submission(ws, _config(tmp_path, instance_dir="me"), [], cwd=tmp_path)
    assert not sub.notes  # (class images to be generated are no note either)


def test_a_data_folder_without_images_is_said_at_submit(tmp_path: Path) -> None:
    """Found by a newcomer: data.instance_dir=<an existing, empty folder> was queued without a word and failed
    when it ran ("no readable images")."""
    ws = find_workspace(tmp_path / "ws")
    empty = tmp_path / "empty"
    (empty / ".thumbs").mkdir(parents=True)  # hidden folders are not read: no images
    Image.new("RGB", (16, 16)).save(empty / ".thumbs" / "a.png")
    (empty / "notes.txt").write_text("x")
    sub = train_submission(ws, _config(tmp_path, instance_dir="empty"), [], cwd=tmp_path)
    assert sub.notes == [f"data.instance_dir {empty} has no images (yet): the job fails unless they are there when "
                         "the job starts"], sub.notes
    Image.new("RGB", (16, 16)).save(empty / "notes.PNG")
    assert not train_submission(ws, _config(tmp_path, instance_dir="empty"), [], cwd=tmp_path).notes
    (empty / "notes.PNG").unlink()
    (empty / "person").mkdir()  # images in a sub-folder are read too
    Image.new("RGB", (16, 16)).save(empty / "person" / "a.jpg")
    assert not train_submission(ws, _config(tmp_path, instance_dir="empty"), [], cwd=tmp_path).notes


def test_class_images_made_for_another_resolution_are_refused_at_submit(tmp_path: Path) -> None:
    ws = find_workspace(tmp_path / "ws")
    (tmp_path / "me").mkdir()
    classes = tmp_path / "class-person"
    classes.mkdir()
    Image.new("RGB", (16, 16)).save(classes / "class-00000.png")
    made_for = class_identity("a photo of a person", "tiny", resolution=64)
    (classes / MANIFEST).write_text(json.dumps({"made_by": "sdtune", "made_for": made_for,
                                                "images": {"class-00000.png": {"seed": 0}}}), encoding="utf-8")
    config = _config(tmp_path, instance_dir="me", with_prior_preservation=True, class_dir="class-person",
                     class_prompt="a photo of a person")
    with pytest.raises(ConfigError, match="made from 'a photo of a person' by tiny at 64 px"):
        train_submission(ws, config, [], cwd=tmp_path)
    assert not list((ws / "jobs" / "configs").glob("*.yaml"))  # nothing queued, nothing written
