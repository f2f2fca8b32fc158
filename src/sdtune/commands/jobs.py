"""``sdtune jobs ...``: the job queue from a terminal (the same store and worker as `sdtune serve`)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from sdtune.jobs.kind_table import KINDS_HELP

ORDER = 60

jobs_app = typer.Typer(
    help="A queue of sdtune commands that run one after another (overnight, without a browser). The queue lives "
         "in the workspace (--workspace, else $SDTUNE_WORKSPACE, else ~/.local/share/sdtune), shared with "
         "`sdtune serve`; jobs run while `sdtune serve` or `sdtune jobs work` is up.",
    no_args_is_help=True,
)

WORKSPACE = typer.Option(None, "--workspace", help="workspace folder (default: $SDTUNE_WORKSPACE, else "
                         "~/.local/share/sdtune)")
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _open(workspace: Path | None):
    from sdtune.jobs.store import JobStore
    from sdtune.jobs.workspace import find_workspace

    ws = find_workspace(workspace)
    return ws, JobStore.in_workspace(ws)


@jobs_app.command("submit", context_settings=EXTRA)
def submit_command(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="train: a run config YAML (or a run folder); other kinds: the first "
                                 "argument of their command"),
    kind: str = typer.Option("train", "--kind", help=f"what the job runs: {KINDS_HELP}"),
    name: str = typer.Option(None, "--name", help="job name (default: the config's); a train job trains into "
                             "WS/runs/NAME, or NAME-2, -3... when that folder exists or another job of the queue "
                             "has it"),
    priority: int = typer.Option(0, "--priority", help="higher runs first; equal: oldest first"),
    workspace: Path = WORKSPACE,
) -> None:
    """Queue a job. `sdtune jobs submit CONFIG key=value...` queues `sdtune train` on that config (checked now
    against the schema; it trains into a run folder of its own, WS/runs/NAME or NAME-2..., unless output_dir= is
    given). With --kind, the rest of the
    line is that command's arguments, checked now as that command checks them (its options, the files and run
    folders it reads, key=value overrides): `sdtune jobs submit --kind eval runs/a runs/b --prompts p.txt`.
    """
    from sdtune.jobs.kinds import command_submission, queue_submission, train_submission
    from sdtune.jobs.worker import WorkerLock

    ws, store = _open(workspace)
    rest = list(ctx.args)
    if kind == "train":
        sub = train_submission(ws, Path(target), rest, name=name, store=store)
    else:
        sub = command_submission(kind, [target, *rest], name=name, store=store)
    job = queue_submission(store, sub, priority)  # the run folder is chosen under the queue's lock
    for note in sub.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"job {job.id} queued: {job.kind} {job.name}" + (f" -> {job.run_dir}" if job.run_dir else ""))
    pid = WorkerLock(ws).holder()
    if pid is None:
        typer.echo("no worker is running: start `sdtune serve` or `sdtune jobs work` "
                   f"(--workspace {ws}) to run the queue", err=True)
    else:
        typer.echo(f"a worker is running (pid {pid}); `sdtune jobs logs {job.id} -f` follows it")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%m-%d %H:%M", time.localtime(seconds))


@jobs_app.command("list")
def list_command(
    all_jobs: bool = typer.Option(False, "--all", help="also finished, failed, stopped and cancelled jobs"),
    workspace: Path = WORKSPACE,
) -> None:
    """The queue: id, state, kind, name, attempts, priority, created, progress (from the run folder)."""
    from sdtune.jobs.progress import progress_line
    from sdtune.jobs.store import ACTIVE
    from sdtune.jobs.worker import WorkerLock, job_message

    ws, store = _open(workspace)
    jobs = store.jobs(None if all_jobs else ACTIVE)
    if not jobs:
        typer.echo("no jobs" + ("" if all_jobs else " queued or running (--all shows ended ones)"))
    for job in reversed(jobs):
        progress = progress_line(job)
        if job.state in ("failed", "stopped", "cancelled") and (message := job_message(ws, job)):
            progress = f"{progress}  {message}" if progress else message  # why it ended, in one line
        typer.echo(f"{job.id:5d}  {job.state:9s}  {job.kind:11s}  {job.name:24s}  try {job.attempts}  "
                   f"prio {job.priority:<3d} {_age(job.created)}  {progress}")
    pid = WorkerLock(ws).holder()
    typer.echo(f"worker: {'running, pid ' + str(pid) if pid else 'none (sdtune serve or sdtune jobs work)'}",
               err=True)


def _change(action: str, job_id: int, workspace: Path | None) -> None:
    """Apply ``cancel`` / ``stop`` / ``retry`` to a job and say its new state (a retry: what its next attempt does)."""
    from sdtune.jobs.kinds import next_attempt

    _, store = _open(workspace)
    job = getattr(store, action)(job_id)
    then = f" ({next_attempt(job)})" if action == "retry" else ""
    typer.echo(f"job {job.id}: {job.state}{then}")


@jobs_app.command("cancel")
def cancel_command(job_id: int = typer.Argument(...), workspace: Path = WORKSPACE) -> None:
    """Cancel a job: a queued one never runs; a running one stops at its next step (a checkpoint is saved)."""
    _change("cancel", job_id, workspace)


@jobs_app.command("stop")
def stop_command(job_id: int = typer.Argument(...), workspace: Path = WORKSPACE) -> None:
    """Stop a job keeping its checkpoint; `sdtune jobs retry ID` resumes it."""
    _change("stop", job_id, workspace)


@jobs_app.command("retry")
def retry_command(job_id: int = typer.Argument(...), workspace: Path = WORKSPACE) -> None:
    """Queue a failed, stopped or cancelled job again; a train job resumes from its newest checkpoint (from the
    beginning when it saved none), other kinds rerun their command, which continues what it wrote."""
    _change("retry", job_id, workspace)


@jobs_app.command("logs")
def logs_command(
    job_id: int = typer.Argument(...),
    follow: bool = typer.Option(False, "-f", "--follow", help="keep printing until the job ends"),
    workspace: Path = WORKSPACE,
) -> None:
    """Print a job's log (every attempt, with the command each ran); a job that has not run yet has none."""
    from sdtune.jobs.store import ENDED
    from sdtune.jobs.worker import log_path

    ws, store = _open(workspace)
    job = store.get(job_id)
    path = log_path(ws, job.id)
    if not path.exists():
        if job.attempts and not follow:
            typer.echo(f"job {job.id} has no log: {path} is missing", err=True)
        elif job.attempts == 0 and job.state in ENDED:
            typer.echo(f"job {job.id} has not run (it is {job.state}): no log", err=True)
        elif job.attempts == 0:
            then = "waiting for it" if follow else f"`sdtune jobs logs {job.id} -f` waits for it"
            typer.echo(f"job {job.id} has not run yet (it is {job.state}): no log; {then}", err=True)
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
                offset += len(chunk)
            if chunk:
                typer.echo(chunk.decode("utf-8", "replace"), nl=False)
        if not follow or store.get(job_id).state in ENDED:
            break
        time.sleep(1.0)


@jobs_app.command("work")
def work_command(
    workspace: Path = WORKSPACE,
    address: str = typer.Option(None, "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a "
                                "local engine)"),
    slots: int = typer.Option(1, "--slots", min=1, help="jobs run at once"),
) -> None:
    """Run the queue without the page (the same worker `sdtune serve` runs): Ctrl-C stops the running jobs at a
    checkpoint and leaves them queued, so the next `jobs work` or `serve` continues them."""
    from sdtune.jobs.executor import engine_executor
    from sdtune.jobs.worker import Worker, WorkerLock
    from sdtune.jobs.workspace import find_workspace
    from sdtune.stopping import stop_scope

    ws = find_workspace(workspace)
    WorkerLock(ws).check_free()  # before the engine (Ray) starts: refused in a second, not after it
    worker = Worker(ws, engine_executor(address), slots=slots, say=lambda s: typer.echo(s, err=True))
    typer.echo(f"worker on {ws} (Ctrl-C stops)", err=True)
    with stop_scope() as stop:
        import threading

        def watch() -> None:
            while not worker.stop_event.is_set():
                if stop.requested:
                    worker.stop_event.set()
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()
        worker.serve()


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
