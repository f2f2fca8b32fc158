"""Generate images with a seed per image, so each image can be reproduced alone and compared across models.

Every image gets its own ``torch.Generator`` seeded with its seed: the same (model, prompt, seed, settings)
gives the same picture whether it was generated alone or in a batch (up to float rounding), which is what
makes per-seed comparisons between models and the evaluation cache meaningful.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sdtune.errors import SdtuneError
from sdtune.inference.grid import make_grid
from sdtune.inference.metadata import GenerationParams, save_png
from sdtune.inference.pipeline import load_for_inference
from sdtune.models.samplers import SCHEDULERS, check_steps, set_scheduler


@dataclass
class GenerationSettings:
    """Sampler settings shared by all images of a generate or eval call."""

    steps: int = 25
    guidance: float = 7.5
    scheduler: str = "dpm++"
    width: int | None = None  # None: the model's native size
    height: int | None = None
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise SdtuneError(f"unknown scheduler '{self.scheduler}'; choose one of {', '.join(SCHEDULERS)}")
        if self.steps < 1:
            raise SdtuneError("steps must be at least 1")
        for side in (self.width, self.height):
            if side is not None and (side < 8 or side % 8):
                raise SdtuneError(f"image size {side} must be a positive multiple of 8")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerateResult:
    images: list[Path] = field(default_factory=list)
    grid: Path | None = None


def pick_device(device: str | None = None) -> str:
    """The user's choice, checked against this machine (``sdtune.devices``), else the GPU when there is one."""
    from sdtune.devices import pick_device as pick

    return pick(device)


def pick_dtype(device: str, dtype: str = "auto") -> Any:
    """Half precision on a GPU (twice as fast, half the memory), fp32 on a CPU (fp16 is slow or missing there).

    ``dtype``: ``auto`` or any spelling ``sdtune.devices.dtype_name`` accepts (``fp16`` = ``float16``).
    """
    import torch

    from sdtune.devices import dtype_name, torch_dtype

    name = dtype_name(dtype)
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return torch_dtype(name)


def generate_images(pipe: Any, jobs: Sequence[tuple[str, int]], settings: GenerationSettings, batch_size: int = 4,
                    on_image: Callable[[int, Image.Image], None] | None = None) -> list[Image.Image]:
    """Generate one image per ``(prompt, seed)`` job, in order, ``batch_size`` at a time."""
    import torch

    set_scheduler(pipe, settings.scheduler)
    check_steps(pipe.scheduler, settings.steps)
    out: list[Image.Image] = []
    for start in range(0, len(jobs), max(1, batch_size)):
        batch = jobs[start:start + max(1, batch_size)]
        # CPU generators on every device: a seed gives the same starting noise on a laptop and on a GPU.
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for _, seed in batch]
        with torch.inference_mode():
            result = pipe(
                prompt=[p for p, _ in batch],
                negative_prompt=[settings.negative_prompt] * len(batch) if settings.negative_prompt else None,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                width=settings.width,
                height=settings.height,
                generator=generators,
            )
        for image in result.images:
            if on_image is not None:
                on_image(len(out), image)
            out.append(image)
    return out


def read_prompts(file: Path | None, prompts: Sequence[str] = ()) -> list[str]:
    """Prompts from flags, then from a file (one per line; blank lines and ``#`` comments are skipped).

    A file that holds no prompt at all (only comments and blank lines) is an error naming it, also next to flag
    prompts: it was passed to be read, and "no prompts: pass --prompts FILE" would be wrong about it.
    """
    out = [p for p in prompts if p.strip()]
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SdtuneError(f"{file}: cannot read prompts ({exc.strerror or exc})") from None
        found = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if not found:
            raise SdtuneError(f"{file} has no prompts (only comments and blank lines): write one prompt per line; "
                              "lines starting with # are comments")
        out += found
    return out


def _next_index(out_dir: Path) -> int:
    """Continue numbering after existing images so a second call never overwrites the first's."""
    numbers = [int(p.name[:5]) for p in out_dir.glob("[0-9][0-9][0-9][0-9][0-9]-*.png")]
    return max(numbers, default=-1) + 1


def run_generate(model: str, prompts: Sequence[str], out_dir: Path, *, seeds: Sequence[int],
                 settings: GenerationSettings, adapters: list[tuple[str, float]] | None = None,
                 device: str | None = None, dtype: str = "auto", batch_size: int = 4, allow_pickle: bool = False,
                 progress: bool = True) -> GenerateResult:
    """Generate every prompt at every seed, save PNGs with parameters, and a grid (rows: prompts, columns: seeds)."""
    from tqdm.auto import tqdm

    if not prompts:
        raise SdtuneError("no prompts: pass --prompt TEXT or --prompts FILE")
    dev = pick_device(device)
    pipe = load_for_inference(model, adapters, allow_pickle=allow_pickle, device=dev,
                              torch_dtype=pick_dtype(dev, dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    first = _next_index(out_dir)
    jobs = [(p, s) for p in prompts for s in seeds]
    result = GenerateResult()
    bar = tqdm(total=len(jobs), desc="generating", unit="img", disable=not progress)

    def save(i: int, image: Image.Image) -> None:
        prompt, seed = jobs[i]
        params = GenerationParams(prompt=prompt, seed=int(seed), steps=settings.steps, guidance=settings.guidance,
                                  scheduler=settings.scheduler, width=image.width, height=image.height,
                                  negative_prompt=settings.negative_prompt, model=model, adapters=list(adapters or []))
        result.images.append(save_png(image, out_dir / f"{first + i:05d}-{seed}.png", params))
        bar.update(1)

    try:
        images = generate_images(pipe, jobs, settings, batch_size=batch_size, on_image=save)
    finally:
        bar.close()
    rows = [images[r * len(seeds):(r + 1) * len(seeds)] for r in range(len(prompts))]
    result.grid = out_dir / f"grid-{first:05d}.png"
    make_grid(rows).save(result.grid)
    return result
