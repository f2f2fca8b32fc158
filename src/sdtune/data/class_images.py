"""Prior preservation needs class images ("a photo of a person"): generate the missing ones with the base model.

Images are named ``class-00000.png`` ... and written atomically, one per seed, so a rerun reuses what exists
and an interrupted generation resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from sdtune.data.images import is_image_file


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else 0


def generate_class_images(folder: Path, prompt: str, wanted: int, model_ref: str, *, resolution: int,
                          steps: int = 30, allow_pickle: bool = False, batch_size: int = 4,
                          device: str | torch.device = "cpu") -> int:
    """Fill ``folder`` up to ``wanted`` images; returns how many were generated."""
    from sdtune.models.loading import load_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(wanted) if not (folder / f"class-{i:05d}.png").exists()]
    have = count_images(folder)
    missing = missing[: max(0, wanted - have)]
    if not missing:
        return 0
    pipe = load_pipeline(model_ref, allow_pickle=allow_pickle).to(device)
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
