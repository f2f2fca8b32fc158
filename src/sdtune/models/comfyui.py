"""ComfyUI's way of loading a kohya / LyCORIS file, implemented here (ComfyUI is not a Python dependency): its key
names for a UNet and text encoder(s), and its merge ``W += (alpha / rank) * up @ down``.

``sdtune.models.verify`` loads written files this way to check them (consumer ``kohya-comfyui``);
``sdtune.models.lycoris`` merges LoHa / LoKr files the same way (``merge_comfyui``).
"""

from __future__ import annotations

from pathlib import Path

import torch

# ComfyUI's text-encoder LoRA names (comfy/lora.py LORA_CLIP_MAP): only these six layers of each of 32 blocks.
COMFY_CLIP_LAYERS = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                     "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                     "self_attn.out_proj": "self_attn_out_proj"}


def _family(text_encoder: torch.nn.Module):
    from sdtune.models.family import SD, SDXL, DualTextEncoder

    return SDXL if isinstance(text_encoder, DualTextEncoder) else SD


def comfyui_key_map(unet: torch.nn.Module, text_encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """ComfyUI's kohya names: ``lora_unet_`` + every UNet weight's diffusers module path with dots as underscores
    (for SDXL ComfyUI maps these diffusers names as well as the SGM ones); for the six CLIP layers of each of the
    first 32 blocks ``lora_te_text_model_encoder_layers_{b}_{layer}`` (SD), or ``lora_te1_...`` (CLIP-L) and
    ``lora_te2_...`` (CLIP-G) on SDXL (comfy/lora.py ``model_lora_keys_unet`` / ``model_lora_keys_clip``)."""
    keys = {f"lora_unet_{name.replace('.', '_')}": module for name, module in unet.named_modules()
            if name and isinstance(getattr(module, "weight", None), torch.Tensor)}
    parts = _family(text_encoder).text_parts(text_encoder)
    prefixes = {"text_encoder": "lora_te1" if len(parts) > 1 else "lora_te", "text_encoder_2": "lora_te2"}
    for component, module in parts.items():
        encoder = getattr(module, "text_model", module).encoder
        for b, block in enumerate(list(encoder.layers)[:32]):
            for path, kohya in COMFY_CLIP_LAYERS.items():
                keys[f"{prefixes[component]}_text_model_encoder_layers_{b}_{kohya}"] = block.get_submodule(path)
    return keys


@torch.no_grad()
def apply_kohya_comfyui(unet: torch.nn.Module, text_encoder: torch.nn.Module, file: Path) -> list[str]:
    """Merge a kohya file into the modules as ComfyUI does: ``W += (alpha / rank) * up @ down`` (scale 1 without
    ``.alpha``), computed in fp32. Returns the file's keys ComfyUI would not load (it only warns about them)."""
    from sdtune.models.safetensors_files import load_safetensors

    state = load_safetensors(file)
    loaded: set[str] = set()
    for name, module in comfyui_key_map(unet, text_encoder).items():
        up, down = state.get(f"{name}.lora_up.weight"), state.get(f"{name}.lora_down.weight")
        if up is None or down is None:
            continue
        alpha = state.get(f"{name}.alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        delta = (up.float().flatten(1) @ down.float().flatten(1)).reshape(module.weight.shape)
        module.weight.add_((scale * delta).to(module.weight.dtype))
        loaded |= {f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"}
    return sorted(set(state) - loaded)
