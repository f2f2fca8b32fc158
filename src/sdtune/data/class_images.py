"""Prior preservation needs class images ("a photo of a person"): generate the missing ones with the base model.

Images are named ``class-00000.png`` ... and written atomically, one per seed, so a rerun reuses what exists
and an interrupted generation resumes where it stopped (Ctrl-C / SIGTERM stop after the batch being drawn).

Generated images carry their provenance: ``class_images.json`` in the folder (what they were made for: base
model, revision, variant, prompt, resolution; how: steps, dtype, seed of each image, the sampler and the
base's prediction type) and the same in each PNG's text. A folder whose generated images were made for another
model, prompt or resolution is refused before anything loads: they would teach the run another model's prior
(SD 1.5 "persons" for SD 2, or persons for a run about stars). Images without a record (your own photos) are
used as they are.

A class subset may also list several prompts (``class_prompts``): image ``i`` is drawn for prompt ``i mod len``
with seed ``i``, and ``metadata.jsonl`` captions each image with its prompt, so the folder is an ordinary
captioned dataset. The two-stage flow uses it to keep the concept through the person stage: the concept
stage's own prompts, drawn by the concept model, join the person's prior (``recipes.runs.concept_prior``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sdtune.config import DataConfig, RunConfig
from sdtune.data.images import is_image_file
from sdtune.errors import ConfigError, Interrupted
from sdtune.words import counted, plural

MANIFEST = "class_images.json"
SEEDS = "image class-N.png is drawn with seed N"


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else 0


def class_image_name(index: int) -> str:
    return f"class-{index:05d}.png"


def _write_captions(folder: Path, prompts: Sequence[str]) -> None:
    """``metadata.jsonl`` for every generated image present (its prompt), written atomically."""
    from sdtune.atomic import atomic_write_text

    rows = []
    for path in sorted(folder.glob("class-*.png")):
        index = int(path.stem.split("-")[1])
        rows.append(json.dumps({"file_name": path.name, "text": prompts[index % len(prompts)]}))
    atomic_write_text(folder / "metadata.jsonl", "\n".join(rows) + "\n")


def class_identity(prompt: str | Sequence[str], model_ref: str, *, resolution: int, revision: str | None = None,
                   variant: str | None = None) -> dict[str, Any]:
    """What decides what class images depict: a folder's images must all share it (a local base by its path)."""
    local = Path(model_ref).expanduser()
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    return {"base": str(local.resolve()) if local.exists() else str(model_ref), "revision": revision,
            "variant": variant, "prompts": prompts, "resolution": resolution}


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("made_for"), dict) else None


def _describe(identity: dict[str, Any]) -> str:
    base = identity.get("base")
    if identity.get("revision"):
        base = f"{base}@{identity['revision']}"
    if identity.get("variant"):
        base = f"{base} ({identity['variant']} weights)"
    prompts = " / ".join(repr(p) for p in identity.get("prompts") or [])
    return f"{prompts} by {base} at {identity.get('resolution')} px"


def check_class_folder(folder: Path, identity: dict[str, Any]) -> None:
    """Raise ConfigError when ``folder`` holds generated images made for another identity (see the module doc)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return
    made = [name for name in manifest.get("images", {}) if (folder / name).is_file()]
    old = manifest["made_for"]
    if not made or all(old.get(key) == value for key, value in identity.items()):
        return
    raise ConfigError(f"{folder} holds {counted(len(made), 'class image')} made from {_describe(old)}, but this run "
                      f"wants {_describe(identity)}: {plural(len(made), 'it', 'they')} would teach it another prior. "
                      "Set data.class_dir to a folder of its own (one per model, prompt and resolution), or delete "
                      f"{folder} to make {plural(len(made), 'it', 'them')} again")


def _write_manifest(folder: Path, identity: dict[str, Any], images: dict[str, Any], how: dict[str, Any]) -> None:
    from sdtune.atomic import atomic_write_json

    old = read_manifest(folder)
    kept = {name: entry for name, entry in (old or {}).get("images", {}).items() if (folder / name).is_file()}
    atomic_write_json(folder / MANIFEST, {"made_by": "sdtune", "made_for": identity, **how, "seeds": SEEDS,
                                          "images": {**kept, **images}})


def generate_class_images(folder: Path, prompt: str | Sequence[str], wanted: int, model_ref: str, *,
                          resolution: int, steps: int = 30, allow_pickle: bool = False, batch_size: int = 4,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          revision: str | None = None, variant: str | None = None,
                          adapters: Sequence[tuple[Path, float, str]] = ()) -> int:
    """Fill ``folder`` up to ``wanted`` images; returns how many were generated.

    ``prompt``: one prompt (the folder then needs no captions: the run gives its subset that prompt), or a list
    (image ``i`` gets prompt ``i mod len`` and the folder a ``metadata.jsonl`` of them). ``dtype`` is the
    precision the base model runs in (see :func:`generate_for_run`); ``revision``/``variant`` pick the same base
    weights the run trains on; ``adapters`` ``(file, weight, name)`` are LoRAs it trains on unfused (part of
    what the images were made for). Raises ConfigError for a folder made for something else
    (:func:`check_class_folder`) and :class:`~sdtune.errors.Interrupted` when Ctrl-C / SIGTERM stopped it after
    a batch (what was made is kept, with its record).
    """
    from PIL.PngImagePlugin import PngInfo

    from sdtune.models.loading import load_pipeline
    from sdtune.models.safetensors_files import reading_safetensors
    from sdtune.stopping import QUIT_NOW, stop_scope

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    captioned = not isinstance(prompt, str)
    if not prompts:
        raise ValueError("no prompts to generate class images from")
    identity = class_identity(prompt, model_ref, resolution=resolution, revision=revision, variant=variant)
    if adapters:
        identity["adapters"] = [[str(Path(file).resolve()), weight] for file, weight, _ in adapters]
    check_class_folder(folder, identity)
    if read_manifest(folder) is None and any(folder.glob("class-*.png")):
        print(f"note: {folder} has class images with no record of what made them (your own, or an older sdtune): "
              "used as they are; delete them if another model or prompt made them")
    missing = [i for i in range(wanted) if not (folder / class_image_name(i)).exists()]
    have = count_images(folder)
    missing = missing[: max(0, wanted - have)]
    if not missing:
        if captioned and not (folder / "metadata.jsonl").exists():
            _write_captions(folder, prompts)
        return 0

    def made() -> str:
        return f"{count_images(folder)} of {counted(wanted, 'class image')} made and kept in {folder}"

    with stop_scope() as stop, stop.during("finishing the class images being drawn now (they are kept)",
                                            lambda: f"quit: {made()}; run the same command again to continue",
                                            QUIT_NOW):
        pipe = load_pipeline(model_ref, allow_pickle=allow_pickle, revision=revision, variant=variant,
                             torch_dtype=dtype).to(device)
        for file, _, name in adapters:
            with reading_safetensors(file):  # a damaged file: one line naming it
                pipe.load_lora_weights(str(Path(file).parent), weight_name=Path(file).name, adapter_name=name)
        if adapters:
            pipe.set_adapters([name for _, _, name in adapters], [weight for _, weight, _ in adapters])
        pipe.set_progress_bar_config(disable=True)
        folder.mkdir(parents=True, exist_ok=True)  # once the model loaded: a failed load leaves no empty folder
        how = {"steps": steps, "dtype": str(dtype).replace("torch.", ""), "sampler": type(pipe.scheduler).__name__,
               "prediction_type": pipe.scheduler.config.get("prediction_type")}
        label = prompts[0] if len(prompts) == 1 else counted(len(prompts), 'prompt')
        bar = tqdm(total=len(missing), desc=f"class images ({label})", unit="img")
        for start in range(0, len(missing), batch_size):
            if stop.requested:  # checked before each batch and after the last: a stop is never lost
                break
            chunk = missing[start : start + batch_size]
            generators = [torch.Generator().manual_seed(i) for i in chunk]
            images = pipe([prompts[i % len(prompts)] for i in chunk], num_inference_steps=steps,
                          height=resolution, width=resolution, generator=generators).images
            records = {}
            for index, image in zip(chunk, images, strict=True):
                target = folder / class_image_name(index)
                tmp = folder / f".{target.name}.tmp"
                info = PngInfo()
                info.add_text("sdtune", json.dumps({**identity, **how, "seed": index}))
                image.save(tmp, format="PNG", pnginfo=info)
                tmp.replace(target)
                records[target.name] = {"seed": index, "steps": steps, "dtype": how["dtype"]}
            _write_manifest(folder, identity, records, how)
            if captioned:  # after every batch: an interrupted folder is still a consistent dataset
                _write_captions(folder, prompts)
            bar.update(len(chunk))
        bar.close()
        if stop.requested:
            raise Interrupted(f"stopped while making class images: {made()}; run the same command again to continue")
    del pipe
    return len(missing)


def class_image_jobs(data: DataConfig) -> list[tuple[Path, str | list[str], int]]:
    """Every class folder a data section needs filled: (folder, prompt or prompts, images wanted)."""
    jobs: list[tuple[Path, str | list[str], int]] = []
    if data.with_prior_preservation:
        if data.class_dir is None or data.class_prompt is None:
            raise ConfigError("data.with_prior_preservation needs data.class_dir and data.class_prompt")
        jobs.append((Path(data.class_dir), data.class_prompt, data.num_class_images))
    for subset in data.subsets:
        if subset.role == "class" and subset.class_prompts:
            jobs.append((Path(subset.path), list(subset.class_prompts), int(subset.num_images or 0)))
    return jobs


def check_for_run(cfg: RunConfig) -> None:
    """Refuse a run's class folders made for something else, or short of images and unwritable (the missing ones
    could not be saved), in a second, before any model loads."""
    from sdtune.writable import check_writable

    data = cfg.data
    if data.with_prior_preservation and (data.class_dir is None or data.class_prompt is None):
        return  # the config check reports it
    for folder, prompts, wanted in class_image_jobs(data):
        check_class_folder(folder, class_identity(prompts, cfg.model.base, resolution=data.resolution,
                                                  revision=cfg.model.revision, variant=cfg.model.variant))
        if count_images(folder) < wanted:
            key = "data.class_dir" if data.class_dir is not None and Path(data.class_dir) == folder else next(
                (f"data.subsets.{i}.path" for i, s in enumerate(data.subsets) if Path(s.path) == folder),
                "data.class_dir")
            check_writable(folder, key, f"the missing class images are generated there; choose a writable folder "
                           f"with {key}=... or fix its permissions")


def generate_for_run(cfg: RunConfig, device: str | torch.device,
                     jobs: list[tuple[Path, str | list[str], int]] | None = None) -> int:
    """A run's missing class images (``jobs``: default all of :func:`class_image_jobs`), from its base model
    (revision, variant) in the run's compute dtype.

    The base runs in the dtype training keeps it in (``train.mixed_precision``: bf16/fp16 halve the memory and
    time on a GPU, as users of the diffusers DreamBooth script expect); with ``no`` it runs in fp32. The base's own
    scheduler samples them: class images show the base model's prior, whatever objective the run trains.
    Every caller (``sdtune train``, ``sdtune personalize``) goes through here so they make the same images.
    """
    from sdtune.models.loading import compute_dtype
    from sdtune.models.lora import adapter_file

    frozen = [(adapter_file(a.path), a.weight, a.name) for a in cfg.model.adapters]
    made = 0
    for folder, prompts, wanted in class_image_jobs(cfg.data) if jobs is None else jobs:
        made += generate_class_images(folder, prompts, wanted, cfg.model.base, resolution=cfg.data.resolution,
                                      steps=cfg.data.class_generation_steps, allow_pickle=cfg.model.allow_pickle,
                                      device=device, dtype=compute_dtype(cfg.train.mixed_precision),
                                      revision=cfg.model.revision, variant=cfg.model.variant, adapters=frozen)
    return made
