"""Which folders the jobs of the queue hold, and a free one for a new job: never one another job holds.

A train job trains into ``WS/runs/NAME`` (the page's eval jobs write ``WS/runs/eval-STAMP``). The folder sdtune
chooses is the first of ``NAME``, ``NAME-2``, ``NAME-3``... that neither exists on disk nor is held by a job of the
queue. A job holds its folders in every state but ``finished``: a queued or running job uses them now, a stopped,
failed or cancelled one again when it is retried (a finished job's run folder exists on disk, unless deleted). A
job's folders are its ``run_dir`` and what its command line writes (``--out``, a recipe's ``output_dir``:
:func:`sdtune.jobs.command_checks.outputs_of`).

The choice is made at submit, before the checks (so the notes and the job's config name it), and made again inside
the store's write transaction (:func:`sdtune.jobs.kinds.queue_submission`), so two submits at once (two terminals,
two page requests) never both get one folder.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdtune.jobs.store import Job

Held = Sequence[tuple[Path, "Job"]]  # (a folder, the job holding it)


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def held_folders(jobs: Iterable[Job]) -> Held:
    """The folders ``jobs`` write: each one's run folder, and the outputs its command line names."""
    from sdtune.jobs.command_checks import CHECKS, outputs_of

    held: list[tuple[Path, Job]] = []
    for job in jobs:
        if job.run_dir:
            held.append((_absolute(job.run_dir), job))
        if job.kind in CHECKS:
            args = job.argv[len(CHECKS[job.kind][0]):]
            held += [(_absolute(out), job) for out in outputs_of(job.kind, args, Path(job.cwd or Path.cwd()))]
    return held


def queue_holders(store: Any) -> Held:
    """:func:`held_folders` of the jobs now in ``store`` (a JobStore; None: no queue) that hold folders."""
    from sdtune.jobs.store import HOLDING

    return held_folders(store.jobs(HOLDING, limit=1_000_000)) if store is not None else []


def holder_of(folder: Path, held: Held) -> Job | None:
    """The job holding ``folder`` or something inside it (a pick job's ``RUN/pick``), None when none does."""
    folder = _absolute(folder)
    for path, job in held:
        if path == folder or folder in path.parents:
            return job
    return None


def taken(folder: Path, held: Held) -> str | None:
    """Why a new job cannot have ``folder`` (``runs/me exists``), None when it is free."""
    shown = f"{folder.parent.name}/{folder.name}"
    if folder.exists():
        return f"{shown} exists"
    job = holder_of(folder, held)
    return None if job is None else f"{shown} {holding(folder, job)}"


def holding(folder: Path, job: Job) -> str:
    """How ``job`` holds ``folder``: ``is the run folder of job 3 (queued)``."""
    if job.run_dir and _absolute(job.run_dir) == _absolute(folder):
        return f"is the run folder of job {job.id} ({job.state})"
    return f"is written by job {job.id} ({job.kind}, {job.state})"


def free_folder(parent: Path, name: str, held: Held = ()) -> tuple[Path, str | None]:
    """``parent/name``, or ``name-2``, ``-3``... the first that neither exists nor is held; and why ``name`` was
    not free (None when it was)."""
    why = taken(parent / name, held)
    if why is None:
        return parent / name, None
    for i in itertools.count(2):
        if taken(parent / f"{name}-{i}", held) is None:
            return parent / f"{name}-{i}", why
    raise AssertionError("unreachable")


def free_run_dir(workspace: Path, name: str, held: Held = ()) -> Path:
    """``WS/runs/<name>``, or ``<name>-2``, ``-3``... when it exists or a job of the queue holds it (``held``):
    a new job never continues another job's run."""
    return free_folder(workspace / "runs", name, held)[0]


def held_refusal(key: str, folder: Path, job: Job) -> str:
    """The line refusing a folder the user named (``output_dir=``) that ``job`` holds, with the ways out."""
    from sdtune.jobs.store import ACTIVE

    then = (f"submit this one once job {job.id} has finished" if job.state in ACTIVE
            else f"`sdtune jobs retry {job.id}` goes on with that run")
    return (f"{key} {folder} {holding(folder, job)}: two jobs in one run folder mix their configs (the later one "
            f"resumes the earlier one's run). Leave {key}= out (the job then trains into a free WS/runs/NAME), name "
            f"another folder, or {then}")
