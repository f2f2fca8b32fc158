"""What ``gpu_check.py`` runs: the ready configs as jobs on real-shape presets, their synthetic data, the verdicts.

Kept apart from the orchestration so that it can be read (and tested) on its own: a job is a ready config with
only what a short check must change (model, data folders, steps, checkpoint/validation cadence, output
folder); everything else (LoRA rank and targets, learning rate and schedule, batch, accumulation, min-SNR, EMA,
gradient checkpointing, prior preservation, mixed precision) stays as the config says.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.config import apply_overrides, read_yaml
from sdtune.models.real import REAL_PRESET_FOR_BASE

# Run first, so that a run cut short by its time budget has covered each family with LoRA and with full
# fine-tuning (+ EMA, the largest memory): the rest follow in file order, the two-stage recipe's stages last.
PRIORITY = ("sd15-dreambooth-lora", "sd2-base-dreambooth-lora", "sd2-768-dreambooth-lora", "sdxl-dreambooth-lora",
            "sd15-t2i-full", "sd2-base-t2i-full", "sd2-768-t2i-full", "sdxl-dreambooth-full")
CAPTIONS = ["a photo of a person giving a thumbs up", "a red ball on a table", "a blue square, photo",
            "a woman giving a thumbs up, photo"]


@dataclass
class Job:
    name: str  # config file stem, or two-stage/<stage>
    raw: dict[str, Any]  # the config as written (a stage: its merged run config)
    base: str  # the hub id the config names (picks the preset)
    note: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # filled by adapt()
    resolution: int = 0
    mixed_precision: str = ""
    images_per_step: int = 1

    @property
    def slug(self) -> str:
        return self.name.replace("/", "--")

    @property
    def preset(self) -> str:
        if self.base not in REAL_PRESET_FOR_BASE:
            raise SystemExit(f"{self.name}: no real-shape preset for base model '{self.base}' (known: "
                             f"{', '.join(REAL_PRESET_FOR_BASE)})")
        return REAL_PRESET_FOR_BASE[self.base]

    @property
    def method(self) -> str:
        return "lora" if (self.raw.get("train") or {}).get("lora") is not None else "full"


def discover(configs_dir: Path) -> list[Job]:
    """Every ready config as a job; a recipe (two-stage.yaml) contributes one job per stage."""
    from sdtune.recipes.schema import load_recipe, stage_config

    jobs = []
    for path in sorted(configs_dir.glob("*.yaml")):
        data = read_yaml(path)
        if "stages" not in data:
            jobs.append(Job(path.stem, data, (data.get("model") or {}).get("base", "")))
            continue
        # the person stage's concept_preservation / concept_prior read the concept stage's data, which a check makes
        # up later: without them here (a note says so)
        keeps = {i for i, stage in enumerate(data["stages"]) if stage.get("concept_preservation")
                 or stage.get("concept_prior")}
        overrides = [f"{data['stages'][i]['name']}.{key}={value}" for i in keeps
                     for key, value in (("concept_preservation", "false"), ("concept_prior", "null"))]
        recipe = load_recipe(path, overrides)
        default_base = (recipe.defaults.get("model") or {}).get("base", "")
        for stage in recipe.stages:
            raw = stage_config(recipe, stage).model_dump(mode="json")
            base = (stage.config.get("model") or {}).get("base") or default_base
            note = ("on the preset, not on the concept stage's model (chaining: tests/integration/test_two_stage.py)"
                    if stage.base_stage else "")
            if any(data["stages"][i]["name"] == stage.name for i in keeps):
                note += "; without the concept stage's prompts (concept_preservation / concept_prior need its data)"
            jobs.append(Job(f"{path.stem}/{stage.name}", raw, base, note))
    first = [j for name in PRIORITY for j in jobs if j.name == name]
    return first + [j for j in jobs if j not in first]


def adapt(job: Job, args, workdir: Path, cuda: bool) -> None:
    """Fill ``job.config``: the config on its preset, synthetic data, short-run cadence, TensorBoard, ``--set``."""
    cfg = copy.deepcopy(job.raw)
    steps = args.steps
    data, train = cfg.setdefault("data", {}), cfg.setdefault("train", {})
    resolution = args.resolution or data.get("resolution") or 512
    cfg["model"] = {**(cfg.get("model") or {}), "base": job.preset}
    cfg["output_dir"] = str(workdir / "runs" / job.slug / "straight")
    data["resolution"] = resolution
    data_root = workdir / "data"
    if data.get("instance_prompt"):  # DreamBooth: a fixed prompt for the instance images
        data["instance_dir"] = str(data_root / f"instance-{resolution}")
    else:  # text-to-image: captioned images
        data["train_dir"] = str(data_root / f"captioned-{resolution}")
    if data.get("with_prior_preservation"):
        data["class_dir"] = str(data_root / f"class-{job.preset}-{resolution}")
        data["num_class_images"] = args.class_images
        if args.validation_steps:
            data["class_generation_steps"] = args.validation_steps
    mixed = train.get("mixed_precision") or "no"
    if args.mixed_precision != "config":
        mixed = args.mixed_precision
    notes = [job.note] if job.note else []
    if mixed == "fp16" and not cuda:
        mixed, notes = "no", [*notes, "fp16 needs CUDA: ran in fp32"]
    train.update(max_steps=steps, mixed_precision=mixed)
    if train.get("lr_warmup_steps"):
        train["lr_warmup_steps"] = min(int(train["lr_warmup_steps"]), steps // 4)
    cfg["checkpoint"] = {"every": steps // 2, "keep": max(2, int((cfg.get("checkpoint") or {}).get("keep", 2)))}
    validation = cfg.setdefault("validation", {})
    validation["every"] = steps
    if args.validation_steps:
        validation["steps"] = args.validation_steps
    cfg["logging"] = {**(cfg.get("logging") or {}), "trackers": ["tensorboard"]}  # the step times come from it
    apply_overrides(cfg, list(getattr(args, "set", None) or []))
    train, data = cfg["train"], cfg["data"]
    job.config, job.resolution, job.mixed_precision = cfg, data["resolution"], train["mixed_precision"]
    job.images_per_step = (int(train.get("batch_size", 1)) * int(train.get("gradient_accumulation_steps", 1))
                           * (2 if data.get("with_prior_preservation") else 1))
    job.note = "; ".join(notes)


def _image(index: int, resolution: int):
    """A distinct synthetic photo: a few coloured shapes on a gradient, a bit larger than the resolution."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1000 + index)
    size = resolution + resolution // 8
    ramp = np.linspace(0, 1, size)[None, :, None]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    pixels = (top * (1 - ramp) + bottom * ramp).repeat(size, axis=0).astype("uint8")
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=fill)
    return image


def make_data(job: Job, workdir: Path) -> None:
    """Write the synthetic image folders the job's config names (kept across jobs of the same resolution)."""
    data = job.config["data"]
    for key, count, captioned in (("train_dir", 8, True), ("instance_dir", 5, False)):
        folder = Path(data[key]) if data.get(key) else None
        if folder is None or folder.is_dir():
            continue
        folder.mkdir(parents=True)
        for i in range(count):
            _image(i + (0 if captioned else 100), job.resolution).save(folder / f"{i:02d}.png")
            if captioned:
                (folder / f"{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)], encoding="utf-8")


def resume_verdict(straight: dict, resumed: dict, half: dict, tolerance: float) -> dict[str, Any]:
    """Compare the resumed run's final trainable weights with the straight run's (see gpu_check's docstring)."""
    if straight.keys() != resumed.keys():
        missing = sorted(set(straight) ^ set(resumed))[:3]
        return {"resume": f"NO (different weights: {missing})", "resume_exact": False}
    bitwise = all((straight[k] == resumed[k]).all() for k in straight)
    diff = math.sqrt(sum(float((straight[k].double() - resumed[k].double()).pow(2).sum()) for k in straight))
    moved = math.sqrt(sum(float((straight[k].double() - half[k].double()).pow(2).sum()) for k in straight))
    ratio = diff / moved if moved > 0 else (0.0 if diff == 0 else math.inf)
    if bitwise:
        verdict = "bitwise"
    else:
        verdict = f"{'yes' if ratio <= tolerance else 'NO'} (ratio {ratio:.1e})"
    return {"resume": verdict, "resume_exact": bitwise or ratio <= tolerance, "resume_bitwise": bool(bitwise),
            "resume_ratio": ratio, "weights_moved": moved}
