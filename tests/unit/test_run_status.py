"""A run's outputs are its final ones only when no checkpoint lies beyond metrics.json's finished step (item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtune.config import config_from_dict, save_config
from sdtune.errors import SdtuneError
from sdtune.recipes.runs import run_state
from sdtune.run_status import mark_unfinished, require_finished, run_progress
from tests.helpers import run_cli, tiny_config


def _run(tmp: Path, checkpoints: list[int], finished: int | None = None, max_steps: int = 20) -> Path:
    run = tmp / "r3"
    cfg = config_from_dict(tiny_config(run, {"train_dir": str(tmp / "data")}, {"max_steps": max_steps}))
    run.mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    for step in checkpoints:
        folder = run / "checkpoints" / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text("{}")
    if finished is not None:
        (run / "metrics.json").write_text(json.dumps({"status": "finished", "steps": finished}))
    return run


def test_finished_run_is_finished(tmp_path: Path) -> None:
    run = _run(tmp_path, [4, 8], finished=8, max_steps=8)
    assert run_progress(run).finished and run_state(run) == "finished"
    require_finished(run)


def test_resumed_past_its_outputs_and_stopped_is_unfinished(tmp_path: Path) -> None:
    run = _run(tmp_path, [8, 12], finished=8)
    assert run_state(run) == "interrupted"
    with pytest.raises(SdtuneError) as caught:
        require_finished(run, "r3")
    assert str(caught.value).startswith("r3 stopped at step 12 of 20; `sdtune train r3 --resume latest` to finish")
    assert "outputs of step 8" in str(caught.value)
    mark_unfinished(run, 12)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "unfinished" and metrics["step"] == 12 and metrics["outputs_step"] == 8


def test_a_profile_folder_without_training_is_not_judged(tmp_path: Path) -> None:
    run = _run(tmp_path, [])
    require_finished(run)  # no metrics.json, no checkpoint: nothing says it was trained further


def test_commands_name_the_step_and_the_resume_command(tmp_path: Path) -> None:
    run = _run(tmp_path, [2])  # never finished: no lora/
    line = f"{run} stopped at step 2 of 20; `sdtune train {run} --resume latest` to finish"
    for args in (("export", str(run)), ("generate", str(run), "-p", "x", "-o", str(tmp_path / "g"))):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2 and line in proc.stderr and "has training finished" not in proc.stderr, \
            proc.stderr


def test_checkpoints_of_a_stopped_run_can_be_compared(tmp_path: Path, capsys) -> None:
    """`eval --checkpoints` and `pick` refused a stopped run, the moment which checkpoint to keep is asked."""
    from sdtune.evaluation.runner import check_models

    run = _run(tmp_path, [8, 12], finished=8)
    with pytest.raises(SdtuneError, match="stopped at step 12 of 20"):
        check_models([str(run)])  # its outputs are step 8's: comparing them as the run's would mislead
    check_models([str(run)], checkpoints=True)
    err = capsys.readouterr().err
    assert "stopped at step 12 of 20" in err and "evaluating the checkpoints it has" in err
