"""What `sdtune jobs submit --help`, `jobs logs` and `jobs retry` say matches what the queue does.

Found by a newcomer: --help listed the kinds without export (which works, and which the error message lists);
`jobs logs N` on a job that never ran printed nothing and exited 0; `jobs retry N` on a job that never ran said
"(attempt 1 resumes from the newest checkpoint)" when there was none.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sdtune.jobs.kind_table import COMMANDS
from sdtune.jobs.store import KINDS, JobStore
from sdtune.jobs.workspace import find_workspace


def _cli(ws: Path, *args: str):
    from sdtune.cli import app

    return CliRunner().invoke(app, ["jobs", *args, "--workspace", str(ws)], catch_exceptions=False)


def test_submit_help_lists_every_kind_the_queue_accepts(tmp_path: Path) -> None:
    from sdtune.cli import app

    assert tuple(COMMANDS) == KINDS  # one list: the store's kinds are the commands jobs run
    help_text = CliRunner().invoke(app, ["jobs", "submit", "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": ""})
    kind_line = next(line for line in help_text.output.splitlines() if "--kind " in line and "│" in line)
    for kind in KINDS:
        assert f" {kind} (" in kind_line, (kind, kind_line)
    refused = CliRunner().invoke(app, ["jobs", "submit", "--kind", "shell", "x", "--workspace", str(tmp_path)])
    assert str(refused.exception) == f"unknown job kind 'shell'; one of {', '.join(KINDS)}", refused.exception


def test_logs_of_a_job_that_never_ran_says_so(tmp_path: Path) -> None:
    ws = find_workspace(tmp_path / "ws")
    store = JobStore.in_workspace(ws)
    job = store.submit("eval", ["eval", "runs/me", "--prompt", "a"], name="me")
    result = _cli(ws, "logs", str(job.id))
    assert result.exit_code == 0
    assert f"job {job.id} has not run yet (it is queued" in result.stderr, result.output
    store.cancel(job.id)
    assert f"job {job.id} has not run (it is cancelled" in _cli(ws, "logs", str(job.id)).stderr


def test_retry_says_what_the_next_attempt_does(tmp_path: Path) -> None:
    ws = find_workspace(tmp_path / "ws")
    store = JobStore.in_workspace(ws)
    run = ws / "runs" / "me"
    never = store.submit("train", ["train", "c.yaml", "--resume", "latest"], name="me", run_dir=run)
    store.cancel(never.id)
    said = _cli(ws, "retry", str(never.id)).output
    assert "checkpoint" not in said and "it has not run yet: attempt 1 starts it from the beginning" in said, said
    store.claim_next()
    store.ended(never.id, 1, "boom")  # attempt 1 failed before its first checkpoint
    said = _cli(ws, "retry", str(never.id)).output
    assert "attempt 2 starts from the beginning (attempt 1 saved no checkpoint)" in said, said
    store.claim_next()
    store.ended(never.id, 130)
    (run / "checkpoints" / "step-000020").mkdir(parents=True)
    (run / "checkpoints" / "step-000020" / "state.json").write_text("{}")
    said = _cli(ws, "retry", str(never.id)).output
    assert "attempt 3 resumes from checkpoint step-000020" in said, said
    store.cancel(never.id)
    other = store.submit("eval", ["eval", "runs/me", "--prompt", "a"], name="ev")
    store.cancel(other.id)
    assert "it has not run yet: attempt 1 is its first run" in _cli(ws, "retry", str(other.id)).output
    store.claim_next()
    store.ended(other.id, 1, "boom")
    said = _cli(ws, "retry", str(other.id)).output
    assert "attempt 2 runs `sdtune eval` again" in said, said
