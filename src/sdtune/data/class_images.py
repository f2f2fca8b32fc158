"""Prior preservation needs class images ("a photo of a person"): generate the missing ones with the base model.

Images are named ``class-00000.png`` ... and written atomically, one per seed, so a rerun reuses what exists
and an interrupted generation resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdtune.config import RunConfig
from sdtune.data.images import is_image_file
from sdtune.errors import ConfigError


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else 0


def generate_class_images(folder: Path, prompt: str, wanted: int, model_ref: str, *, resolution: int,
                          steps: int = 30, allow_pickle: bool = False, batch_size: int = 4,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          revision: str | None = None, variant: str | None = None) -> int:
    """Fill ``folder`` up to ``wanted`` images; returns how many were generated.

    ``dtype`` is the precision the base model runs in (see :func:`generate_for_run`); ``revision``/``variant``
    pick the same base weights the run trains on.
    """
    from sdtune.models.loading import load_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(wanted) if not (folder / f"class-{i:05d}.png").exists()]
    have = count_images(folder)
    missing = missing[: max(0, wanted - have)]
    if not missing:
        return 0
    pipe = load_pipeline(model_ref, allow_pickle=allow_pickle, revision=revision, variant=variant,
                         torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=len(missing), desc=f"class images ({prompt})", unit="img")
    for start in range(0, len(missing), batch_size):
        chunk = missing[start : start + batch_size]
        generators = [torch.Generator().manual_seed(i) for i in chunk]
        images = pipe([prompt] * len(chunk), num_inference_steps=steps, height=resolution, width=resolution,
                      generator=generators).images
        for index, image in zip(chunk, images, strict=True):
            target = folder / f"class-{index:05d}.png"
            tmp = folder / f".class-{index:05d}.png.tmp"
            image.save(tmp, format="PNG")
            tmp.replace(target)
        bar.update(len(chunk))
    bar.close()
    del pipe
    return len(missing)


def generate_for_run(cfg: RunConfig, device: str | torch.device) -> int:
    """A run's missing class images, from its base model (revision, variant) in the run's compute dtype.

    The base runs in the dtype training keeps it in (``train.mixed_precision``: bf16/fp16 halve the memory and
    time on a GPU, as users of the diffusers DreamBooth script expect); with ``no`` it runs in fp32. The base's own
    scheduler samples them: class images show the base model's prior, whatever objective the run trains.
    Every caller (``sdtune train``, ``sdtune personalize``) goes through here so they make the same images.
    """
    from sdtune.models.loading import compute_dtype

    data = cfg.data
    if data.class_dir is None or data.class_prompt is None:
        raise ConfigError("data.with_prior_preservation needs data.class_dir and data.class_prompt")
    return generate_class_images(data.class_dir, data.class_prompt, data.num_class_images, cfg.model.base,
                                 resolution=data.resolution, steps=data.class_generation_steps,
                                 allow_pickle=cfg.model.allow_pickle, device=device,
                                 dtype=compute_dtype(cfg.train.mixed_precision), revision=cfg.model.revision,
                                 variant=cfg.model.variant)
