"""Real-shape built-in models: the architecture of SD 1.5 / 2.1-base / 2.1 (768) / SDXL base 1.0 with seeded random
weights (``real-sdxl``: UNet 2.57 G, text encoders 123 M + 695 M parameters, 10.3 GB in fp32 on disk).

A shape error (a head count, a cross-attention width, a LoRA target, a kohya key name, v-prediction) shows on
the real architecture whether or not its weights were learned, so tests and ``benchmarks/gpu_check.py`` train
these instead of downloading 5 GB checkpoints. The configs are the hub repos' own (``assets/real/*``, sources in
``assets/real/SOURCES.md``); only the tokenizer is the ``tiny`` byte-level one, since no CLIP vocabulary is
available offline (its ids fit the real 49408-token embedding).

Building is fast and deterministic: modules are created on the meta device (no default init pass over
~1.3 G parameters), then every parameter is filled from its own generator seeded by (preset seed, parameter
name), with PyTorch's default scale (the variance of uniform +-1/sqrt(fan_in) for weights and biases, ones/zeros
for norms, N(0, 0.02) for embeddings), so outputs are finite and the same in every process and session. The folder is
written once into the cache (``SDTUNE_CACHE``) and loaded through the same ``from_pretrained`` path as a real
model. ``real-sd2-768`` has exactly the parameter shapes of ``real-sd2-base``, so it hard-links that preset's
weight files (copies where links are impossible) and only its configs differ.

Measured on a 2-core CPU: building ``real-sd2-base`` (1.29 G parameters, 5.2 GB on disk) takes ~25 s and
~4 GB of RAM at most (one component at a time).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from pathlib import Path
from typing import Any

from sdtune.preset_names import REAL_PRESETS

REAL_VERSION = 1
SEED = 20_241_130


# hub ids of the ready configs -> the preset with their architecture (for gpu_check and tests)
REAL_PRESET_FOR_BASE: dict[str, str] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "real-sd15",
    "runwayml/stable-diffusion-v1-5": "real-sd15",
    "stabilityai/stable-diffusion-2-1-base": "real-sd2-base",
    "stabilityai/stable-diffusion-2-base": "real-sd2-base",
    "stabilityai/stable-diffusion-2-1": "real-sd2-768",
    "stabilityai/stable-diffusion-2": "real-sd2-768",
    "stabilityai/stable-diffusion-xl-base-1.0": "real-sdxl",
}

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")  # text_encoder_2: SDXL only


def configs_path(name: str) -> Path:
    """The shipped config folder of a real-shape preset (``assets/real/<family>``)."""
    return Path(__file__).resolve().parent.parent / "assets" / "real" / REAL_PRESETS[name][0]


def read_component_config(name: str, component: str) -> dict[str, Any]:
    """The hub config of one component (``unet``, ``vae``, ``text_encoder``, ``scheduler``) of a preset."""
    sub = "scheduler/scheduler_config.json" if component == "scheduler" else f"{component}/config.json"
    return json.loads((configs_path(name) / sub).read_text(encoding="utf-8"))


def _empty_module(component: str, config: dict[str, Any]):
    """The component built on the meta device: no memory, no init pass (buffers such as position ids stay real)."""
    from accelerate import init_empty_weights

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with init_empty_weights(include_buffers=False):
        if component.startswith("text_encoder"):
            import transformers
            from transformers import CLIPTextConfig

            cls = getattr(transformers, (config.pop("architectures", None) or ["CLIPTextModel"])[0])
            return cls(CLIPTextConfig(**config))
        from diffusers import AutoencoderKL, UNet2DConditionModel

        cls = UNet2DConditionModel if component == "unet" else AutoencoderKL
        return cls.from_config(config)


def _param_seed(component: str, name: str) -> int:
    return (SEED * 1_000_003 + zlib.crc32(f"{component}.{name}".encode())) % (2**63 - 1)


def _fill(module, param_name: str, shape: tuple[int, ...], seed: int):
    """One parameter's value at PyTorch's default init scale, drawn from a generator of its own."""
    import torch

    out = torch.empty(shape, dtype=torch.float32)
    if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
        return out.fill_(1.0 if param_name == "weight" else 0.0)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(module, torch.nn.Embedding):
        return out.normal_(0.0, 0.02, generator=generator)
    weight = getattr(module, "weight", None)
    fan_shape = tuple(weight.shape) if param_name == "bias" and weight is not None else shape
    fan_in = math.prod(fan_shape[1:]) if len(fan_shape) > 1 else fan_shape[0]
    # The variance of PyTorch's default uniform(+-1/sqrt(fan_in)) (kaiming_uniform(a=sqrt(5)), and the default
    # bias init), drawn as a normal: the CPU generator draws normals 4x faster than uniforms (measured).
    return out.normal_(0.0, 1.0 / math.sqrt(3 * max(fan_in, 1)), generator=generator)


def materialise_(component: str, module) -> None:
    """Replace every meta parameter of ``module`` by its seeded value (in place, deterministic)."""
    import torch

    for module_name, sub in module.named_modules():
        for param_name, param in list(sub._parameters.items()):
            if param is None:
                continue
            full = f"{module_name}.{param_name}" if module_name else param_name
            value = _fill(sub, param_name, tuple(param.shape), _param_seed(component, full))
            sub._parameters[param_name] = torch.nn.Parameter(value, requires_grad=param.requires_grad)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_real_preset(name: str, folder: Path, shared_from: Path | None = None) -> None:
    """Write the diffusers folder of a real-shape preset into ``folder`` (an empty staging folder).

    ``shared_from``: a materialised preset with the same parameter shapes whose weight files are linked.
    """
    import diffusers

    from sdtune.models.quiet import quiet_weight_loading
    from sdtune.models.tiny_tokenizer import build_tiny_tokenizer

    quiet_weight_loading()
    sdxl = (configs_path(name) / "text_encoder_2").is_dir()
    for tokenizer in ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",):
        build_tiny_tokenizer(folder / tokenizer).save_pretrained(str(folder / tokenizer))
    for component in COMPONENTS:
        if not (configs_path(name) / component).is_dir():
            continue
        module = _empty_module(component, read_component_config(name, component))
        target = folder / component
        if shared_from is not None:
            target.mkdir(parents=True, exist_ok=True)
            if component.startswith("text_encoder"):
                module.config.to_json_file(str(target / "config.json"))
            else:
                module.save_config(str(target))
            for weights in sorted((shared_from / component).glob("*.safetensors*")):
                _link_or_copy(weights, target / weights.name)
        else:
            materialise_(component, module)
            module.save_pretrained(str(target), safe_serialization=True)
        del module
    scheduler_config = read_component_config(name, "scheduler")
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    scheduler_cls.from_config(scheduler_config).save_pretrained(str(folder / "scheduler"))
    index = json.loads((configs_path(name) / "model_index.json").read_text(encoding="utf-8"))
    index["_diffusers_version"] = diffusers.__version__
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
