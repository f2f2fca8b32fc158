"""What a job runs: each kind becomes one sdtune command line (the unit of work), checked before it is queued.

A job is the CLI, run later: ``train`` is ``sdtune train CONFIG --resume latest`` on a config that went through
the schema now (so a bad key is refused at submit, not at 3 a.m.), written with every path made absolute and the
run folder fixed, so every attempt of the job (first run, resume after a restart, retry) runs the same command
and continues the same run folder. The other kinds (``run``, ``personalize``, ``caption``, ``eval``, ``pick``)
are their command with the arguments given; those commands already continue where they stopped when rerun.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.errors import SdtuneError
from sdtune.jobs.workspace import check_name

# kind -> the sdtune sub-command it runs
COMMANDS: dict[str, list[str]] = {
    "train": ["train"],
    "run": ["run"],
    "personalize": ["personalize"],
    "caption": ["dataset", "build"],
    "eval": ["eval"],
    "pick": ["pick"],
    "export": ["export"],
}


@dataclass
class Submission:
    """A job ready to queue: its kind, a name, the command line (after ``sdtune``), its run folder, its cwd."""

    kind: str
    name: str
    argv: list[str]
    run_dir: Path | None = None
    cwd: Path | None = None
    notes: list[str] = field(default_factory=list)


def free_run_dir(workspace: Path, name: str) -> Path:
    """``WS/runs/<name>``, or ``<name>-2``, ``-3``... when taken: a new job never continues another job's run."""
    runs = workspace / "runs"
    for candidate in itertools.chain([name], (f"{name}-{i}" for i in itertools.count(2))):
        path = runs / candidate
        if not path.exists():
            return path
    raise AssertionError("unreachable")


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
    notes = []
    if not given_output:
        run_dir = free_run_dir(workspace, run_name)
        cfg.output_dir = run_dir
        if run_dir.name != run_name:
            notes.append(f"runs/{run_name} exists: this job trains into runs/{run_dir.name}")
    cfg = resolve_config(cfg, cwd)
    notes += _preflight(cfg)
    notes += model_notes(cfg, store, cwd)
    run_dir = Path(cfg.output_dir)
    fixed = workspace / "jobs" / "configs" / f"{run_dir.name}-{uuid.uuid4().hex[:8]}.yaml"
    fixed.parent.mkdir(parents=True, exist_ok=True)
    save_config(cfg, fixed)
    argv = [*COMMANDS["train"], str(fixed), "--resume", "latest"]
    return Submission("train", run_dir.name, argv, run_dir=run_dir, cwd=cwd, notes=notes)


def _preflight(cfg) -> list[str]:
    """What `sdtune train` would refuse in its first second, checked at submit rather than when the job starts
    (overnight): class images made for another model, prompt or resolution are refused (ConfigError, the same line
    train prints). A data folder that does not exist yet is a note, not a refusal: an earlier job (a caption job)
    may make it before this one starts."""
    from sdtune.data.class_images import check_for_run, class_image_jobs
    from sdtune.output_folders import data_folders

    check_for_run(cfg)
    generated = {folder for folder, _, _ in class_image_jobs(cfg.data)}  # made when missing
    return [f"{key} {folder} does not exist (yet): the job fails unless it is there when the job starts"
            for key, folder in data_folders(cfg) if folder not in generated and not folder.exists()]


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
