"""A short model name (a built-in model, or a captioner's / segmenter's short name) that is also a folder in the
working directory: the short name is used, and the command says so once, with how to pass the folder instead.
Before, the folder was passed over without a word."""

from __future__ import annotations

import pytest

from sdtune import errors
from sdtune.data.captioner import resolve_model
from sdtune.data.segmenter import DEFAULT_SEGMENTER, SHORT_NAMES
from sdtune.models.loading import resolve_model_ref
from sdtune.models.presets import preset_path


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(errors, "_NOTED", set())


def test_a_segmenter_short_name_beside_a_folder_of_that_name_says_which_it_uses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("clipseg", SHORT_NAMES, "segmentation model") == (DEFAULT_SEGMENTER, False)
    assert capsys.readouterr().err == ""  # no folder: nothing to say
    (tmp_path / "clipseg").mkdir()
    assert resolve_model("clipseg", SHORT_NAMES, "segmentation model") == (DEFAULT_SEGMENTER, False)
    resolve_model("clipseg", SHORT_NAMES, "segmentation model")
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and f"short name of {DEFAULT_SEGMENTER}" in err and "./clipseg" in err
    assert resolve_model("./clipseg", SHORT_NAMES, "segmentation model") == ("clipseg", True)


def test_a_built_in_model_beside_a_folder_of_that_name_says_which_it_uses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert resolve_model_ref("tiny") == str(preset_path("tiny"))
    resolve_model_ref("tiny")
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "built-in model" in err and "./tiny" in err
