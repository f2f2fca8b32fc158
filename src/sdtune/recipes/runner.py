"""Run a recipe: its stages in order, each in ``OUTPUT/<stage>/``, recorded in ``OUTPUT/manifest.json``.

Reruns are the resume mechanism. What to do with a stage is decided from its folder, never from memory: a
finished stage (``metrics.json`` says so) is skipped, a stage with a checkpoint resumes from the latest one
(exactly, see ``sdtune.training.loop``), anything else starts. A stage whose saved config differs from the
recipe's is refused instead of silently mixing two configs in one run folder.

After a stage trains, the runner completes what the recipe promises: a full fine-tune also gets a LoRA
extracted from its weight change (``lora/`` + ``lora/extraction.json``), and a LoRA stage trained on an
earlier stage's model gets a ``stack/`` generation profile (base + concept LoRA + its LoRA, weights adjustable).

Stages run one after another in this process, each on one accelerate setup: recipes are not launched with
several processes (a multi-GPU stage can be run alone with ``accelerate launch -m sdtune train``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.atomic import atomic_write_json
from sdtune.config import RunConfig
from sdtune.config_errors import as_written
from sdtune.errors import ConfigError, DataError, ModelLoadError, SdtuneError
from sdtune.recipes.runs import concept_run, run_state, saved_config_changes, write_stack_profile
from sdtune.recipes.schema import Recipe, Stage, stage_configs
from sdtune.run_folder import read_json, read_metrics
from sdtune.words import counted

MANIFEST = "manifest.json"


@dataclass
class StageResult:
    name: str
    status: str  # finished | skipped (finished earlier) | interrupted
    run_dir: Path
    step: int | None = None
    final_loss: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class RecipeResult:
    status: str  # finished | interrupted
    output_dir: Path
    stages: list[StageResult] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.output_dir / MANIFEST


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Manifest:
    """``OUTPUT/manifest.json``: per stage its status, run folder, base, outputs, metrics and a short history.

    It is a record for people and tools, written atomically after every change; the runner itself decides from
    the run folders, so a stale or deleted manifest never makes it skip or redo work.
    """

    def __init__(self, path: Path, recipe_path: Path | None, names: list[str]):
        old = read_json(path) or {}
        old_stages = old.get("stages") if isinstance(old.get("stages"), dict) else {}
        self.path = path
        self.data: dict[str, Any] = {
            "recipe": str(recipe_path) if recipe_path else old.get("recipe"),
            "order": names,
            "stages": {name: old_stages.get(name) or {"status": "pending", "history": []} for name in names},
        }

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"][name]

    def update(self, name: str, event: str | None = None, **fields: Any) -> None:
        record = self.stage(name)
        record.update(fields)
        if event:
            record.setdefault("history", []).append({"time": _now(), "event": event})
        self.data["updated"] = _now()
        atomic_write_json(self.path, self.data)


def _fresh_accelerate_state() -> None:
    """Forget accelerate's process-wide state so each stage builds its own Accelerator.

    accelerate keeps its state in singletons; a second ``Accelerator`` with another mixed precision would be
    refused. Only safe in a single process, which is why recipes refuse several processes.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _refuse_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SdtuneError("`sdtune run` runs its stages one after another in one process; start it without "
                          "torchrun/accelerate launch. To spread people over GPUs use `sdtune personalize`.")


def _check_unchanged(name: str, cfg: RunConfig) -> None:
    """Refuse a stage trained with another config; when every change may apply to a checkpoint (the rule table of
    ``sdtune.config_resume``, as ``sdtune train --resume`` uses it), say the command that applies them."""
    import shlex

    from sdtune import typed_yaml
    from sdtune.config import dump_config
    from sdtune.config_resume import split_changes
    from sdtune.run_folder import read_run_config

    run_dir = Path(cfg.output_dir)
    changed = saved_config_changes(run_dir, cfg)
    if not changed:
        return
    new = typed_yaml.load(dump_config(cfg), RunConfig)
    allowed, refused = split_changes(read_run_config(run_dir), new)
    shown = ", ".join(f"{key} {as_written(old)} -> {as_written(value)}"
                      for key, (old, value) in {**refused, **allowed}.items()) \
        if allowed or refused else ", ".join(changed[:6])
    if allowed and not refused:
        sets = " ".join(shlex.quote(f"{key}={_override_text(value)}") for key, (_, value) in allowed.items())
        raise ConfigError(f"stage '{name}' in {run_dir} was trained with another config (changed: {shown}). These "
                          f"changes apply to its checkpoint: `sdtune train {shlex.quote(str(run_dir))} {sets} "
                          "--resume latest` continues it with them, then run the recipe again (stages after it are "
                          "not redone: delete their folders to redo them). Or restore the recipe, or delete "
                          f"{run_dir} to train that stage from the start")
    raise ConfigError(f"stage '{name}' in {run_dir} was run with another config (changed: {shown}). Restore the "
                      f"recipe, use another output_dir, or delete {run_dir} to train that stage again")


def _override_text(value: Any) -> str:
    """A value as ``key=value`` on the command line reads it back (YAML flow for lists and mappings)."""
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)


def check_recipe_folder(output_dir: Path, plans: list[tuple[Stage, RunConfig]], recipe_path: Path | None = None
                        ) -> None:
    """The recipe's OUTPUT: new, empty, a recipe folder already (manifest.json), or holding only its stage folders,
    the recipe file and data folders the recipe itself names there (class images)."""
    from sdtune.output_folders import check_group_folder

    own = {stage.name for stage, _ in plans}
    if recipe_path is not None and Path(recipe_path).resolve().parent == Path(output_dir).resolve():
        own.add(Path(recipe_path).name)
    check_group_folder(output_dir, own, [cfg for _, cfg in plans],
                       "recipe output folder", MANIFEST, "output_dir", "sdtune run", "one run folder per stage")


def preflight(plans: list[tuple[Stage, RunConfig]]) -> dict[str, str]:
    """Before any training: every stage's state, config drift and training data (seconds, not hours, to fail)."""
    from sdtune.data.check_before_train import check_training_data
    from sdtune.models.sources import check_model_sources
    from sdtune.output_folders import check_run_output

    folders = [Path(cfg.output_dir).resolve() for _, cfg in plans]

    def made_later(value: str) -> bool:  # a model an earlier stage writes (stage:NAME): there once that stage ran
        path = Path(value).expanduser().resolve()
        return any(path == folder or folder in path.parents for folder in folders)

    states = {}
    for stage, cfg in plans:
        check_run_output(cfg)  # a stage folder that is someone's files, or the data: refused before any stage runs
        state = run_state(Path(cfg.output_dir))
        states[stage.name] = state
        if state != "new":
            _check_unchanged(stage.name, cfg)
        if state != "finished":
            try:
                check_training_data(cfg)
            except DataError as exc:  # its keys are the stage's: name the stage (its overrides are STAGE.data...)
                where = f"stage '{stage.name}' (override its keys as {stage.name}.data.KEY=...)"
                raise DataError(f"{where}: {exc}") from None
            try:  # model.base / model.vae / model.adapters: a typo in the last stage fails now, not after the first
                check_model_sources(cfg, made_later)
            except ModelLoadError as exc:
                raise ModelLoadError(f"stage '{stage.name}' (set as {stage.name}.base or "
                                     f"{stage.name}.model.KEY=...): {exc}") from None
    return states


def run_recipe(recipe: Recipe, recipe_path: Path | None = None, *,
               echo: Callable[[str], None] = print) -> RecipeResult:
    """Run (or continue) every stage of a recipe; returns at the first interrupted stage.

    Ctrl-C / SIGTERM (``sdtune.stopping``) stop the stage in training as ``sdtune train`` does; between stages
    (checks, LoRA extraction) the step in progress completes and no further stage starts.
    """
    from sdtune.stopping import QUIT_NOW, stop_scope

    _refuse_distributed()
    with stop_scope() as stop:
        stop.phase("no stage has started; stopping before one does", "quit: nothing was trained", QUIT_NOW)
        plans = stage_configs(recipe)
        output_dir = Path(plans[0][1].output_dir).parent
        check_recipe_folder(output_dir, plans, recipe_path)
        manifest = Manifest(output_dir / MANIFEST, recipe_path, [stage.name for stage, _ in plans])
        states = preflight(plans)
        result = RecipeResult("finished", output_dir)
        for index, (stage, cfg) in enumerate(plans, start=1):
            if stop.requested:
                echo(f"stopped before stage '{stage.name}' (the stages before it are complete)")
                result.status = "interrupted"
                return result
            echo(f"[{index}/{len(plans)}] stage '{stage.name}' ({cfg.method}) in {cfg.output_dir}")
            outcome = run_stage(stage, cfg, states[stage.name], manifest, echo)
            result.stages.append(outcome)
            if outcome.status == "interrupted":
                result.status = "interrupted"
                return result
            stop.phase(f"completing stage '{stage.name}'; no further stage starts",
                       f"quit: stage '{stage.name}' is trained; run the same command again to complete it and "
                       "go on", QUIT_NOW)
            complete_stage(recipe, stage, cfg, manifest, outcome, echo)
        return result


def run_stage(stage: Stage, cfg: RunConfig, state: str, manifest: Manifest,
              echo: Callable[[str], None] = print) -> StageResult:
    """Train one stage, resuming from its latest checkpoint when it has one; skip it when it is finished."""
    from sdtune.training.loop import train

    run_dir = Path(cfg.output_dir)
    if state == "finished":
        metrics = read_metrics(run_dir) or {}
        steps = metrics.get("steps")
        echo(f"  already finished ({'?' if steps is None else counted(steps, 'step')}): skipped")
        manifest.update(stage.name, "skipped: already finished", status="finished", run_dir=str(run_dir),
                        metrics=metrics, outputs=metrics.get("outputs", {}))
        return StageResult(stage.name, "skipped", run_dir, metrics.get("steps"), metrics.get("final_loss"),
                           dict(metrics.get("outputs", {})))
    manifest.update(stage.name, "resuming from the latest checkpoint" if state == "interrupted" else "started",
                    status="running", run_dir=str(run_dir), base=cfg.model.base, method=cfg.method, error=None)
    _fresh_accelerate_state()
    try:
        trained = train(cfg, resume="latest" if state == "interrupted" else None)
    except KeyboardInterrupt:
        manifest.update(stage.name, "interrupted", status="interrupted")
        raise
    except BaseException as exc:
        manifest.update(stage.name, f"failed: {type(exc).__name__}", status="failed", error=str(exc))
        raise
    finally:
        _fresh_accelerate_state()
    if trained.status != "finished":
        manifest.update(stage.name, f"interrupted at step {trained.step}", status="interrupted", step=trained.step)
        echo(f"  interrupted at step {trained.step}: run the same command again to resume")
        return StageResult(stage.name, "interrupted", run_dir, trained.step, trained.final_loss)
    metrics = read_metrics(run_dir) or {}
    manifest.update(stage.name, f"finished at step {trained.step}", status="finished", step=trained.step,
                    final_loss=trained.final_loss, outputs=dict(trained.outputs), metrics=metrics)
    return StageResult(stage.name, "finished", run_dir, trained.step, trained.final_loss, dict(trained.outputs))


def complete_stage(recipe: Recipe, stage: Stage, cfg: RunConfig, manifest: Manifest, outcome: StageResult,
                   echo: Callable[[str], None] = print) -> None:
    """Add what a finished stage still lacks: an extracted LoRA (full stages), a stack profile (LoRA on a stage)."""
    from sdtune.recipes.schema import stage_dir

    run_dir = Path(cfg.output_dir)
    if cfg.is_full and stage.extract_rank is not None:
        report = _ensure_extracted(run_dir, stage.extract_rank, stage.extract_conv, echo)
        outcome.outputs["lora"] = str(run_dir / "lora" / "pytorch_lora_weights.safetensors")
        manifest.update(stage.name, extraction={k: report.get(k) for k in
                                                ("rank", "conv", "layers", "relative_error", "max_layer_error",
                                                 "coverage")},
                        outputs=dict(manifest.stage(stage.name).get("outputs") or {}, **outcome.outputs))
    ref = stage.base_stage
    if ref is not None and cfg.is_lora:
        stack = write_stack_profile(run_dir, concept_run(stage_dir(recipe, ref)), concept_name=ref,
                                    own_name=stage.name)
        if stack is not None:
            outcome.outputs["stack"] = str(stack)
            manifest.update(stage.name, outputs=dict(manifest.stage(stage.name).get("outputs") or {},
                                                     stack=str(stack)))


def _ensure_extracted(run_dir: Path, rank: int, conv: bool, echo: Callable[[str], None]) -> dict[str, Any]:
    from sdtune.models.extract import EXTRACTION_REPORT, extract_from_run
    from sdtune.models.verify import file_checker, run_base

    existing = read_json(run_dir / "lora" / EXTRACTION_REPORT)
    if existing and existing.get("rank") == rank and bool(existing.get("conv")) == conv \
            and (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file():
        return existing
    echo(f"  extracting a rank-{rank} LoRA from the full fine-tune ...")
    check = file_checker(("diffusers",), run_base(run_dir), echo=echo)
    report = extract_from_run(run_dir, rank, conv=conv, check=check)
    echo(f"  {report.summary()}")
    return report.to_dict()
