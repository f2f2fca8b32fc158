"""Every command names a folder it cannot write before its first step (before any model loads), in one line.

Run in-process through the console entry point (``sdtune.cli.main``). The folders are really unwritable for root
(``tests.helpers.locked_folder``), since tests and CI run as root, which ignores mode bits. Training with an
unwritable feature cache (it goes on uncached) is in tests/integration/test_unwritable.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtune.cli import main
from tests.helpers import immutable, locked_folder, make_images, tiny_config, write_config


def _refused(capsys, *argv: str, key: str, folder: Path) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    out, err = capsys.readouterr()
    assert stopped.value.code == 2, out + err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot write to {folder} ({key}): "), err
    return line


def _run_folder(run: Path) -> Path:
    """A LoRA run folder's files as the commands find them (no weights are loaded: they refuse first)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    (run / "lora").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny"}, "output_dir": str(run)}))
    save_file({"x": torch.zeros(1)}, str(run / "lora" / "pytorch_lora_weights.safetensors"))
    return run


def _config(tmp_path: Path) -> Path:
    data = {"instance_dir": str(make_images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks dog"}
    return write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", data, {"lora": {"rank": 2}}))


def test_train_names_an_unwritable_output_class_or_model_cache_folder(tmp_path, capsys, monkeypatch) -> None:
    config = str(_config(tmp_path))
    with locked_folder(tmp_path) as locked:
        line = _refused(capsys, "train", config, f"output_dir={locked / 'run'}", key="output_dir",
                        folder=locked / "run")
        assert line.endswith("choose a writable folder with output_dir=... or fix its permissions")
        _refused(capsys, "train", config, "data.with_prior_preservation=true", f"data.class_dir={locked / 'cls'}",
                 "data.class_prompt=a photo of a dog", key="data.class_dir", folder=locked / "cls")
        monkeypatch.setenv("SDTUNE_CACHE", str(locked / "cache"))
        line = _refused(capsys, "train", config, key="SDTUNE_CACHE", folder=locked / "cache")
        assert "the built-in model 'tiny' is built there" in line
    (tmp_path / "a-file").write_text("x")
    monkeypatch.delenv("SDTUNE_CACHE")
    _refused(capsys, "train", config, f"output_dir={tmp_path / 'a-file' / 'run'}", key="output_dir",
             folder=tmp_path / "a-file" / "run")
    assert not (tmp_path / "run").exists()


def test_a_continued_run_with_a_locked_subfolder_is_refused(tmp_path, capsys) -> None:
    config = str(_config(tmp_path))
    (tmp_path / "run").mkdir()
    with locked_folder(tmp_path / "run", "checkpoints") as locked:
        if locked.parent != tmp_path / "run":
            pytest.skip("no way to lock a folder of our own here (chattr +i refused)")
        line = _refused(capsys, "train", config, key="output_dir", folder=locked)
    assert "a continued run writes into checkpoints/" in line


def test_every_command_checks_its_output_folder_first(tmp_path, capsys) -> None:
    run = _run_folder(tmp_path / "runs" / "db")
    people = tmp_path / "people.csv"
    people.write_text(f"name,photos\nann,{make_images(tmp_path / 'ann', 2)}\n", encoding="utf-8")
    with locked_folder(tmp_path) as locked:
        out = locked / "out"
        _refused(capsys, "generate", "tiny", "-p", "a dog", "--out", str(out), key="--out", folder=out)
        _refused(capsys, "eval", "tiny", "--prompt", "a dog", "--out", str(out), key="--out", folder=out)
        _refused(capsys, "dataset", "build", str(tmp_path / "ann"), str(out), key="OUT", folder=out)
        _refused(capsys, "export", str(run), "--format", "kohya", "--out", str(out / "x.safetensors"), key="--out",
                 folder=out)
        _refused(capsys, "personalize", str(people), "--concept", str(run), "--out", str(out), key="--out",
                 folder=out)
        _refused(capsys, "demo", "--out", str(out), key="--out", folder=out)


def test_pick_and_the_job_workspace_check_where_they_write(tmp_path, capsys, monkeypatch) -> None:
    run = _run_folder(tmp_path / "run")
    with locked_folder(tmp_path, "run") as locked:
        if locked != run:
            pytest.skip("no way to lock a folder of our own here (chattr +i refused)")
        line = _refused(capsys, "pick", str(run), "--prompt", "a dog", "--out", str(tmp_path / "pick"), key="RUN",
                        folder=run)
        assert "--no-export" in line
        _refused(capsys, "pick", str(run), "--prompt", "a dog", key="--out", folder=run / "pick")
    with locked_folder(tmp_path) as locked:
        monkeypatch.setenv("SDTUNE_WORKSPACE", str(locked / "ws"))
        _refused(capsys, "jobs", "list", key="SDTUNE_WORKSPACE", folder=locked / "ws")
        _refused(capsys, "jobs", "list", "--workspace", str(locked / "w2"), key="--workspace", folder=locked / "w2")


def test_a_continued_run_whose_config_is_immutable_is_refused(tmp_path, capsys) -> None:
    import subprocess

    config = str(_config(tmp_path))
    (tmp_path / "run").mkdir()
    kept = tmp_path / "run" / "config.yaml"
    kept.write_text((tmp_path / "c.yaml").read_text())
    if not immutable(kept):
        pytest.skip("chattr +i is not available here")
    try:
        line = _refused(capsys, "train", config, key="output_dir", folder=kept)
    finally:
        subprocess.run(["chattr", "-i", str(kept)], check=True)
    assert "immutable or append-only" in line and "chattr -i" in line
