"""What a job runs: each kind becomes one sdtune command line (the unit of work), checked before it is queued.

A job is the CLI, run later: ``train`` is ``sdtune train CONFIG --resume latest`` on a config that went through
the schema now (so a bad key is refused at submit, not at 3 a.m.), written with every path made absolute and the
run folder fixed, so every attempt of the job (first run, resume after a restart, retry) runs the same command
and continues the same run folder. The other kinds (``run``, ``personalize``, ``caption``, ``eval``, ``pick``)
are their command with the arguments given; those commands already continue where they stopped when rerun.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtune.errors import SdtuneError
from sdtune.jobs.folders import free_folder, held_refusal, holder_of, queue_holders
from sdtune.jobs.kind_table import COMMANDS
from sdtune.jobs.workspace import check_name

if TYPE_CHECKING:
    from sdtune.jobs.store import Job



@dataclass
class Submission:
    """A job ready to queue: its kind, a name, the command line (after ``sdtune``), its run folder, its cwd.

    ``folder``: the folder sdtune chose for the job's outputs (``WS/runs/<wanted>`` or ``<wanted>-N``); when another
    job took it before this one is queued, :func:`queue_submission` moves the job to the next free one with
    ``move`` (writes the job for another folder, returns its command line). ``files``: written for this job,
    removed when it is not queued. ``folder_note``: the note (in ``notes``) saying the folder is not ``wanted``."""

    kind: str
    name: str
    argv: list[str]
    run_dir: Path | None = None
    cwd: Path | None = None
    notes: list[str] = field(default_factory=list)
    folder: Path | None = None
    wanted: str = ""
    move: Callable[[Path], list[str]] | None = None
    files: list[Path] = field(default_factory=list)
    folder_note: str | None = None

    def writes_into(self, folder: Path, wanted: str) -> None:
        """``folder`` (an argument of the command line, chosen by sdtune) is this job's own: moved as a run folder
        is when another job takes it first."""
        self.folder, self.wanted = folder, wanted
        self.move = lambda new: [str(new) if arg == str(folder) else arg for arg in self.argv]

    def _moved(self, why: str | None, chosen: Path) -> None:
        if self.folder_note in self.notes:
            self.notes.remove(self.folder_note)
        self.folder_note = None
        if why is not None:
            verb = "trains" if self.kind == "train" else "writes"
            self.folder_note = f"{why}: this job {verb} into {chosen.parent.name}/{chosen.name}"
            self.notes.insert(0, self.folder_note)
        if chosen == self.folder:
            return
        assert self.folder is not None and self.move is not None
        self.argv = self.move(chosen)
        if self.run_dir == self.folder:
            self.run_dir = chosen
        if self.name == self.folder.name:
            self.name = chosen.name
        self.folder = chosen


def queue_submission(store: Any, sub: Submission, priority: int = 0) -> Job:
    """Queue ``sub`` in ``store`` (a JobStore); the folder is chosen (again) inside the store's write transaction,
    so it is one no job of the queue holds even when two submits run at once: when another job took it since
    ``sub`` was made, the job moves to the next free name (its config rewritten) and its note says so. A folder the
    user named (``output_dir=``) that a job holds is refused (SdtuneError); nothing is queued or left written."""

    def place(holders: list[Job]) -> tuple[str, list[str], Path | None]:
        from sdtune.jobs.folders import held_folders

        if sub.folder is None and sub.run_dir is None:
            return sub.name, sub.argv, None  # a job with no folder of its own: nothing to choose
        held = held_folders(holders)
        if sub.folder is not None:
            chosen, why = free_folder(sub.folder.parent, sub.wanted, held)
            sub._moved(why, chosen)
        elif sub.run_dir is not None and (job := holder_of(sub.run_dir, held)) is not None:
            raise SdtuneError(held_refusal("output_dir", sub.run_dir, job))
        return sub.name, sub.argv, sub.run_dir

    try:
        return store.submit(sub.kind, sub.argv, name=sub.name, run_dir=sub.run_dir, priority=priority, cwd=sub.cwd,
                            place=place)
    except BaseException:
        for path in sub.files:
            path.unlink(missing_ok=True)
        raise


def train_submission(workspace: Path, config: Path, overrides: list[str], *, name: str | None = None,
                     cwd: Path | None = None, store: Any = None) -> Submission:
    """Validate ``config`` + ``overrides`` through the run schema and fix it as ``WS/jobs/configs/<name>.yaml``.

    The run folder is ``WS/runs/<name>`` unless the overrides name an ``output_dir``. Relative paths are read from
    ``cwd`` (the submitter's folder). Raises ConfigError naming the key (the schema's own message), and
    ModelLoadError for a model key that names nothing (``model.base``, ``model.vae``, ``model.adapters``), unless a
    job in ``store``'s queue writes it first (a note then).
    """
    from sdtune.commands.args import run_config
    from sdtune.config import load_config, resolve_config, save_config

    cwd = (cwd or Path.cwd()).resolve()
    config_file = run_config(config if config.is_absolute() else cwd / config)
    cfg = load_config(config_file, list(overrides))
    run_name = check_name(name or _default_name(config_file), "job name")
    given_output = any(o.split("=", 1)[0].strip() == "output_dir" for o in overrides)
    held = queue_holders(store)
    why = None
    if not given_output:
        cfg.output_dir, why = free_folder(workspace / "runs", run_name, held)
    cfg = resolve_config(cfg, cwd)
    run_dir = Path(cfg.output_dir)
    if given_output and (job := holder_of(run_dir, held)) is not None:
        raise SdtuneError(held_refusal("output_dir", run_dir, job))
    notes = _preflight(cfg) + model_notes(cfg, store, cwd)
    fixed = workspace / "jobs" / "configs" / f"{run_dir.name}-{uuid.uuid4().hex[:8]}.yaml"
    fixed.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, fixed)
    argv = [*COMMANDS["train"], str(fixed), "--resume", "latest"]
    sub = Submission("train", run_dir.name, argv, run_dir=run_dir, cwd=cwd, notes=notes, files=[fixed])
    if not given_output:
        sub.folder, sub.wanted = run_dir, run_name

        def move(new: Path) -> list[str]:  # the same config, another run folder
            cfg.output_dir = new
            save_config(cfg, fixed)
            return argv

        sub.move = move
        sub._moved(why, run_dir)
    return sub


def _preflight(cfg) -> list[str]:
    """What `sdtune train` would refuse in its first second, checked at submit rather than when the job starts
    (overnight): class images made for another model, prompt or resolution are refused (ConfigError, the same line
    train prints). A data folder that does not exist yet, or holds no image yet, is a note, not a refusal: an
    earlier job (a caption job) may make or fill it before this one starts."""
    from sdtune.data.class_images import check_for_run, class_image_jobs
    from sdtune.output_folders import data_folders

    check_for_run(cfg)
    generated = {folder for folder, _, _ in class_image_jobs(cfg.data)}  # made (or filled) when missing
    notes = []
    for key, folder in data_folders(cfg):
        if folder in generated:
            continue
        if not folder.exists():
            notes.append(f"{key} {folder} does not exist (yet): the job fails unless it is there when the job starts")
        elif folder.is_dir() and not _has_images(folder):
            notes.append(f"{key} {folder} has no images (yet): the job fails unless they are there when the job "
                         "starts")
    return notes


def _has_images(folder: Path) -> bool:
    """Whether ``folder`` holds an image as training reads folders (recursively, hidden ones skipped): one look
    at its top level finds one in a usual dataset; only a folder without one there is walked through."""
    import os

    from sdtune.data.folders import list_images
    from sdtune.data.images import IMAGE_SUFFIXES

    try:
        with os.scandir(folder) as entries:
            if any(not e.name.startswith(".") and Path(e.name).suffix.lower() in IMAGE_SUFFIXES and e.is_file()
                   for e in entries):
                return True
        return bool(list_images(folder))
    except (OSError, SdtuneError):
        return True  # unreadable: training says why; no note on a guess


def model_notes(cfg: Any, store: Any = None, cwd: Path | None = None) -> list[str]:
    """Every model ``cfg`` names, checked as ``sdtune train`` checks them in its first second
    (:func:`sdtune.models.sources.check_model_sources`); a local path (relative ones from ``cwd``) that is not there
    yet but lies in what a job queued in ``store`` writes (a concept run's ``model/``, say) is a note instead.
    Raises ModelLoadError naming the key."""
    from sdtune.jobs.command_checks import check_model_keys, made_by_queue

    notes: list[str] = []
    check_model_keys(cfg, cwd or Path.cwd(), made_by_queue(store) if store is not None else (lambda _: False), notes)
    return notes


def _default_name(config_file: Path) -> str:
    stem = config_file.parent.name if config_file.name == "config.yaml" else config_file.stem
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem).strip("-.") or "run"
    return cleaned[:64]


def command_submission(kind: str, args: list[str], *, name: str | None = None, cwd: Path | None = None,
                       run_dir: Path | None = None, store: Any = None) -> Submission:
    """A ``run`` / ``personalize`` / ``caption`` / ``eval`` / ``pick`` job: that command with ``args``, checked now
    as the command would check it in its first second (:mod:`sdtune.jobs.command_checks`; raises SdtuneError, one
    line). ``store``: the queue, whose jobs may make a missing input first (then a note, not a refusal)."""
    from sdtune.jobs.command_checks import check_command, made_by_queue

    if kind not in COMMANDS:
        raise SdtuneError(f"unknown job kind {kind!r}; one of {', '.join(COMMANDS)}")
    if kind == "train":
        raise SdtuneError("a train job takes a config: `sdtune jobs submit CONFIG key=value...`")
    if not args:
        raise SdtuneError(f"a {kind} job needs the arguments of `sdtune {' '.join(COMMANDS[kind])}` "
                          f"(see `sdtune {' '.join(COMMANDS[kind])} --help`)")
    cwd = (cwd or Path.cwd()).resolve()
    notes = check_command(kind, list(args), cwd, made_by_queue(store) if store is not None else lambda _: False)
    label = name or Path(args[0]).stem or kind
    label = "".join(c if c.isalnum() or c in "._-" else "-" for c in label)[:64] or kind
    return Submission(kind, label, [*COMMANDS[kind], *args], run_dir=run_dir, cwd=cwd, notes=notes)


def next_attempt(job: Job) -> str:
    """What the next attempt of ``job`` does, as `sdtune jobs retry` says it: a train job resumes from the newest
    checkpoint in its run folder (``--resume latest``) or, with none, starts from the beginning; the other kinds
    run their command again, which continues what the earlier attempts wrote."""
    from sdtune.jobs.command_checks import CHECKS
    from sdtune.run_folder import CHECKPOINTS_DIR, list_checkpoints

    n = job.attempts + 1
    if job.kind == "train" and job.run_dir:
        found = list_checkpoints(Path(job.run_dir) / CHECKPOINTS_DIR)
        if found:
            return f"attempt {n} resumes from checkpoint {found[-1].name}"
        if job.attempts == 0:
            return "it has not run yet: attempt 1 starts it from the beginning"
        earlier = "attempt 1" if job.attempts == 1 else f"attempts 1-{job.attempts}"
        return f"attempt {n} starts from the beginning ({earlier} saved no checkpoint)"
    if job.attempts == 0:
        return "it has not run yet: attempt 1 is its first run"
    command = f"`sdtune {' '.join(COMMANDS.get(job.kind, [job.kind]))}`"
    keeps = ", which continues from what earlier attempts wrote" if job.kind in CHECKS else ""
    return f"attempt {n} runs {command} again{keeps}"
