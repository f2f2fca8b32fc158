"""`sdtune train`'s data check: its advice is true, repeated warnings are summarized, ignored captions are said."""

from __future__ import annotations

import re

import pytest
from hostile_corpus import pattern

from sdtune.config import config_from_dict, resolve_config
from sdtune.data.check_before_train import check_training_data
from sdtune.errors import DataError


def test_errors_do_not_offer_a_skip_that_would_fail_later(tmp_path):
    for i in range(2):
        pattern(i).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text("a caption", encoding="utf-8")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # corrupt: training would fail on it too
    (tmp_path / "broken.txt").write_text("a caption", encoding="utf-8")
    with pytest.raises(DataError) as failure:
        check_training_data(config_from_dict({"model": {"base": "toy"}, "data": {"train_dir": str(tmp_path)}}))
    message = str(failure.value)
    assert "broken.png" in message and f"sdtune dataset check {tmp_path}" in message
    assert "data.check" not in message


def test_repeated_warnings_summarized_and_ignored_captions_said_once(tmp_path, capsys):
    instance, classes = tmp_path / "me", tmp_path / "class"
    instance.mkdir()
    classes.mkdir()
    for i in range(3):
        pattern(i).save(instance / f"{i}.png")
        (instance / f"{i}.txt").write_text("a man in a hat", encoding="utf-8")
    for i in range(40):
        pattern(i + 10, (16, 16)).save(classes / f"{i:03d}.png")
    data = {"instance_dir": str(instance), "instance_prompt": "a photo of sks person", "resolution": 32,
            "with_prior_preservation": True, "class_dir": str(classes), "class_prompt": "a photo of a person"}
    check_training_data(config_from_dict({"model": {"base": "toy"}, "data": data}))
    printed = capsys.readouterr().out.splitlines()
    small = [line for line in printed if "smaller than the training resolution" in line]
    assert len(small) == 4 and "and 37 more" in small[-1], printed
    ignored = [line for line in printed if "and they are not read" in line]
    assert len(ignored) == 1 and "data.instance_dir" in ignored[0] and "data.train_dir" in ignored[0]
    assert "3 of 3 images have captions other than data.instance_prompt" in ignored[0]


def test_captions_equal_to_the_instance_prompt_are_not_called_ignored(tmp_path, capsys):
    """The README builds data/me with --caption "a photo of sks person" and trains DreamBooth on that prompt: every
    run warned that those captions are not read, though nothing is lost. One caption that differs is still said."""
    for i in range(3):
        pattern(i).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text("a photo of sks person\n", encoding="utf-8")
    data = {"instance_dir": str(tmp_path), "instance_prompt": "a photo of sks person", "resolution": 16}
    check_training_data(config_from_dict({"model": {"base": "toy"}, "data": data}))
    assert "not read" not in capsys.readouterr().out
    (tmp_path / "2.txt").write_text("sks person on a bike", encoding="utf-8")
    check_training_data(config_from_dict({"model": {"base": "toy"}, "data": data}))
    assert "1 of 3 images has captions other than data.instance_prompt" in capsys.readouterr().out


def test_the_full_report_names_the_folder_with_the_problem(tmp_path):
    """Reported: a missing photos folder got `full report: sdtune dataset check <the class folder>` (a folder
    without problems), and with no folder to check, 'full report: the paths in your config'."""
    classes = tmp_path / "class"
    classes.mkdir()
    for i in range(2):
        pattern(i).save(classes / f"{i}.png")
    data = {"instance_dir": str(tmp_path / "missing"), "instance_prompt": "a photo of sks person", "resolution": 32,
            "with_prior_preservation": True, "class_dir": str(classes), "class_prompt": "a photo of a person"}
    with pytest.raises(DataError) as failure:
        check_training_data(config_from_dict({"model": {"base": "toy"}, "data": data}))
    message = str(failure.value)
    assert "missing" in message and "full report" not in message and str(classes) not in message, message


def test_a_missing_mask_or_validation_folder_is_one_line_with_its_key(tmp_path):
    """Found by a newcomer: data.mask_dir=nope gave one "no mask in data.mask_dir nope" line per image (and a full
    report command that does not check masks); validation.loss.data_dir=nope was found only after the model loaded,
    as "data folder ... does not exist" without the key."""
    photos = tmp_path / "photos"  # the masks beside the photos, never inside (config.py refuses that)
    photos.mkdir()
    for i in range(3):
        pattern(i).save(photos / f"{i}.png")
    data = {"instance_dir": str(photos), "instance_prompt": "a photo of sks person", "resolution": 16}
    with pytest.raises(DataError) as failure:
        check_training_data(config_from_dict({"model": {"base": "toy"}, "data": {
            **data, "masked_loss": True, "mask_dir": str(tmp_path / "nope")}}))
    message = str(failure.value)
    assert "1 problem" in message and f"{tmp_path / 'nope'}: data.mask_dir does not exist" in message, message
    with pytest.raises(DataError, match="validation.loss.data_dir does not exist"):
        check_training_data(config_from_dict({"model": {"base": "toy"}, "data": data,
                                              "validation": {"loss": {"data_dir": str(tmp_path / "held")}}}))
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match=f"sdtune dataset check {photos} --masks {tmp_path / 'masks'}"):
        check_training_data(config_from_dict({"model": {"base": "toy"}, "data": {
            **data, "masked_loss": True, "mask_dir": str(tmp_path / "masks")}}))


def test_a_missing_relative_folder_says_it_was_read_from_the_working_folder(tmp_path, monkeypatch):
    """Found by a newcomer: a config with relative paths run from another folder said "does not exist; check the path
    in your config", and the fault was looked for in the config, not in where the command ran."""
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(config_from_dict({"model": {"base": "toy"}, "data": {
        "instance_dir": "photos", "instance_prompt": "a photo of sks person", "resolution": 16}}))
    with pytest.raises(DataError, match=r"a relative path in a config is read from the working folder, "
                                        rf"{re.escape(str(tmp_path))}, not from the config's folder"):
        check_training_data(cfg)
    away = resolve_config(config_from_dict({"model": {"base": "toy"}, "data": {
        "instance_dir": str(tmp_path.parent / "elsewhere"), "instance_prompt": "a photo of sks person"}}))
    with pytest.raises(DataError) as failure:  # written absolute, elsewhere: nothing about the working folder
        check_training_data(away)
    assert "working folder" not in str(failure.value)


def test_a_warning_is_printed_once_per_process(tmp_path, capsys):
    """A recipe checks every stage's data before any trains, and the stage's training checks it again: the
    newcomer trying configs/two-stage.yaml read the same 'captions are not read' warning twice."""
    for i in range(2):
        pattern(i).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text("a man in a hat", encoding="utf-8")
    cfg = config_from_dict({"model": {"base": "toy"}, "data": {"instance_dir": str(tmp_path), "resolution": 16,
                                                               "instance_prompt": "a photo of sks person"}})
    check_training_data(cfg)
    assert "and they are not read" in capsys.readouterr().out
    check_training_data(cfg)
    assert "not read" not in capsys.readouterr().out
