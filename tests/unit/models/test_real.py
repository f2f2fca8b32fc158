"""Real-shape presets: the shipped hub configs build the real architectures, deterministically, without a download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.config import read_yaml
from sdtune.models.presets import is_preset
from sdtune.models.real import (
    REAL_PRESET_FOR_BASE,
    REAL_PRESETS,
    _empty_module,
    materialise_,
    read_component_config,
)

ROOT = Path(__file__).resolve().parents[3]

# Parameter counts of the published checkpoints (diffusers / transformers), the shapes' fingerprint.
REAL_COUNTS = {
    ("real-sd15", "unet"): 859_520_964,
    ("real-sd15", "text_encoder"): 123_060_480,
    ("real-sd2-base", "unet"): 865_910_724,
    ("real-sd2-base", "text_encoder"): 340_387_840,
    ("real-sd2-768", "unet"): 865_910_724,
    ("real-sd2-768", "text_encoder"): 340_387_840,
    ("real-sd15", "vae"): 83_653_863,
    # SDXL base 1.0: UNet, CLIP ViT-L (as SD 1.5's), OpenCLIP bigG with projection, its VAE (SD's architecture)
    ("real-sdxl", "unet"): 2_567_463_684,
    ("real-sdxl", "text_encoder"): 123_060_480,
    ("real-sdxl", "text_encoder_2"): 694_659_840,
    ("real-sdxl", "vae"): 83_653_863,
}


def _count(name: str, component: str) -> int:
    return sum(p.numel() for p in _empty_module(component, read_component_config(name, component)).parameters())


@pytest.mark.parametrize("name,component", list(REAL_COUNTS))
def test_shipped_configs_build_the_published_parameter_counts(name: str, component: str) -> None:
    assert _count(name, component) == REAL_COUNTS[(name, component)]


# heads in the first block (diffusers reads SD 2's attention_head_dim [5, 10, 20, 20] as head counts: 64-wide
# heads), cross-attention width, linear projections, fp32 attention, latent size, prediction, text layers
FAMILY = {
    "real-sd15": (8, 768, False, False, 64, "epsilon", 12),
    "real-sd2-base": (5, 1024, True, False, 64, "epsilon", 23),
    "real-sd2-768": (5, 1024, True, True, 96, "v_prediction", 23),
}


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_differences_are_the_real_ones(name: str) -> None:
    heads, cross, linear, upcast, size, prediction, layers = FAMILY[name]
    unet = _empty_module("unet", read_component_config(name, "unet"))
    block = unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert (block.attn1.heads, block.attn2.to_k.in_features) == (heads, cross)
    assert unet.config.use_linear_projection is linear and bool(block.attn1.upcast_attention) is upcast
    assert unet.config.sample_size == size
    assert read_component_config(name, "scheduler")["prediction_type"] == prediction
    text = read_component_config(name, "text_encoder")
    assert (text["num_hidden_layers"], text["hidden_size"]) == (layers, cross)


def test_every_ready_config_has_a_real_shape_preset() -> None:
    """A new ready config on another model family must come with its preset, or the GPU check cannot run it."""
    bases = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        data = read_yaml(path)
        model = (data.get("defaults") or data).get("model") or {}
        bases.append((path.name, model.get("base")))
    assert bases
    for name, base in bases:
        assert base in REAL_PRESET_FOR_BASE, f"{name}: no real-shape preset for {base}"
    assert all(is_preset(name) for name in REAL_PRESETS)


def test_weights_are_seeded_by_name_finite_and_at_default_init_scale() -> None:
    config = read_component_config("real-sd15", "vae")
    first, second = _empty_module("vae", config), _empty_module("vae", config)
    materialise_("vae", first)
    materialise_("vae", second)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the same weights in every process"
    assert all(torch.isfinite(v).all() for v in a.values())
    conv = a["encoder.down_blocks.1.resnets.0.conv1.weight"]  # (256, 128, 3, 3): fan-in 1152
    assert conv.std().item() == pytest.approx((3 * 128 * 9) ** -0.5, rel=0.02)
    assert torch.equal(a["encoder.conv_norm_out.weight"], torch.ones(512))
    assert not torch.equal(a["encoder.down_blocks.1.resnets.0.conv1.weight"][:, :, 0, 0],
                           a["encoder.down_blocks.1.resnets.0.conv2.weight"][:128, :, 0, 0]), "one generator each"
    with torch.no_grad():
        latents = first.encode(torch.rand(1, 3, 32, 32) * 2 - 1).latent_dist.mean
    assert latents.shape == (1, 4, 4, 4) and torch.isfinite(latents).all()
