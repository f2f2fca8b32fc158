"""``sdtune personalize``: one LoRA and one new token per person (pivotal tuning, by default), all on the same concept
model, each person a task on Ray.

Scale comes from an engine, not from a scheduler of ours (:mod:`sdtune.engine`): every person is one unit of
work, ``sdtune train OUT/<name>/config.yaml`` in a child process, scheduled as a Ray task that starts as soon as a
slot (``--gpus-per-person``, ``--cpus-per-person``) frees up, on this machine's embedded Ray or on a cluster
(``--address`` / ``RAY_ADDRESS``). A person whose process or worker dies is retried (``--retries``) and resumes
from its newest checkpoint, exactly; a person with bad photos fails alone and the others go on.

Everything that can be known before training is checked first, one line each: the CSV (names, photo folders),
each token against the concept's tokenizer, each person's photos, the cluster address. Then the concept LoRA is
fused once and each class's prior images are drawn once (shared by the people of that class).

Reruns continue: a finished person is skipped, an interrupted one resumes from its latest checkpoint, a failed one
is tried again. Ctrl-C or SIGTERM stops every person at a checkpoint and exits 130.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtune.config import RunConfig, apply_overrides, config_from_dict, read_yaml, resolve_config
from sdtune.errors import ConfigError, DamagedFileError, DataError, SdtuneError
from sdtune.models.lora import LORA_WEIGHTS
from sdtune.recipes.people_on_engine import Judge, Scale, one_line, read_pick, run_people
from sdtune.recipes.runs import ConceptRun, concept_run, run_state, saved_config_changes, write_stack_profile
from sdtune.recipes.subjects import (
    Subject,
    SubjectOutcome,
    check_tokens,
    read_subjects,
    shared_tokens,
    write_summary,
)
from sdtune.run_folder import read_metrics, read_run_config
from sdtune.words import counted

if TYPE_CHECKING:
    from sdtune.engine.starting import EngineStart

DEFAULT_INSTANCE_PROMPT = "a photo of {token} {class}"
DEFAULT_CLASS_PROMPT = "a photo of a {class}"
# Without --config every subject is trained as the person stage of configs/two-stage.yaml trains one: pivotal
# tuning in sequence, the one person method of sdtune (docs/two-stage.md, "One person method"): the subject's token,
# new to the tokenizer, alone for the first half of the steps, then a LoRA around it (``lora_start``). Output
# preservation is added by :func:`subject_config`, as for any template that chooses no way to keep the class.
DEFAULT_TEMPLATE: dict[str, Any] = {
    "train": {"lora": {"rank": 16}, "learning_rate": 1e-4, "max_steps": 1600,
              "textual_inversion": {"token": "{token}", "num_vectors": 2, "learning_rate": 2e-3,
                                    "lora_start": 0.5, "ti_fraction": 0.5}}}


@dataclass
class PersonalizeResult:
    out_dir: Path
    summary: list[SubjectOutcome] = field(default_factory=list)  # every subject, in the CSV's order
    interrupted: bool = False

    def exit_code(self, strict: bool = False) -> int:
        """130: stopped (rerun to resume); 3: some subjects failed and ``strict``; else 0.

        Failed subjects do not fail the run by default: they are reported in the summary (a batch of hundreds of
        people should not read as crashed because one had bad photos).
        """
        if self.interrupted or any(o.status in ("interrupted", "pending") for o in self.summary):
            return 130
        return 3 if strict and any(o.status != "finished" for o in self.summary) else 0


def load_template(path: Path | None, stage: str = "person") -> dict[str, Any]:
    """Run config keys every subject starts from: a run config YAML, or one stage of a recipe YAML."""
    return template_stage(path, stage)[0]


def template_stage(path: Path | None, stage: str = "person") -> tuple[dict[str, Any], Any]:
    """``(run config keys, the recipe's Stage or None)`` of a template: a run config YAML or a recipe's stage (whose
    own fields, e.g. ``concept_prior``, personalize takes over too); no path: :data:`DEFAULT_TEMPLATE`."""
    if path is None:
        return copy.deepcopy(DEFAULT_TEMPLATE), None
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
    """One subject's run config on the concept's full model: a LoRA, with the subject's own new token beside it
    when the template learns one (``train.textual_inversion``: pivotal tuning, the default template's method).

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
    model["base"] = str(concept_model_dir(concept, out_dir))
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
    if isinstance(train.get("textual_inversion"), dict):  # pivotal tuning: the subject's token is the one learned
        train["textual_inversion"] = {**train["textual_inversion"], "token": subject.token}
    data = apply_overrides(data, list(overrides or []))
    if data["data"].get("with_prior_preservation") and not data["data"].get("class_dir"):
        data["data"]["class_dir"] = str(out_dir / "class-images" / _slug(subject.class_name))
    validation = data.get("validation") or {}
    if validation.get("prompts"):
        validation["prompts"] = [subject.fill(p) for p in validation["prompts"]]
    return resolve_config(config_from_dict(data, source=f"(subject {subject.name})"))



def concept_model_dir(concept: Path, out_dir: Path) -> Path:
    """The full model every person trains on: the concept run's own ``model/`` (a full fine-tune, or
    ``save.full_model``), else ``OUT/concept-model/``, its LoRA fused by :func:`fuse_concept`. Never written into
    the concept's run folder: personalize only reads that run (it may be another user's, read-only, or in use)."""
    own = concept / "model"
    return own if (own / "model_index.json").is_file() else out_dir / "concept-model"


def fuse_concept(concept: Path, out_dir: Path, echo: Callable[[str], None] = print) -> ConceptRun:
    """The concept's full model (:func:`concept_model_dir`), fused from its LoRA once when it has none yet."""
    model = concept_model_dir(concept, out_dir)
    if not (model / "model_index.json").is_file() and (concept / "lora" / LORA_WEIGHTS).is_file():
        from sdtune.config import load_config
        from sdtune.training.outputs import save_fused_model

        echo(f"fusing the concept LoRA into its base: {model}")
        try:
            save_fused_model(concept, load_config(concept / "config.yaml"), model)
        except DamagedFileError as exc:  # names the file and what to do; the context is which step failed
            raise SdtuneError(f"cannot fuse the concept's LoRA into {model}: {exc}") from None
        except (OSError, ValueError) as exc:  # a full disk, an unreadable file: one line, no traceback
            raise SdtuneError(f"cannot fuse the concept's LoRA {concept / 'lora' / LORA_WEIGHTS} into {model}: "
                              f"{one_line(exc)}; restore or retrain the concept run, or free space there") from None
    return concept_run(concept, model)  # a clear error now if it still has no model


def tokenizer_of(concept: Path, out_dir: Path) -> tuple[str, str | None]:
    """``(model, revision)`` whose tokenizer the people train with, known before the concept is fused: its full
    model when there is one already, else the concept's base (fusing a LoRA leaves the base's tokenizer as it is:
    :func:`~sdtune.training.outputs.save_fused_model` loads the base and changes only weights)."""
    model = concept_model_dir(concept, out_dir)
    if (model / "model_index.json").is_file():
        return str(model), None
    section = read_run_config(concept).get("model") or {}
    return str(section.get("base") or "tiny"), section.get("revision")


def prepare_class_images(configs: list[RunConfig], echo: Callable[[str], None] = print) -> None:
    """Generate each class's prior images once, here, before people start (two people filling one folder would
    race); as ``sdtune train`` would make them: same base, dtype, revision."""
    import torch

    from sdtune.data.class_images import class_image_jobs, generate_for_run

    device = "cuda" if torch.cuda.is_available() else "cpu"
    wanted: dict[Path, tuple[RunConfig, str | list[str], int]] = {}
    for cfg in configs:
        for folder, prompts, count in class_image_jobs(cfg.data):
            if folder not in wanted or count > wanted[folder][2]:
                wanted[folder] = (cfg, prompts, count)
    for folder, (cfg, prompts, count) in wanted.items():
        made = generate_for_run(cfg, device, [(folder, prompts, count)])
        if made:
            label = prompts if isinstance(prompts, str) else f"{counted(len(prompts), 'prompt')} of the concept"
            echo(f"class images: {made} new in {folder} ({label})")


def _check_out_folder(out_dir: Path, subjects: list[Subject], configs: list[RunConfig]) -> None:
    """OUT: new, empty, an earlier personalize folder (summary.csv), or only subject folders and class images;
    every subject's folder a run folder (or new) that is not its own photos folder."""
    from sdtune.output_folders import check_group_folder, check_run_output

    own = {s.name for s in subjects} | {"class-images", "concept-model", "summary.md", "personalize.log"}
    check_group_folder(out_dir, own, configs, "personalize output folder", "summary.csv", "--out",
                       "sdtune personalize", "one run folder per subject")
    for cfg in configs:
        check_run_output(cfg)


def _before_training(subject: Subject, cfg: RunConfig) -> SubjectOutcome | None:
    """A person that needs no training (finished earlier) or cannot train (another config, bad photos): its
    outcome, saved; None when it should train. Needs no concept model: it runs before the engine starts."""
    from sdtune.data.check_before_train import check_training_data

    run_dir = Path(cfg.output_dir)
    state = run_state(run_dir)
    previous = SubjectOutcome.load(run_dir, subject.name)
    if state != "new":
        changed = saved_config_changes(run_dir, cfg)
        if changed:
            outcome = SubjectOutcome(subject.name, "failed", note=f"trained earlier with another config (changed: "
                                     f"{', '.join(changed[:4])}); delete {run_dir} to train it again")
            outcome.save(run_dir)
            return outcome
    if state == "finished":
        metrics = read_metrics(run_dir) or {}
        outcome = SubjectOutcome(subject.name, "finished", metrics.get("steps"), metrics.get("final_loss"),
                                 previous.seconds if previous.status == "finished" else metrics.get("seconds"),
                                 str(run_dir / "lora" / LORA_WEIGHTS), previous.attempts, previous.node,
                                 previous.device, "finished earlier: skipped", previous.extra)
        outcome.save(run_dir)
        return outcome
    try:
        check_training_data(cfg)
    except DataError as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        outcome = SubjectOutcome(subject.name, "failed", note=one_line(exc))
        outcome.save(run_dir)
        return outcome
    return None


def _start_engine(scale: Scale, echo: Callable[[str], None]) -> EngineStart:
    from sdtune.engine.starting import EngineStart

    address = scale.address or os.environ.get("RAY_ADDRESS")
    echo(f"Ray: starting {'on the cluster ' + address if address else 'on this machine'}, in the background")
    return EngineStart(scale.address, num_gpus=scale.num_gpus, num_cpus=scale.num_cpus)


def personalize(subjects_csv: Path, concept: Path, out_dir: Path, *, template: Path | None = None,
                stage: str = "person", overrides: list[str] | None = None, instance_prompt: str | None = None,
                class_prompt: str | None = None, concept_prior: int | None = None, scale: Scale | None = None,
                judge: Judge | None = None, echo: Callable[[str], None] = print,
                live: bool | None = None) -> PersonalizeResult:
    """Train every subject's LoRA on the concept model, as Ray tasks; see the module doc.

    ``concept_prior``: class images of the concept's own prompts kept in every subject's prior (default: the
    template stage's ``concept_prior``; 0 turns it off). ``judge``: also judge each finished person with
    ``sdtune pick`` (``--prompts``). ``live``: draw the live table (default: on a terminal).
    """
    from sdtune.stopping import STOP

    scale = scale or Scale()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SdtuneError("sdtune personalize schedules people itself (on Ray): run it once, not under torchrun or "
                          "accelerate launch; --address runs it on a Ray cluster (docs/scale.md)")
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
    if scale.address or os.environ.get("RAY_ADDRESS"):
        from sdtune.engine.ray_engine import check_address

        check_address(scale.address or os.environ["RAY_ADDRESS"])  # before the concept is fused
    check_tokens(subjects, configs, *tokenizer_of(concept, out_dir))
    for note in shared_tokens(subjects):
        echo(note)
    out_dir.mkdir(parents=True, exist_ok=True)
    ready = {}
    outcomes: dict[str, SubjectOutcome] = {}
    for subject, cfg in zip(subjects, configs, strict=True):
        done = _before_training(subject, cfg)
        if done is None:
            ready[subject.name] = (subject, cfg)
        else:
            outcomes[subject.name] = done
            if done.status == "failed":
                echo(f"{subject.name}: not trained: {done.note}")
    unjudged = {}
    if judge is not None:  # finished earlier, never judged (a judged one keeps its numbers: RUN/picked/pick.json)
        for subject, cfg in zip(subjects, configs, strict=True):
            outcome = outcomes.get(subject.name)
            if outcome is not None and outcome.status == "finished":
                outcome.extra.update(read_pick(Path(cfg.output_dir)))
                if "picked_step" not in outcome.extra:
                    unjudged[subject.name] = (subject, cfg, outcome)
    # Every check that can refuse the input has passed: the engine starts now, in the background, and boots
    # while the concept model and the class images are prepared (engine.starting); nothing to run, no engine.
    start = _start_engine(scale, echo) if (ready or unjudged) and not STOP.requested else None
    result = PersonalizeResult(out_dir)
    try:
        info = fuse_concept(concept, out_dir, echo)
        for subject, cfg in zip(subjects, configs, strict=True):  # finished earlier: its stack on this concept
            if subject.name in outcomes and outcomes[subject.name].status == "finished":
                write_stack_profile(Path(cfg.output_dir), info, own_name=subject.name)
        if ready and not STOP.requested:
            prepare_class_images([cfg for _, cfg in ready.values()], echo)
        if start is not None and not STOP.requested:
            prepared = time.time()
            engine = start.engine()
            assert start.up is not None
            hidden = min(start.up, prepared) - start.requested
            echo(f"Ray: up in {start.up - start.requested:.1f} s, {hidden:.1f} s of it while preparing")
            if not STOP.requested:
                outcomes.update(run_people(ready, info, out_dir, scale, echo, live, judge, unjudged, engine=engine))
    finally:
        if start is not None:
            start.close()  # Ray ends whatever happened (a failed preparation, Ctrl-C, SIGTERM)
    for name, (_, cfg) in ready.items():
        if name not in outcomes:  # stopped before its task was submitted
            outcomes[name] = SubjectOutcome(name, "pending", note="not started: stopped")
            outcomes[name].save(Path(cfg.output_dir))
    result.interrupted = STOP.requested
    result.summary = [outcomes[s.name] for s in subjects]
    csv_path, md_path = write_summary(out_dir, result.summary)
    echo(md_path.read_text(encoding="utf-8"))
    echo(f"summary: {csv_path}")
    return result
