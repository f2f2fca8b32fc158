"""LoRA adapters through peft: add them for training, save them in the diffusers format.

The saved file carries each adapter's rank and alpha as metadata, so ``pipe.load_lora_weights`` restores the
right scale even when alpha differs from rank.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdtune.config import LoraConfig as LoraSettings

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def peft_config(settings: LoraSettings, targets: list[str]):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        lora_dropout=settings.dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
    )


def add_lora(module: torch.nn.Module, settings: LoraSettings, targets: list[str]) -> None:
    """Add a trainable LoRA adapter; the base weights stay frozen. Works for the UNet and the text encoder."""
    from peft import inject_adapter_in_model

    module.requires_grad_(False)
    if hasattr(module, "add_adapter"):
        module.add_adapter(peft_config(settings, targets))
    else:
        inject_adapter_in_model(peft_config(settings, targets), module)
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"no LoRA target modules matched {targets} in {type(module).__name__}")


def lora_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's matrices under peft's names (``<layer>.lora_A.weight`` / ``lora_B``).

    Not converted to the older diffusers names (``lora.down`` / ``lora.up``, what the diffusers example scripts
    write): diffusers converts only attention layers to those names, and when a file then holds both kinds
    (attention plus conv or feed-forward targets) ``load_lora_weights`` silently drops the attention layers
    (measured, diffusers 0.42: every attention LoRA missing from the loaded UNet)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(module, save_embedding_layers=False)  # LoRA never trains embeddings


def save_lora(folder: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module | None,
              settings: LoraSettings) -> Path:
    """Write ``folder/pytorch_lora_weights.safetensors`` in the diffusers format."""
    from diffusers import StableDiffusionPipeline

    unet_meta = peft_config(settings, settings.targets).to_dict()
    te_meta = peft_config(settings, settings.text_encoder_targets).to_dict() if text_encoder is not None else None
    for meta in (unet_meta, te_meta):
        if meta is not None:
            meta["target_modules"] = sorted(meta["target_modules"])
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=lora_state(unet),
        text_encoder_lora_layers=lora_state(text_encoder) if text_encoder is not None else None,
        weight_name=LORA_WEIGHTS,
        unet_lora_adapter_metadata=unet_meta,
        text_encoder_lora_adapter_metadata=te_meta,
    )
    return folder / LORA_WEIGHTS
