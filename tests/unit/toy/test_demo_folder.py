"""`sdtune demo --out`: refused before anything is written unless new, empty or this very demo's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.errors import ConfigError
from sdtune.toy import world
from sdtune.toy.demo import DemoSettings, run_demo


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("kind", ["other files", "a dataset", "another recipe's runs", "the demo with --quick"])
def test_a_folder_that_is_not_this_demos_is_refused_and_left_as_it_was(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "other files":
        (out / "sub").mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    elif kind == "a dataset":  # the demo's own person photos: writing there would mix arrows into them
        world.write_person_set(out, 8, captioned=True, poses=4)
    elif kind == "another recipe's runs":
        for stage in ("concept", "person"):
            (out / stage).mkdir(parents=True)
            (out / stage / "config.yaml").write_text("data: {}\n")
        (out / "manifest.json").write_text("{}")
    else:
        out.mkdir()
        (out / "recipe.yaml").write_text("output_dir: elsewhere\nstages: []\n")
    before = _listing(out)
    with pytest.raises(ConfigError, match="--out") as refused:
        run_demo(out, DemoSettings.quick(), echo=lambda _: None)
    assert _listing(out) == before
    assert "subject" not in str(refused.value), "the demo writes stages, not personalize's subjects (a newcomer)"
    if kind == "other files":
        assert "(data/, a run folder per stage, report/, recipe.yaml)" in str(refused.value)


def test_a_new_folder_passes_the_check(tmp_path: Path) -> None:
    from sdtune.toy.demo import check_demo_folder

    check_demo_folder(tmp_path / "new", "recipe")  # missing: fine
    (tmp_path / "empty").mkdir()
    check_demo_folder(tmp_path / "empty", "recipe")
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "recipe.yaml").write_text("recipe", encoding="utf-8")
    check_demo_folder(tmp_path / "again", "recipe")  # this demo's own folder: a rerun continues
