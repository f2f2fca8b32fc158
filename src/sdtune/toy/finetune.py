"""Run configs for fine-tuning the toy model: the held-out concept (text-to-image) and the person (DreamBooth).

These are ordinary sdtune run configs (the same loop, the same keys as ``configs/*.yaml``), with defaults sized
for 32 px images on a CPU. The demo and the benchmarks build their runs here so both measure the same thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdtune.toy.world import PERSON, RESOLUTION, Person

LORA_RANK = 8
LORA_LR = 1e-3
FULL_LR = 1e-4
# The toy UNet has attention only at its two coarsest levels (4x4 and 2x2 latents), so a LoRA on attention alone
# cannot change fine texture: 600 DreamBooth steps at lr 1e-3 or 3e-3 left the person's checkered pattern at
# 0.0-0.17 of images. On SD the attention layers reach the finest latents; here the ResNet convolutions and the
# transformer blocks' projections and feed-forwards take adapters too (what kohya's LoCon/LyCORIS users do):
# person 0.83 at lr 1e-3 (measured on the shipped toy model, 25 Nov 2026).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2"]
# The toy UNet's finer levels: 8x8 latents (no attention) and 4x4 (the first cross-attention level). The shape of
# what is drawn is laid out at the coarser 2x2 level and the middle block; a LoRA kept off them changes texture and
# colour more than form (the idea of B-LoRA's block choice), which the composite needs: the person's identity on
# the concept's form.
FINE_LEVELS = ("down_blocks.0.", "down_blocks.1.", "up_blocks.1.", "up_blocks.2.")


def level_targets(levels: tuple[str, ...], base: str = "toy", targets: list[str] | None = None) -> list[str]:
    """Full module names of ``targets`` (default :data:`LORA_TARGETS`) inside the UNet blocks ``levels`` (peft
    takes full names as exact matches)."""
    import torch
    from diffusers import UNet2DConditionModel

    from sdtune.models.loading import resolve_model_ref

    config = UNet2DConditionModel.load_config(str(Path(resolve_model_ref(base)) / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    leaves = targets or LORA_TARGETS
    return [name for name, _ in unet.named_modules() if name.startswith(levels)
            and any(name == t or name.endswith("." + t) for t in leaves)]


def _common(base: str, out: Path, steps: int, lr: float, lora_rank: int | None, seed: int,
            batch_size: int) -> dict[str, Any]:
    train: dict[str, Any] = {"learning_rate": lr, "max_steps": steps, "batch_size": batch_size, "seed": seed,
                             "lr_scheduler": "constant", "max_grad_norm": 1.0}
    if lora_rank is not None:
        train["lora"] = {"rank": lora_rank, "alpha": lora_rank, "targets": LORA_TARGETS}
    return {"output_dir": str(out), "model": {"base": base}, "train": train,
            "checkpoint": {"every": steps, "keep": 1}, "logging": {"trackers": []}}


def concept_config(base: str, train_dir: Path, out: Path, *, steps: int = 300, lr: float | None = None,
                   lora_rank: int | None = LORA_RANK, seed: int = 0, batch_size: int = 8,
                   full_model: bool = False, caption_dropout: float = 0.1) -> dict[str, Any]:
    """Stage 1: text-to-image on captioned images of the held-out glyph ("a red arrow on ...")."""
    cfg = _common(base, out, steps, lr or (LORA_LR if lora_rank else FULL_LR), lora_rank, seed, batch_size)
    cfg["data"] = {"train_dir": str(train_dir), "resolution": RESOLUTION, "caption_dropout": caption_dropout,
                   "check": False}
    cfg["save"] = {"full_model": full_model}
    return cfg


def dreambooth_config(base: str, instance_dir: Path, out: Path, *, steps: int = 300, lr: float | None = None,
                      lora_rank: int | None = LORA_RANK, seed: int = 0, batch_size: int = 4,
                      prior: bool = False, class_dir: Path | None = None, num_class_images: int = 24,
                      person: Person = PERSON, instance_prompt: str | None = None,
                      train_text_encoder: bool = False) -> dict[str, Any]:
    """Stage 2 / the benchmark: DreamBooth on the person's instance images, optionally with prior preservation.

    ``instance_prompt`` replaces the person's (e.g. DreamBooth on the concept's images: "a photo of a arrow")."""
    cfg = _common(base, out, steps, lr or (LORA_LR if lora_rank else FULL_LR), lora_rank, seed, batch_size)
    cfg["train"]["train_text_encoder"] = train_text_encoder
    data: dict[str, Any] = {"instance_dir": str(instance_dir),
                            "instance_prompt": instance_prompt or person.instance_prompt,
                            "resolution": RESOLUTION, "check": False}
    if prior:
        if class_dir is None:
            raise ValueError("prior preservation needs a class_dir (missing class images are generated there)")
        data.update(with_prior_preservation=True, class_dir=str(class_dir), class_prompt=person.class_prompt,
                    num_class_images=num_class_images, prior_loss_weight=1.0, class_generation_steps=20)
    cfg["data"] = data
    return cfg


def run(config: dict[str, Any]):
    """Train one config with the training loop (quietly: no per-step bar when not on a terminal)."""
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train

    return train(config_from_dict(config))
