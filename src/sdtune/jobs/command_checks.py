"""What a queued ``run`` / ``personalize`` / ``eval`` / ``pick`` / ``caption`` job would refuse in its first second,
said at submit (one line, SdtuneError / ConfigError) rather than when the worker starts it overnight.

The arguments are parsed by the command's own parser (click, as the command line would: unknown options, bad
types, missing arguments), then the files it reads are checked with the command's own readers (the subjects CSV,
the recipe and its overrides through the schema, run folders, prompt files). A path that does not exist yet but
that a job already in the queue writes (its run folder, its ``--out``, a recipe's output) is a note, not a
refusal: the earlier job makes it before this one starts. Train jobs have their own check
(:func:`sdtune.jobs.kinds.train_submission`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sdtune.errors import SdtuneError

MadeLater = Callable[[Path], bool]  # True: a job in the queue writes this path (or a folder above it)


def parse_command(names: list[str], args: list[str]) -> dict[str, Any]:
    """``sdtune NAMES... ARGS`` parsed by that command's click parser, without running it: its parameters by name.

    Raises SdtuneError with click's one line (``No such option: --promts``, ``Missing argument 'RUN'``...).
    """
    import typer

    from sdtune.commands import dataset, evaluate, personalize, pick, run

    modules = {"run": run, "personalize": personalize, "eval": evaluate, "pick": pick, "dataset": dataset}
    app = typer.Typer()
    modules[names[0]].register(app)
    command = typer.main.get_command(app)
    for name in names:  # down the groups (typer's click is its own copy: no isinstance on click's classes)
        command = getattr(command, "commands", {}).get(name, command)
    line = f"sdtune {' '.join(names)}"
    if "--help" in args:  # click would print the help here and exit
        raise SdtuneError(f"`{line}` in a job takes no --help; see `{line} --help`")
    try:
        ctx = command.make_context(line, list(args))
    except Exception as exc:  # click's usage errors: one line each (`No such option: --promts`)
        if not hasattr(exc, "format_message"):
            raise
        raise SdtuneError(f"{line}: {exc.format_message()} (see `{line} --help`)") from None
    return ctx.params


def _abs(path: Path | str | None, cwd: Path) -> Path | None:
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else cwd / path


def _input(path: Path | None, what: str, made_later: MadeLater, notes: list[str], *, folder: bool) -> bool:
    """True when ``path`` is there to check further; a missing one is refused unless a queued job makes it."""
    from sdtune.commands.args import existing_file, existing_folder

    if path is None:
        return False
    if not path.exists() and made_later(path):
        notes.append(f"{what} {path} does not exist yet: a job queued before this one writes it")
        return False
    (existing_folder if folder else existing_file)(path, what)
    return True


def _run_folder(path: Path, what: str, made_later: MadeLater, notes: list[str]) -> None:
    if _input(path, what, made_later, notes, folder=True) and not (path / "config.yaml").is_file():
        raise SdtuneError(f"{what} {path} is not a run folder (no config.yaml): pass a folder sdtune trained into")


def _files(params: dict[str, Any], cwd: Path, made_later: MadeLater, notes: list[str],
           files: Iterable[tuple[str, str]] = (), folders: Iterable[tuple[str, str]] = ()) -> None:
    for key, option in files:
        _input(_abs(params.get(key), cwd), option, made_later, notes, folder=False)
    for key, option in folders:
        _input(_abs(params.get(key), cwd), option, made_later, notes, folder=True)


def _check_run(params: dict[str, Any], cwd: Path, made_later: MadeLater, notes: list[str]) -> None:
    from sdtune.commands.args import existing_file
    from sdtune.errors import ModelLoadError
    from sdtune.recipes import load_recipe
    from sdtune.recipes.schema import stage_configs

    recipe = _abs(params["recipe"], cwd)
    existing_file(recipe, "recipe", " (a recipe YAML, e.g. configs/two-stage.yaml)")
    plans = stage_configs(load_recipe(recipe, list(params.get("overrides") or [])))  # every stage, overrides too
    stages = [_abs(cfg.output_dir, cwd).resolve() for _, cfg in plans]  # type: ignore[union-attr]
    for stage, cfg in plans:  # model.base / vae / adapters, as `sdtune run` checks them before its first stage
        try:
            check_model_keys(cfg, cwd, made_later, notes, written_by=stages)  # stage:NAME: an earlier stage's
        except ModelLoadError as exc:
            raise ModelLoadError(f"stage '{stage.name}' (set as {stage.name}.base or "
                                 f"{stage.name}.model.KEY=...): {exc}") from None


def _check_personalize(params: dict[str, Any], cwd: Path, made_later: MadeLater, notes: list[str]) -> None:
    from sdtune.commands.args import existing_file, output_folder
    from sdtune.config import parse_override
    from sdtune.recipes.personalize import subject_config, template_stage
    from sdtune.recipes.subjects import read_subjects

    subjects_csv = _abs(params["subjects"], cwd)
    existing_file(subjects_csv, "subjects CSV")
    subjects = read_subjects(subjects_csv)  # every problem of the CSV, with its line
    concept = _abs(params["concept"], cwd)
    _run_folder(concept, "--concept", made_later, notes)
    _files(params, cwd, made_later, notes, files=[("config", "--config"), ("prompts", "--prompts")],
           folders=[("reference", "--reference")])
    out = output_folder(_abs(params["out"], cwd), "--out")
    overrides = list(params.get("overrides") or [])
    if not (concept / "config.yaml").is_file():  # made by a queued job: the overrides' form only, for now
        for item in overrides:
            parse_override(item)
        return
    template, _ = template_stage(_abs(params.get("config"), cwd), params["stage"])
    for subject in subjects:  # the overrides through the schema, on each subject's config
        subject_config(subject, template, concept, out, overrides=overrides,
                       instance_prompt=params.get("instance_prompt"), class_prompt=params.get("class_prompt"))


def _check_models(models: list[str], cwd: Path, made_later: MadeLater, notes: list[str]) -> list[str]:
    """Models as `sdtune eval` reads them, relative to ``cwd``. A missing local path (it starts with a folder that
    exists here, or with ``/ . ~``) is refused, not left for eval to try as a hub id overnight."""
    from sdtune.models.presets import is_preset

    resolved = []
    for ref in models:
        path = _abs(ref, cwd)
        local = bool(ref) and (ref.startswith(("/", ".", "~")) or (cwd / Path(ref).parts[0]).is_dir())
        if path.exists() or not local or is_preset(ref):
            resolved.append(str(path) if path.exists() else ref)
        elif made_later(path):
            notes.append(f"model {path} does not exist yet: a job queued before this one writes it")
        else:
            raise SdtuneError(f"model {ref}: {path} does not exist (eval takes run folders, diffusers folders, "
                              ".safetensors files, hub ids and built-in names)")
    return resolved


def _check_eval(params: dict[str, Any], cwd: Path, made_later: MadeLater, notes: list[str]) -> None:
    from sdtune.commands.args import output_folder
    from sdtune.commands.evaluate import parse_seeds
    from sdtune.commands.generate import parse_size
    from sdtune.evaluation.runner import check_models

    check_models(_check_models(list(params["models"]), cwd, made_later, notes),
                 checkpoints=bool(params.get("checkpoints")))
    _files(params, cwd, made_later, notes, files=[("prompts_file", "--prompts"),
                                                  ("generic_prompts", "--generic-prompts")],
           folders=[("reference", "--reference")])
    output_folder(_abs(params["out"], cwd), "--out")
    parse_seeds(params["seeds"])
    parse_size(params.get("size"))


def _check_pick(params: dict[str, Any], cwd: Path, made_later: MadeLater, notes: list[str]) -> None:
    from sdtune.commands.evaluate import parse_seeds

    _run_folder(_abs(params["run"], cwd), "RUN", made_later, notes)
    _files(params, cwd, made_later, notes, files=[("prompts_file", "--prompts"),
                                                  ("generic_prompts", "--generic-prompts")],
           folders=[("reference", "--reference")])
    if params["by"] not in ("subject", "val_loss"):
        raise SdtuneError(f"--by {params['by']}: choose subject or val_loss")
    parse_seeds(params["seeds"])


def _check_caption(params: dict[str, Any], cwd: Path, made_later: MadeLater, notes: list[str]) -> None:
    from sdtune.commands.args import output_folder

    for src in params["src"]:
        _input(_abs(src, cwd), "source folder", made_later, notes, folder=True)
    output_folder(_abs(params["out"], cwd), "dataset folder")


CHECKS: dict[str, tuple[list[str], Callable[[dict[str, Any], Path, MadeLater, list[str]], None]]] = {
    "run": (["run"], _check_run),
    "personalize": (["personalize"], _check_personalize),
    "eval": (["eval"], _check_eval),
    "pick": (["pick"], _check_pick),
    "caption": (["dataset", "build"], _check_caption),
}


def check_command(kind: str, args: list[str], cwd: Path, made_later: MadeLater = lambda _: False) -> list[str]:
    """Refuse (SdtuneError, one line) what ``sdtune <kind's command> ARGS`` run from ``cwd`` would refuse at once;
    return notes (inputs that a queued job makes first). Kinds without a check (export) return no notes."""
    if kind not in CHECKS:
        return []
    names, check = CHECKS[kind]
    notes: list[str] = []
    check(parse_command(names, args), cwd, made_later, notes)
    return notes


@functools.lru_cache(maxsize=4096)
def _parsed(kind: str, args: tuple[str, ...]) -> dict[str, Any] | None:
    """:func:`parse_command` of a queued job's line, once per process (a job's line never changes; a queue is read
    on every submit, under its write lock too): None when it does not parse. Callers only read the dict."""
    try:
        return parse_command(CHECKS[kind][0], list(args))
    except SdtuneError:
        return None


def outputs_of(kind: str, args: list[str], cwd: Path) -> list[Path]:
    """The folders a queued job of ``kind`` writes (for :data:`MadeLater`); none when its line does not parse."""
    params = _parsed(kind, tuple(args)) if kind in CHECKS else {}
    if params is None:
        return []
    if kind == "run":
        from sdtune.recipes import load_recipe

        try:
            recipe = load_recipe(_abs(params["recipe"], cwd), list(params.get("overrides") or []))
        except (SdtuneError, OSError):
            return []
        return [_abs(recipe.output_dir, cwd)]
    if kind == "pick":
        return [_abs(params.get("out"), cwd) or _abs(params["run"], cwd) / "pick"]
    return [p for p in (_abs(params.get("out"), cwd),) if p is not None]


def check_model_keys(cfg: Any, cwd: Path, made_later: MadeLater, notes: list[str],
                     written_by: list[Path] | None = None) -> None:
    """The models ``cfg`` names (``model.base`` / ``vae`` / ``adapters``), checked as ``sdtune train`` checks them
    in its first second (:func:`sdtune.models.sources.check_model_sources`; raises ModelLoadError naming the key).
    Not checked: a path in ``written_by`` (an earlier recipe stage's folder); and a path not there yet inside what
    a queued job writes (``made_later``; relative paths from ``cwd``), which gets a note instead: that job may not
    write this very file (a LoRA run has no ``model/`` unless it saves the full model), so the note says what must
    hold."""
    from sdtune.models.sources import check_model_sources

    def written_first(value: str) -> bool:
        path = _abs(value, cwd).resolve()  # type: ignore[union-attr]
        if _within(path, written_by or []):
            return True
        if not path.exists() and made_later(path):
            notes.append(f"{value} does not exist yet; it lies in the output of a job queued before this one, and "
                         "this job fails unless that job has written it when this one starts")
            return True
        return False

    check_model_sources(cfg, written_first)


def _within(path: Path, folders: list[Path]) -> bool:
    return any(path == folder or folder in path.parents for folder in folders)


def made_by_queue(store: Any) -> MadeLater:
    """:data:`MadeLater` for the jobs now queued or running in ``store`` (a JobStore): their run folders and the
    folders their command lines write."""
    from sdtune.jobs.store import ACTIVE

    made: list[Path] = []
    for job in store.jobs(ACTIVE):
        if job.run_dir:
            made.append(Path(job.run_dir))
        if job.kind in CHECKS:
            made += outputs_of(job.kind, job.argv[len(CHECKS[job.kind][0]):], Path(job.cwd or Path.cwd()))
    return lambda path: _within(path, made)
