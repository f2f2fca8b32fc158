"""Fake training runs built in seconds from the tiny model, for tests and offline demos of generate/eval.

They have the same layout as a real ``sdtune train`` output folder, so code that reads them is the code users run.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def _perturb(module, seed: int, scale: float, only: str | None = None) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if only is None or only in name:
                param.add_(torch.randn(param.shape, generator=gen) * scale)


def make_lora_file(folder: Path, seed: int = 1, scale: float = 0.5, base: str = "tiny") -> Path:
    """Write a random UNet LoRA for ``base`` in diffusers format; returns the weights file."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline(base)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights="gaussian"))
    _perturb(pipe.unet, seed, scale, only="lora_B")
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    )
    return folder / "pytorch_lora_weights.safetensors"


def make_run_folder(run: Path, kind: str = "lora", seed: int = 1, scale: float = 0.5, base: str = "tiny",
                    stack: list[dict] | None = None) -> Path:
    """A run folder: ``config.yaml`` + ``lora/`` (kind="lora") or ``model/`` (kind="full").

    ``stack`` entries (``{"name", "path", "weight"}``) are written to ``RUN/adapters.json``.
    """
    from sdtune.models.loading import load_pipeline

    run.mkdir(parents=True, exist_ok=True)
    config = {"model": {"base": base}, "train": {"lora": {"rank": 4, "alpha": 4} if kind == "lora" else None},
              "output_dir": str(run)}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    if kind == "lora":
        make_lora_file(run / "lora", seed=seed, scale=scale, base=base)
    elif kind == "full":
        pipe = load_pipeline(base)
        _perturb(pipe.unet, seed, scale * 0.05)
        pipe.save_pretrained(run / "model", safe_serialization=True)
    else:
        raise ValueError(f"kind must be 'lora' or 'full', not {kind!r}")
    if stack:
        (run / "adapters.json").write_text(json.dumps(stack, indent=2), encoding="utf-8")
    return run
