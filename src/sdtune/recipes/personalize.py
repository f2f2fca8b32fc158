"""``sdtune personalize``: one LoRA per person, all on the same concept model, spread over processes.

Scale comes from the launcher, not from a scheduler of ours: under ``torchrun`` / ``accelerate launch`` with N
processes, process ``r`` takes subjects ``r, r+N, r+2N, ...`` of the CSV, trains them one after another on its
own device, and process 0 writes the summary once every process is done (a barrier, then the subjects' result
files). Without a launcher one process takes them all.

Each subject trains in a child process (``python -m sdtune train OUT/<name>/config.yaml``) with the launcher's
distributed variables removed and, on GPUs, only its process's device visible. Why not in this process:
``train`` builds an ``Accelerator``, which under a launcher would join the process group and make the subjects
of different processes one data-parallel run (gradients averaged across people), and whose ``end_training``
destroys the group the final barrier needs. A child also gives every subject fresh memory and isolates
crashes: a subject that fails (bad photos, out of memory, a segfault) is reported in the summary and the
others go on. The cost, a few seconds of start-up per subject, is small next to minutes of training.

Reruns resume: a finished subject is skipped, an interrupted one resumes from its latest checkpoint, a failed
one is tried again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sdtune.config import RunConfig, apply_overrides, config_from_dict, read_yaml, resolve_config, save_config
from sdtune.errors import ConfigError, DataError, SdtuneError
from sdtune.models.lora import LORA_WEIGHTS
from sdtune.recipes.runs import ConceptRun, concept_run, run_state, saved_config_changes, write_stack_profile
from sdtune.recipes.subjects import Subject, SubjectOutcome, read_subjects, write_summary
from sdtune.run_folder import read_metrics, read_run_config

DEFAULT_INSTANCE_PROMPT = "a photo of {token} {class}"
DEFAULT_CLASS_PROMPT = "a photo of a {class}"
# A process may finish its subjects hours before the others; the final barrier must wait for them.
BARRIER_TIMEOUT = timedelta(days=7)
# What a launcher sets to make a process part of a group; a subject's training process must not see it.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
             "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE", "PMI_RANK",
             "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_SIZE")


@dataclass
class PersonalizeResult:
    out_dir: Path
    rank: int
    world: int
    mine: list[SubjectOutcome] = field(default_factory=list)  # subjects this process handled
    summary: list[SubjectOutcome] = field(default_factory=list)  # every subject (read after all processes ended)
    interrupted: bool = False

    def exit_code(self, strict: bool = False) -> int:
        """130: stopped (rerun to resume); 3: some subjects failed and ``strict``; else 0. Same on every process.

        Failed subjects do not fail the run by default: they are reported in the summary, and under torchrun a
        non-zero exit of one process makes the launcher kill the others and report the whole job as crashed.
        """
        if self.interrupted or any(o.status in ("interrupted", "pending") for o in self.summary):
            return 130
        return 3 if strict and any(o.status != "finished" for o in self.summary) else 0


def load_template(path: Path | None, stage: str = "person") -> dict[str, Any]:
    """Run config keys every subject starts from: a run config YAML, or one stage of a recipe YAML."""
    return template_stage(path, stage)[0]


def template_stage(path: Path | None, stage: str = "person") -> tuple[dict[str, Any], Any]:
    """``(run config keys, the recipe's Stage or None)`` of a template: a run config YAML or a recipe's stage (whose
    own fields, e.g. ``concept_prior``, personalize takes over too)."""
    if path is None:
        return {}, None
    data = read_yaml(Path(path))
    if "stages" not in data:
        return data, None
    from pydantic import ValidationError

    from sdtune.recipes.schema import Recipe, deep_merge

    data = read_yaml(Path(path), Recipe)  # again, each value read for the recipe key it sets
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"invalid recipe {path}:\n  " + "\n  ".join(lines)) from None
    chosen = recipe.stage(stage)
    merged = dict(recipe.defaults)
    if chosen.config_file is not None:
        merged = deep_merge(merged, read_yaml(chosen.config_file))
    return deep_merge(merged, chosen.config), chosen


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "class"


def subject_config(subject: Subject, template: dict[str, Any], concept: Path, out_dir: Path, *,
                   overrides: list[str] | None = None, instance_prompt: str | None = None,
                   class_prompt: str | None = None, concept_prior: int | None = None,
                   concept_preservation: bool | None = None) -> RunConfig:
    """A DreamBooth LoRA run config for one subject on the concept's full model.

    The template decides the training (LoRA rank, steps, learning rate, how the class and the concept are kept,
    ...); the subject decides the photos and prompts. A template that chooses neither prior preservation nor
    ``train.preservation`` gets output preservation on the class prompt and the concept's prompts (the measured
    default). With prior preservation, class images go to ``OUT/class-images/<class>/``, shared by every subject
    of that class and generated once, by the concept model, before training starts. ``concept_prior``: also
    that many images of the concept run's own prompts (``OUT/class-images/<concept>-prompts``, shared too);
    ``concept_preservation``: the concept's prompts join ``train.preservation``'s (None: on for the default).
    """
    from sdtune.recipes.schema import deep_merge

    data = deep_merge(template, {})
    data["output_dir"] = str(out_dir / subject.name)
    model = {k: v for k, v in (data.get("model") or {}).items() if k not in ("revision", "variant")}
    concept_cfg = read_run_config(concept) if (concept / "config.yaml").is_file() else {}
    model["base"] = str(concept / "model")
    model["allow_pickle"] = bool(model.get("allow_pickle") or (concept_cfg.get("model") or {}).get("allow_pickle"))
    data["model"] = model
    section = {k: v for k, v in (data.get("data") or {}).items() if k not in ("train_dir", "subsets")}
    template_prompt = section.get("instance_prompt") or ""
    section["instance_dir"] = str(subject.photos)
    section["instance_prompt"] = subject.fill(
        instance_prompt or (template_prompt if "{token}" in template_prompt else DEFAULT_INSTANCE_PROMPT))
    template_class = section.get("class_prompt") or ""
    section["class_prompt"] = subject.fill(
        class_prompt or (template_class if "{class}" in template_class else DEFAULT_CLASS_PROMPT))
    section.pop("class_dir", None)  # class images go to OUT/class-images/<class>, shared per class (below)
    train = data.setdefault("train", {})
    if "with_prior_preservation" not in section and train.get("preservation") is None:
        # the template chose neither: the measured default (docs/two-stage.md, "Keeping the concept") keeps the
        # class prompt and the concept by output preservation, with no class images to generate
        section["with_prior_preservation"] = False
        train["preservation"] = {"weight": 1.0}
        concept_preservation = True if concept_preservation is None else concept_preservation
    if "resolution" not in section and (concept_cfg.get("data") or {}).get("resolution"):
        section["resolution"] = concept_cfg["data"]["resolution"]
    data["data"] = section
    if concept_prior or concept_preservation:
        from sdtune.recipes.schema import keep_concept

        keep_concept(data, config_from_dict(concept_cfg, source=str(concept / "config.yaml")), concept.name,
                     out_dir, prior=concept_prior, preservation=concept_preservation,
                     source=f"subject {subject.name}")
    if train.get("lora") is None:
        train["lora"] = {}
    data = apply_overrides(data, list(overrides or []))
    if data["data"].get("with_prior_preservation") and not data["data"].get("class_dir"):
        data["data"]["class_dir"] = str(out_dir / "class-images" / _slug(subject.class_name))
    validation = data.get("validation") or {}
    if validation.get("prompts"):
        validation["prompts"] = [subject.fill(p) for p in validation["prompts"]]
    return resolve_config(config_from_dict(data, source=f"(subject {subject.name})"))


class Processes:
    """This process's place among the launcher's processes (accelerate's ``PartialState``; gloo, no GPU use)."""

    def __init__(self) -> None:
        self.state: Any = None
        self.rank, self.world, self.local_rank = 0, 1, 0
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=True, timeout=BARRIER_TIMEOUT)
            self.rank, self.world = self.state.process_index, self.state.num_processes
            self.local_rank = self.state.local_process_index

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def broadcast(self, value: Any) -> Any:
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def close(self) -> None:
        if self.state is not None:
            self.state.destroy_process_group()  # torchrun reports a failure otherwise


def child_env(local_rank: int, distributed: bool) -> dict[str, str]:
    """The environment of a subject's training process: no launcher variables; one device per process."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and not k.startswith("TORCHELASTIC_")}
    if distributed:
        import torch

        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [d for d in visible.split(",") if d.strip()] if visible else \
                [str(i) for i in range(torch.cuda.device_count())]
            env["CUDA_VISIBLE_DEVICES"] = ids[local_rank % len(ids)]
    return env


class StopFlag:
    """SIGINT/SIGTERM: pass the signal once to the running child (it saves a checkpoint), start no new subject.

    Children run in their own session, so a terminal's Ctrl-C reaches them only through here: a second copy of
    the signal would make the trainer stop without saving.
    """

    def __init__(self) -> None:
        self.requested = False
        self.child: subprocess.Popen | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _error_from_log(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "training failed (no log)"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return errors[-1] if errors else " / ".join(lines[-3:])


def train_subject(subject: Subject, cfg: RunConfig, procs: Processes, stop: StopFlag, concept: ConceptRun,
                  echo: Callable[[str], None] = print) -> SubjectOutcome:
    """Train (or skip, or resume) one subject in a child process; never raises for the subject's own problems."""
    from sdtune.data.check_before_train import check_training_data

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lora = str(run_dir / "lora" / LORA_WEIGHTS)
    outcome = SubjectOutcome(subject.name, "failed", process=procs.rank, output="")
    state = run_state(run_dir)
    if state != "new":
        changed = saved_config_changes(run_dir, cfg)
        if changed:
            outcome.note = (f"trained earlier with another config (changed: {', '.join(changed[:4])}); delete "
                            f"{run_dir} to train it again")
            outcome.save(run_dir)
            return outcome
    if state == "finished":
        metrics = read_metrics(run_dir) or {}
        previous = SubjectOutcome.load(run_dir, subject.name)
        outcome = SubjectOutcome(subject.name, "finished", metrics.get("steps"), metrics.get("final_loss"),
                                 previous.seconds if previous.status == "finished" else metrics.get("seconds"),
                                 lora, procs.rank, "finished earlier: skipped")
        write_stack_profile(run_dir, concept, own_name=subject.name)
        outcome.save(run_dir)
        return outcome
    try:
        check_training_data(cfg)
    except DataError as exc:
        outcome.note = re.sub(r":?\s*\n\s*", "; ", str(exc).strip())  # one line, no stray ':;'
        outcome.save(run_dir)
        echo(f"[process {procs.rank}] {subject.name}: bad training data, skipped: {outcome.note}")
        return outcome
    save_config(cfg, run_dir / "config.yaml")
    command = [sys.executable, "-m", "sdtune", "train", str(run_dir / "config.yaml")]
    if state == "interrupted":
        command += ["--resume", "latest"]
    echo(f"[process {procs.rank}] {subject.name}: {'resuming' if state == 'interrupted' else 'training'} "
         f"(log: {run_dir / 'train.log'})")
    started = time.time()
    with open(run_dir / "train.log", "a", encoding="utf-8") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        log.flush()
        stop.child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      env=child_env(procs.local_rank, procs.state is not None))
        if stop.requested:  # the signal came while the child was starting
            stop.child.send_signal(signal.SIGTERM)
        returncode = stop.child.wait()
        stop.child = None
    outcome.seconds = round(time.time() - started, 2)
    after = run_state(run_dir)
    if after == "finished":
        metrics = read_metrics(run_dir) or {}
        outcome.status, outcome.steps, outcome.final_loss = "finished", metrics.get("steps"), metrics.get("final_loss")
        outcome.output = lora
        outcome.note = "resumed from its latest checkpoint" if state == "interrupted" else ""
        write_stack_profile(run_dir, concept, own_name=subject.name)
    elif stop.requested and after == "interrupted":
        outcome.status, outcome.note = "interrupted", "stopped: rerun to resume from its latest checkpoint"
    else:
        outcome.note = f"training exited with status {returncode}: {_error_from_log(run_dir / 'train.log')}"
    outcome.save(run_dir)
    echo(f"[process {procs.rank}] {subject.name}: {outcome.status} {outcome.note}".rstrip())
    return outcome


def prepare_shared(concept: Path, configs: list[RunConfig], echo: Callable[[str], None] = print) -> None:
    """Process 0, before the split: fuse the concept LoRA if the concept has no full model yet, and generate
    each class's prior images once (two processes filling one folder would race)."""
    import torch

    from sdtune.data.class_images import class_image_jobs, generate_for_run

    if not (concept / "model" / "model_index.json").is_file() and (concept / "lora" / LORA_WEIGHTS).is_file():
        from sdtune.config import load_config
        from sdtune.training.outputs import save_fused_model

        echo(f"fusing the concept LoRA into its base: {concept / 'model'}")
        save_fused_model(concept, load_config(concept / "config.yaml"))
    concept_run(concept)  # a clear error now if it still has no model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wanted: dict[Path, tuple[RunConfig, str | list[str], int]] = {}
    for cfg in configs:
        for folder, prompts, count in class_image_jobs(cfg.data):
            if folder not in wanted or count > wanted[folder][2]:
                wanted[folder] = (cfg, prompts, count)
    for folder, (cfg, prompts, count) in wanted.items():
        # as `sdtune train` would make them: same base, dtype, revision
        made = generate_for_run(cfg, device, [(folder, prompts, count)])
        if made:
            label = prompts if isinstance(prompts, str) else f"{len(prompts)} prompts of the concept"
            echo(f"class images: {made} new in {folder} ({label})")


def _check_out_folder(out_dir: Path, subjects: list[Subject], configs: list[RunConfig]) -> None:
    """OUT: new, empty, an earlier personalize folder (summary.csv), or only subject folders and class images;
    every subject's folder a run folder (or new) that is not its own photos folder."""
    from sdtune.output_folders import check_group_folder, check_run_output

    own = {s.name for s in subjects} | {"class-images", "summary.md"}
    check_group_folder(out_dir, own, configs, "personalize output folder", "summary.csv", "--out",
                       "sdtune personalize")
    for cfg in configs:
        check_run_output(cfg)


def personalize(subjects_csv: Path, concept: Path, out_dir: Path, *, template: Path | None = None,
                stage: str = "person", overrides: list[str] | None = None, instance_prompt: str | None = None,
                class_prompt: str | None = None, concept_prior: int | None = None,
                echo: Callable[[str], None] = print) -> PersonalizeResult:
    """Train every subject's LoRA on the concept model (this process's share of them); see the module doc.

    ``concept_prior``: class images of the concept's own prompts kept in every subject's prior (default: the
    template stage's ``concept_prior``; 0 turns it off)."""
    subjects = read_subjects(Path(subjects_csv))
    concept = Path(concept).expanduser().resolve()
    if not (concept / "config.yaml").is_file():
        raise SdtuneError(f"--concept {concept} is not a run folder (no config.yaml): pass the concept stage's "
                          "run folder, e.g. runs/two-stage/concept")
    out_dir = Path(out_dir).expanduser().resolve()
    tmpl, chosen = template_stage(template, stage)
    if concept_prior is None and chosen is not None:
        concept_prior = chosen.concept_prior
    keep = chosen.concept_preservation if chosen is not None else None
    configs = [subject_config(s, tmpl, concept, out_dir, overrides=overrides, instance_prompt=instance_prompt,
                              class_prompt=class_prompt, concept_prior=concept_prior, concept_preservation=keep)
               for s in subjects]
    _check_out_folder(out_dir, subjects, configs)
    procs = Processes()
    try:
        problem = None
        if procs.rank == 0:
            try:
                prepare_shared(concept, configs, echo)
            except SdtuneError as exc:
                problem = str(exc)
        problem = procs.broadcast(problem)
        if problem:
            raise SdtuneError(problem)
        info = concept_run(concept)
        result = PersonalizeResult(out_dir, procs.rank, procs.world)
        with StopFlag() as stop:
            for index in range(procs.rank, len(subjects), procs.world):
                subject, cfg = subjects[index], configs[index]
                if stop.requested and run_state(Path(cfg.output_dir)) != "finished":
                    pending = SubjectOutcome(subject.name, "pending", process=procs.rank, note="not started: stopped")
                    pending.save(Path(cfg.output_dir))
                    result.mine.append(pending)
                    continue
                result.mine.append(train_subject(subject, cfg, procs, stop, info, echo))
            result.interrupted = stop.requested
        procs.barrier()
        result.summary = [SubjectOutcome.load(Path(cfg.output_dir), s.name) for s, cfg in zip(subjects, configs,
                                                                                                strict=True)]
        if procs.rank == 0:
            csv_path, md_path = write_summary(out_dir, result.summary)
            echo(md_path.read_text(encoding="utf-8"))
            echo(f"summary: {csv_path}")
        procs.barrier()  # nobody exits (and makes the launcher stop the others) before the summary is written
        return result
    finally:
        procs.close()
