"""The queue end to end on the real engine: `sdtune jobs submit` + `sdtune jobs work`, a worker stopped mid-job
(SIGTERM) and one killed mid-job (SIGKILL), each followed by a new worker; cancel. Nothing is lost: after a stop the
job resumes from the checkpoint the stop saved, after a crash from the newest checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdtune.training.resume import resumed_step
from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _worker(ws: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sdtune", "jobs", "work", "--workspace", str(ws)],
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def _jobs(ws: Path) -> dict[int, dict]:
    from sdtune.jobs.store import JobStore

    return {j.id: j.to_dict() for j in JobStore.in_workspace(ws).jobs()}


def _wait(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n" + (log.read_text()[-3000:] if log and log.exists() else ""))


def _steps(run: Path) -> list[int]:
    path = run / "logs" / "progress.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


# Long enough that the worker's SIGTERM (sent after six steps, a submit and a cancel: a few seconds) lands mid-run:
# with 40 steps a warm Ray worker on an idle machine finished the job before the stop arrived.
STEPS = 200


def test_worker_restart_resumes_the_running_job(tmp_path):
    ws = tmp_path / "ws"
    photos = make_images(tmp_path / "photos", 4)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "unused", {
        "instance_dir": str(photos), "instance_prompt": "a photo of sks"}, train={"max_steps": STEPS}))
    out = run_cli("jobs", "submit", str(config), "checkpoint.every=4", "--name", "me", "--workspace", str(ws))
    assert "job 1 queued: train me" in out.stdout and "no worker is running" in out.stderr
    low = run_cli("jobs", "submit", str(config), "train.max_steps=2", "--name", "later", "--workspace", str(ws))
    assert "job 2 queued" in low.stdout
    run_cli("jobs", "cancel", "2", "--workspace", str(ws))
    log = tmp_path / "worker.log"
    worker = _worker(ws, log)
    try:
        run = ws / "runs" / "me"
        _wait(lambda: len(_steps(run)) >= 6, 240, "six steps of job 1", log)
        assert "a worker is running" in run_cli("jobs", "submit", str(config), "--name", "x", "--workspace",
                                                 str(ws)).stdout
        run_cli("jobs", "cancel", "3", "--workspace", str(ws))
        worker.send_signal(signal.SIGTERM)  # the server / worker goes down mid-job
        assert worker.wait(180) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    job = _jobs(ws)[1]
    assert job["state"] == "queued" and job["attempts"] == 1, job
    stopped_at = max(_steps(run))
    assert _checkpoints(run)[-1] == stopped_at  # the stop saved the step it reached: nothing lost
    assert _jobs(ws)[2]["state"] == "cancelled" and _jobs(ws)[2]["attempts"] == 0
    # now a crash: the worker is killed (SIGKILL, an OOM kill) while the job runs
    worker = _worker(ws, log)
    try:
        _wait(lambda: max(_steps(run)) >= stopped_at + 6, 240, "six more steps of job 1", log)
        worker.kill()
        worker.wait(60)
        time.sleep(3)  # its unit of work dies with it (parent-death signal)
        killed_at = max(_steps(run))
        kept = _checkpoints(run)[-1]
        assert kept <= killed_at and _jobs(ws)[1]["state"] == "running"  # the store still says running
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    time.sleep(2)
    assert max(_steps(run)) == killed_at  # nothing trains without a worker
    worker = _worker(ws, log)
    try:
        _wait(lambda: _jobs(ws)[1]["state"] == "finished", 300, "job 1 to finish after the restart", log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)
    job = _jobs(ws)[1]
    assert job["attempts"] == 3 and job["exit_code"] == 0
    lines = [json.loads(line)["step"] for line in (run / "logs" / "progress.jsonl").read_text().splitlines()]
    assert lines == list(range(1, STEPS + 1))  # the live branch, each step once: the crash's lost steps cut
    job_log = run_cli("jobs", "logs", "1", "--workspace", str(ws)).stdout
    assert "attempt 1" in job_log and "attempt 3" in job_log and f"done: {STEPS} steps" in job_log
    assert resumed_step(job_log, job_log.index("attempt 2")) == stopped_at  # after the stop: its checkpoint
    assert resumed_step(job_log, job_log.index("attempt 3")) == kept  # after the crash: the newest checkpoint
    assert "after the previous worker ended" in log.read_text()
    listing = run_cli("jobs", "list", "--all", "--workspace", str(ws)).stdout
    assert "finished" in listing and f"step {STEPS}/{STEPS}" in listing


def _checkpoints(run: Path) -> list[int]:
    from sdtune.run_folder import list_checkpoints, step_of

    return [step_of(p) for p in list_checkpoints(run / "checkpoints")]  # complete ones, oldest first
