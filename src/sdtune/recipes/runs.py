"""What recipes and personalization need to know about run folders: done or not, and what a concept run offers.

A run folder is what ``sdtune train`` writes (``config.yaml``, ``checkpoints/``, ``lora/``, ``model/``,
``metrics.json``). Everything here reads files only, so a rerun after a crash decides from the disk, never from
memory of what happened before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtune import typed_yaml
from sdtune.atomic import atomic_copy, atomic_write_json, atomic_write_text
from sdtune.config_resume import config_changes
from sdtune.errors import SdtuneError
from sdtune.models.lora import LORA_WEIGHTS
from sdtune.run_folder import ADAPTERS_FILE, has_checkpoints, read_run_config

STACK_DIR = "stack"  # generation profile: original base + concept LoRA + this run's LoRA, each weighted


def run_state(run_dir: Path) -> str:
    """``finished`` (metrics.json says so and no checkpoint lies beyond it: ``sdtune.run_status``), ``interrupted``
    (has a checkpoint to resume from, e.g. a finished run resumed with more steps and stopped) or ``new``."""
    from sdtune.run_status import run_progress

    if run_progress(run_dir).finished:
        return "finished"
    return "interrupted" if has_checkpoints(run_dir) else "new"


def saved_config_changes(run_dir: Path, cfg: Any) -> list[str]:
    """Keys where ``cfg`` (a RunConfig) differs from the config a run folder was trained with (none if untrained)."""
    from sdtune.config import RunConfig, dump_config

    if not (Path(run_dir) / "config.yaml").is_file():
        return []
    return config_changes(read_run_config(run_dir), typed_yaml.load(dump_config(cfg), RunConfig))


@dataclass
class ConceptRun:
    """A finished run used as the base of later training: its full model and, when it has one, its LoRA."""

    path: Path
    model_dir: Path  # full pipeline: the full fine-tune, or the base with the LoRA fused in
    lora_file: Path | None  # the trained LoRA, or the one extracted from a full fine-tune
    base: str  # the model the concept was trained from (for the adapter stack)
    model_section: dict[str, Any]  # model.* of its config (allow_pickle, revision, ...)


def concept_run(path: Path, model_dir: Path | None = None) -> ConceptRun:
    """Read a concept run folder; it needs a full model to train on: ``model_dir`` (default its own ``model/``;
    `sdtune personalize` passes the one it fused from the concept's LoRA into its own output folder)."""
    path = Path(path).expanduser().resolve()
    if not (path / "config.yaml").is_file():
        raise SdtuneError(f"{path} is not a run folder (no config.yaml); pass the concept stage's run folder")
    cfg = read_run_config(path)
    model_section = dict(cfg.get("model") or {})
    model_dir = model_dir or path / "model"
    if not (model_dir / "model_index.json").is_file():
        raise SdtuneError(f"{path} has no full model (model/): train the concept with save.full_model=true, or "
                          f"use `sdtune personalize ... --concept {path}` (it fuses the concept's LoRA itself)")
    lora = path / "lora" / LORA_WEIGHTS
    return ConceptRun(path, model_dir, lora if lora.is_file() else None,
                      str(model_section.get("base") or "tiny"), model_section)


def write_stack_profile(run_dir: Path, concept: ConceptRun, *, concept_name: str = "concept",
                        own_name: str | None = None) -> Path | None:
    """Write ``RUN/stack/``: a generation profile loading the original base + concept LoRA + this run's LoRA.

    The run itself was trained on the concept's full model (exact: the concept LoRA is fused in), and
    ``sdtune generate RUN`` loads exactly that. The profile is the adjustable view of the same stack:
    ``sdtune generate RUN/stack`` loads the concept's own base, then each adapter of ``adapters.json`` with its
    weight (edit the weights there). It is not written in the run folder itself because the run's base is the
    fused model: listing the concept LoRA there would apply the concept twice. An existing ``adapters.json`` is
    kept, so weights a user edited survive a rerun. Returns None when there is nothing to stack.
    """
    own = Path(run_dir) / "lora" / LORA_WEIGHTS
    if concept.lora_file is None or not own.is_file():
        return None
    folder = Path(run_dir) / STACK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    keys = ("base", "revision", "variant", "allow_pickle", "prediction_type")
    model = {k: v for k, v in concept.model_section.items() if k in keys}
    model["base"] = concept.base
    # The objective this run trained: its own override, else the one it inherited from the concept's model/
    # (the concept's override, or the base's own, which needs no key). The base's scheduler may say otherwise.
    own_cfg = read_run_config(run_dir) if (Path(run_dir) / "config.yaml").is_file() else {}
    own_type = (own_cfg.get("model") or {}).get("prediction_type")
    model["prediction_type"] = own_type or model.get("prediction_type")
    if model["prediction_type"] is None:
        del model["prediction_type"]
    header = ("# Generation profile written by sdtune (not a training config): the concept's base model plus the\n"
              f"# adapters in {ADAPTERS_FILE}, applied in order with their weights. Use: sdtune generate {folder}\n")
    profile: dict = {"model": model}
    token = ((own_cfg.get("train") or {}).get("textual_inversion") or {}).get("token")
    if token:  # pivotal tuning: the run's token goes with its LoRA (RUN/stack/embeddings, a copy)
        from sdtune.run_folder import EMBEDDINGS_DIR, embedding_file_name

        learned = Path(run_dir) / EMBEDDINGS_DIR / embedding_file_name(str(token))
        if learned.is_file():
            atomic_copy(learned, folder / EMBEDDINGS_DIR / learned.name)
            profile["train"] = {"textual_inversion": {"token": str(token)}}
    atomic_write_text(folder / "config.yaml", header + typed_yaml.dump(profile))
    if not (folder / ADAPTERS_FILE).is_file():
        adapters = [
            {"name": concept_name, "path": os.path.relpath(concept.lora_file, folder), "weight": 1.0},
            {"name": own_name or Path(run_dir).name, "path": os.path.relpath(own, folder), "weight": 1.0},
        ]
        atomic_write_json(folder / ADAPTERS_FILE, adapters)
    return folder


def read_stack(folder: Path) -> tuple[str, list[tuple[Path, float, str]]]:
    """``(base, [(lora file, weight, name), ...])`` of a stack profile, paths resolved."""
    folder = Path(folder)
    base = str((read_run_config(folder).get("model") or {}).get("base") or "tiny")
    entries = json.loads((folder / ADAPTERS_FILE).read_text(encoding="utf-8"))
    return base, [((folder / e["path"]).resolve(), float(e.get("weight", 1.0)), str(e.get("name", f"a{i}")))
                  for i, e in enumerate(entries)]


def prior_folder(root: Path, concept_name: str) -> Path:
    """Where a concept's prior images go: ``ROOT/class-images/<concept>-prompts`` (shared by every person)."""
    return Path(root) / "class-images" / f"{concept_name}-prompts"


def training_prompts(cfg: Any) -> list[str]:
    """Every prompt a run (``RunConfig``) trains its own images with, once each, in data order: the captions of
    its captioned folders (all alternatives) and its fixed prompts; class subsets are not its training data."""
    from sdtune.data.folders import read_folder
    from sdtune.data.subsets import subsets_from_config

    prompts: dict[str, None] = {}
    for subset in subsets_from_config(cfg.data):
        if subset.role == "class":
            continue
        if subset.prompt is not None:
            prompts[subset.prompt] = None
            continue
        if not Path(subset.path).is_dir():
            raise SdtuneError(f"{subset.path}: the concept's training data folder does not exist; its prompts "
                              "are needed to keep the concept (concept_prior, concept_preservation)")
        for record in read_folder(subset.path).records:
            prompts.update(dict.fromkeys(record.captions))
    return [p for p in prompts if p.strip()]


def concept_prior(concept_cfg: Any, folder: Path, images: int, loss_weight: float = 1.0) -> dict[str, Any]:
    """A class subset (config dict) that keeps a concept through later training: ``images`` pictures of the
    concept run's own training prompts, drawn by the model the subset's run trains on (the concept model).

    Why: prior preservation with one class prompt ("a photo of a person") keeps that prompt, not the concept; the
    concept faded to a third of its images while the person was learned (toy demo, measured). Replaying the
    concept's prompts through its own model is the class-image form of keeping it."""
    prompts = training_prompts(concept_cfg)
    if not prompts:
        raise SdtuneError(f"the concept run {concept_cfg.output_dir} has no training prompts to keep")
    return {"path": str(folder), "role": "class", "class_prompts": prompts, "num_images": images,
            "loss_weight": loss_weight}
