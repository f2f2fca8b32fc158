"""Why a job failed is one line in `sdtune jobs list` and on the page, not only in its log.

Found by a newcomer: `sdtune jobs list --all` showed ``failed`` with nothing beside it and the page said "exited
with status 2 (the log's last lines say why)"; the reason (a missing data folder, a config error) was one `jobs
logs` away. The worker now records the command's own ``error:`` line as the job's message.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from sdtune.jobs.store import Job
from sdtune.jobs.worker import Worker, failure_line, log_path


class _Processes:
    """A local executor: each job is `python -m sdtune ARGV` in a child process writing its log (as the engine's
    unit does, with its ``=== attempt`` header)."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, job: Job, log: Path) -> str:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"\n=== attempt {job.attempts} here: sdtune {' '.join(job.argv)}\n")
            fh.flush()
            child = subprocess.Popen([sys.executable, "-m", "sdtune", *job.argv], stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=job.cwd)
        self.children[str(job.id)] = child
        return str(job.id)

    def exit_code(self, handle: str) -> int | None:
        return self.children[handle].poll()

    def stop(self, handle: str) -> None:
        self.children[handle].terminate()

    def close(self) -> None:
        for child in self.children.values():
            child.wait()


def test_a_failed_job_carries_its_error_line_to_the_list(tmp_path: Path, monkeypatch) -> None:
    from sdtune.cli import app
    from sdtune.jobs.workspace import find_workspace

    ws = find_workspace(tmp_path / "ws")  # makes its folders, as `serve` and `jobs work` do
    (tmp_path / "typo.yaml").write_text("model:\n  base: tiny\ndata:\n  instance_dir: me\n  instance_promt: x\n",
                                        encoding="utf-8")
    worker = Worker(ws, _Processes(), poll_seconds=0.1, say=lambda _: None)
    job = worker.store.submit("train", ["train", "typo.yaml"], name="typo", cwd=tmp_path)
    worker.tick()
    deadline = time.time() + 120
    while worker.running and time.time() < deadline:
        time.sleep(0.2)
        worker.tick()
    worker.executor.close()
    ended = worker.store.get(job.id)
    assert ended.state == "failed"
    assert ended.message.startswith("error: invalid config typo.yaml: data.instance_promt: unknown key"), ended.message
    monkeypatch.setenv("SDTUNE_WORKSPACE", str(ws))
    listed = CliRunner().invoke(app, ["jobs", "list", "--all"]).output
    assert "failed" in listed and "data.instance_promt: unknown key" in listed, listed


def test_the_reason_is_this_attempts_and_continuation_lines_are_kept(tmp_path: Path) -> None:
    log = log_path(tmp_path, 1)
    log.parent.mkdir(parents=True)
    log.write_text("=== attempt 1\nerror: an old reason\n=== attempt 2\ntrain:  50%|#####| 5/10\r"
                   "error: the training data has 1 problem; fix it:\n  /d/me: no readable images\n"
                   "2026-12-07 05:17:05 --- attempt 2 ended: failed (exit 2)\n", encoding="utf-8")
    assert failure_line(log) == "error: the training data has 1 problem; fix it: /d/me: no readable images"
    log.write_text("=== attempt 1\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "RuntimeError: boom\n2026-12-07 05:17:05 --- attempt 1 ended: failed (exit 1)\n", encoding="utf-8")
    assert failure_line(log) == "RuntimeError: boom"
    log.write_text("=== attempt 1\nkilled\n", encoding="utf-8")
    assert failure_line(log) is None


def test_a_failure_recorded_before_the_fix_shows_its_log_line(tmp_path: Path, monkeypatch) -> None:
    """Jobs that failed under an older worker hold only "exited with status 2 (...)": the list and the page read the
    error line from the log instead."""
    from fastapi.testclient import TestClient

    from sdtune.cli import app
    from sdtune.jobs.store import JobStore
    from sdtune.jobs.workspace import find_workspace
    from sdtune.server.app import create_app

    ws = find_workspace(tmp_path / "ws")
    store = JobStore.in_workspace(ws)
    job = store.submit("eval", ["eval", "runs/me", "--prompts", "nope.txt"], name="me")
    store.claim_next()
    log_path(ws, job.id).write_text("=== attempt 1\nerror: --prompts nope.txt does not exist\n", encoding="utf-8")
    store.ended(job.id, 2, "exited with status 2 (the log's last lines say why)")
    monkeypatch.setenv("SDTUNE_WORKSPACE", str(ws))
    assert "error: --prompts nope.txt does not exist" in CliRunner().invoke(app, ["jobs", "list", "--all"]).output
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860")
    assert client.get(f"/api/jobs/{job.id}").json()["message"] == "error: --prompts nope.txt does not exist"
