"""The queue end to end on the real engine: `sdtune jobs submit` + `sdtune jobs work`, a worker stopped mid-job
and started again, priorities and cancel. Nothing is lost: the job resumes from the checkpoint its stop saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_worker_restart_resumes_the_running_job(tmp_path):
    ws = tmp_path / "ws"
    photos = make_images(tmp_path / "photos", 4)
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "unused", {
        "instance_dir": str(photos), "instance_prompt": "a photo of sks"}, train={"max_steps": 40}))
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
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert checkpoints[-1] == f"step-{stopped_at:06d}"  # the stop saved the step it reached: nothing lost
    assert _jobs(ws)[2]["state"] == "cancelled" and _jobs(ws)[2]["attempts"] == 0
    worker = _worker(ws, log)
    try:
        _wait(lambda: _jobs(ws)[1]["state"] == "finished", 300, "job 1 to finish after the restart", log)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)
    job = _jobs(ws)[1]
    assert job["attempts"] == 2 and job["exit_code"] == 0
    lines = [json.loads(line)["step"] for line in (run / "logs" / "progress.jsonl").read_text().splitlines()]
    resumed = lines[lines.index(stopped_at) + 1:]
    assert resumed[0] == stopped_at + 1 and resumed[-1] == 40  # continued after the checkpoint, no step redone
    job_log = run_cli("jobs", "logs", "1", "--workspace", str(ws)).stdout
    assert "attempt 1" in job_log and "attempt 2" in job_log and "done: 40 steps" in job_log
    listing = run_cli("jobs", "list", "--all", "--workspace", str(ws)).stdout
    assert "finished" in listing and "step 40/40" in listing
