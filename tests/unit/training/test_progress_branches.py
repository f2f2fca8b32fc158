"""``RUN/logs/progress.jsonl`` across resumes: the curve a watcher draws is the live branch's.

A resume from an older checkpoint (step 2 of a log that reached 6) must not keep the dead branch's steps 3-6 until
they are trained again, nor show them after the resumed run is stopped at step 3; a run started over in its folder
drops all of the old one's lines."""

from __future__ import annotations

from pathlib import Path

from sdtune.engine.unit import unit_progress
from sdtune.run_folder import last_progress, read_progress
from sdtune.training.progress_log import ProgressLog


def _train(run: Path, start: int, stop: int, loss: float) -> None:
    log = ProgressLog(run, from_step=start)
    for step in range(start + 1, stop + 1):
        log.step(step, 6, loss, 1e-4, 0.5)


def test_a_resume_from_an_older_checkpoint_drops_the_dead_branch(tmp_path: Path) -> None:
    _train(tmp_path, 0, 6, loss=0.5)
    _train(tmp_path, 2, 3, loss=0.25)  # resumed from step 2's checkpoint, stopped after step 3
    rows = read_progress(tmp_path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 0.5), (2, 0.5), (3, 0.25)]
    assert [r["step"] for r in last_progress(tmp_path, 5)][-1] == 3 and unit_progress(tmp_path)[:2] == (3, 6)


def test_a_run_started_over_in_its_folder_shows_only_its_own_steps(tmp_path: Path) -> None:
    _train(tmp_path, 0, 4, loss=0.5)
    _train(tmp_path, 0, 1, loss=0.125)
    assert [(r["step"], r["loss"]) for r in read_progress(tmp_path)] == [(1, 0.125)]


def test_a_log_written_before_markers_still_reads(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "progress.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 1, "loss": 0.4}\n')
    assert [r["loss"] for r in read_progress(tmp_path)] == [0.4]  # the last line of a step wins, as before
