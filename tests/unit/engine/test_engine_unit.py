"""One unit of work without Ray: exit codes classified, stop at a checkpoint, no child outlives its supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sdtune.engine.unit import (
    EXIT_BAD_INPUT,
    EXIT_STOPPED,
    Unit,
    classify,
    read_attempt,
    request_stop,
    run_unit,
    unit_progress,
)

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _unit(tmp: Path, mode: str, seconds: float = 30.0, **kw) -> Unit:
    return Unit((mode, str(tmp / "work"), str(seconds)), tmp / "unit.log", "u", env=ENV, module="tests.engine_child",
                **kw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")


def _pids(folder: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in folder.glob("pid-*")]


@pytest.mark.parametrize(("code", "asked", "kind"), [
    (0, False, "ok"), (2, False, "bad_input"), (130, True, "stopped"), (130, False, "crash"), (1, False, "crash"),
    (-9, False, "crash"), (137, False, "lost")])
def test_exit_codes_are_classified(code: int, asked: bool, kind: str) -> None:
    assert classify(code, asked) == kind


def test_bad_input_is_reported_with_its_error_line_and_is_not_retryable(tmp_path: Path) -> None:
    result = run_unit(_unit(tmp_path, "bad"), attempt=3, token="t")
    assert (result.returncode, result.kind, result.retryable) == (EXIT_BAD_INPUT, "bad_input", False)
    assert result.error == "error: data.instance_dir photos/ has no images" and result.attempt == 3
    assert "attempt 3 on" in (tmp_path / "unit.log").read_text()


def test_a_crash_is_retryable_and_names_the_exception(tmp_path: Path) -> None:
    result = run_unit(_unit(tmp_path, "crash-once"))
    assert result.kind == "crash" and result.retryable and "CUDA out of memory" in result.error
    assert run_unit(_unit(tmp_path, "crash-once")).kind == "ok"  # the second attempt finds its marker


def test_stop_request_sends_sigterm_once_and_counts_as_stopped(tmp_path: Path) -> None:
    unit = _unit(tmp_path, "sleep")
    got = {}
    worker = threading.Thread(target=lambda: got.update(r=run_unit(unit, token="tok-1", gpu_ids=["3"])))
    worker.start()
    while not read_attempt(unit):
        time.sleep(0.05)
    assert read_attempt(unit)["device"] == "cuda:3" and read_attempt(unit)["token"] == "tok-1"
    request_stop(unit, "tok-0")  # another attempt's token: ignored
    time.sleep(0.6)
    assert worker.is_alive()
    request_stop(unit, "tok-1")
    worker.join(20)
    result = got["r"]
    assert (result.returncode, result.kind, result.status) == (EXIT_STOPPED, "stopped", "stopped")
    pid = _pids(tmp_path / "work")[0]
    assert (tmp_path / "work" / f"cuda-{pid}").read_text() == "3" and not _alive(pid)


def test_a_stop_asked_before_start_starts_no_child(tmp_path: Path) -> None:
    unit = _unit(tmp_path, "ok")
    request_stop(unit, "*")
    assert run_unit(unit, token="x").kind == "stopped" and not (tmp_path / "work").exists()


def test_a_finished_run_returns_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": "finished", "steps": 4, "final_loss": 0.5}))
    result = run_unit(_unit(tmp_path, "ok", run_dir=run))
    assert result.skipped and result.kind == "ok" and not (tmp_path / "work").exists()
    assert unit_progress(run) == (4, None, None)
    (run / "logs").mkdir()
    (run / "logs" / "progress.jsonl").write_text('{"step": 3, "max_steps": 8, "loss": 0.25}\n{"step": 4, "max')
    assert unit_progress(run) == (3, 8, 0.25)


def test_train_units_resume_latest(tmp_path: Path) -> None:
    assert Unit(("train", "c.yaml"), tmp_path / "l", run_dir=tmp_path).command()[-3:] == ["c.yaml", "--resume",
                                                                                             "latest"]
    assert Unit(("train", "c.yaml", "--resume", "x"), tmp_path / "l", run_dir=tmp_path).command()[-1] == "x"
    assert Unit(("eval", "r"), tmp_path / "l").command()[-2:] == ["eval", "r"]


def test_child_dies_with_its_killed_supervisor(tmp_path: Path) -> None:
    """A Ray worker killed by SIGKILL: its training child must not keep running (and holding a GPU)."""
    code = ("import sys; from pathlib import Path; from sdtune.engine.unit import Unit, run_unit; "
            f"run_unit(Unit(('sleep', {str(tmp_path / 'work')!r}, '60'), Path({str(tmp_path / 'unit.log')!r}), "
            f"env={ENV!r}, module='tests.engine_child', run_dir=Path({str(tmp_path / 'run')!r})))")
    supervisor = subprocess.Popen([sys.executable, "-c", code], env=os.environ | ENV)
    deadline = time.time() + 60
    while not _pids(tmp_path / "work") and time.time() < deadline:
        time.sleep(0.05)
    child = _pids(tmp_path / "work")[0]
    assert _alive(child)
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the child outlived its supervisor"
    # its lock went with it: the next attempt starts at once
    assert run_unit(_unit(tmp_path, "ok", run_dir=tmp_path / "run")).kind == "crash"  # exit 0, run not finished
