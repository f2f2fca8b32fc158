"""Output folders: never over a user's files, never into or around the training data (issue #10, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.config import config_from_dict, load_config, save_config
from sdtune.errors import ConfigError
from sdtune.output_folders import check_group_folder, check_run_output
from tests.helpers import make_images, tiny_config, write_config


def _cfg(tmp: Path, out: Path, **data):
    data = data or {"instance_dir": str(tmp / "data" / "db"), "instance_prompt": "a sks dog"}
    return config_from_dict(tiny_config(out, data))


@pytest.mark.parametrize("value", ["", "  "])
@pytest.mark.parametrize("key", ["output_dir", "data.instance_dir", "data.train_dir", "data.class_dir"])
def test_empty_paths_are_refused_with_the_key(tmp_path: Path, key: str, value: str) -> None:
    base = write_config(tmp_path / "base.yaml", tiny_config(tmp_path / "run", {"train_dir": str(tmp_path)}))
    with pytest.raises(ConfigError, match=rf"{key}.*empty"):
        load_config(base, [f"{key}={value}"])


def test_a_folder_of_user_files_is_refused_and_kept(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    for name in ("README.md", "config.yaml", "metrics.json"):
        (user / name).write_text("mine\n")
    with pytest.raises(ConfigError, match=r"user is not empty and is not an sdtune run folder.*README\.md"):
        check_run_output(_cfg(tmp_path, user))
    (user / "config.yaml").unlink()  # README.md + metrics.json alone are a user's too
    with pytest.raises(ConfigError, match="not an sdtune run folder"):
        check_run_output(_cfg(tmp_path, user))
    assert (user / "README.md").read_text() == "mine\n"


@pytest.mark.parametrize("marker,kind", [("metadata.jsonl", "dataset folder"), ("manifest.json", "recipe output"),
                                         ("summary.csv", "personalize output")])
def test_another_kind_of_sdtune_folder_is_named(tmp_path: Path, marker: str, kind: str) -> None:
    out = tmp_path / "x"
    out.mkdir()
    (out / marker).write_text("{}\n")
    with pytest.raises(ConfigError, match=kind):
        check_run_output(_cfg(tmp_path, out))


def test_missing_empty_and_run_folders_are_accepted(tmp_path: Path) -> None:
    check_run_output(_cfg(tmp_path, tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    check_run_output(_cfg(tmp_path, tmp_path / "empty"))
    run = tmp_path / "run"
    cfg = _cfg(tmp_path, run)
    (run / "checkpoints").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    for name in ("README.md", "metrics.json", ".lora.tmp", "train.log", "subject.json"):
        (run / name).write_text("{}\n")
    check_run_output(cfg)
    # found by a bf16 resume try: a finished pivotal run (embeddings/) was "not an sdtune run folder" to its own
    # `--resume latest`; so is a run `sdtune pick` wrote picked/ and pick/ into
    for folder in ("embeddings", "picked", "pick"):
        (run / folder).mkdir()
        check_run_output(cfg)


@pytest.mark.parametrize("where,words", [("data/db", "is the training data folder itself"),
                                         ("data/db/run", "is inside the training data folder"),
                                         ("data", "contains the training data folder")])
def test_output_and_data_folders_must_not_overlap(tmp_path: Path, where: str, words: str) -> None:
    make_images(tmp_path / "data" / "db", 2)
    with pytest.raises(ConfigError, match=rf"{words}.*data\.instance_dir"):
        check_run_output(_cfg(tmp_path, tmp_path / where))
    subset = {"subsets": [{"path": str(tmp_path / "data" / "db"), "prompt": "x"}]}
    with pytest.raises(ConfigError, match=r"data\.subsets\.0\.path"):
        check_run_output(_cfg(tmp_path, tmp_path / where, **subset))


def test_group_folders_hold_only_their_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "concept").mkdir(parents=True)
    cfg = _cfg(tmp_path, out / "concept", instance_dir=str(out / "photos"), instance_prompt="a sks dog")
    (out / "photos").mkdir()
    args = ("recipe output folder", "manifest.json", "output_dir", "sdtune run", "one run folder per stage")
    check_group_folder(out, {"concept"}, [cfg], *args)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"output_dir .*out is not empty .*notes\.txt.*`sdtune run`.*"
                                          r"\(one run folder per stage, manifest\.json\)"):
        check_group_folder(out, {"concept"}, [cfg], *args)
    (out / "manifest.json").write_text("{}")  # an earlier run of the recipe: continued
    check_group_folder(out, {"concept"}, [cfg], *args)
