"""`sdtune eval` inputs checked before anything loads (item 7): not-a-model, duplicates, seeds, --clip toy."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.commands.evaluate import parse_seeds
from sdtune.errors import SdtuneError
from sdtune.evaluation.clip_score import toy_clip
from sdtune.evaluation.runner import check_models, choose_clip
from tests.helpers import make_images


def test_a_data_folder_is_not_a_model(tmp_path: Path) -> None:
    data = make_images(tmp_path / "db", 2)
    with pytest.raises(SdtuneError, match=r"db is not a model \(.*it holds images\)"):
        check_models(["toy", str(data)])


def test_the_same_model_twice_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "toy1"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    with pytest.raises(SdtuneError, match="are the same model: pass it once"):
        check_models([str(folder), f"{folder}/"])


def test_duplicate_seeds_are_refused() -> None:
    with pytest.raises(SdtuneError, match="seed 0 is listed twice"):
        parse_seeds("0,0")
    assert parse_seeds("0,7,42") == [0, 7, 42] and parse_seeds("3") == [0, 1, 2]


def test_clip_toy_is_the_toy_models_clip() -> None:
    assert choose_clip(["tiny"], "toy") == str(toy_clip())
    with pytest.raises(SdtuneError, match="has no CLIP"):
        choose_clip(["toy"], "tiny")
