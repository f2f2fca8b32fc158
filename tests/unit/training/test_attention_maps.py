"""Break-A-Scene's cross-attention loss (sdtune.training.attention_loss): the maps it reads are the layers' own
attention (they rebuild each layer's output), the term reaches the token and the LoRA, and it asks for what it
needs (a learned token, masks) in one line."""

from __future__ import annotations

import pytest
import torch

from sdtune.config import LoraConfig, config_from_dict
from sdtune.errors import ConfigError
from sdtune.models.embeddings import add_learned_token
from sdtune.models.loading import load_components
from sdtune.models.lora import add_lora
from sdtune.training.attention_loss import (
    AttentionLoss,
    attention_note,
    build_attention_loss,
    chosen_downscales,
    grid_of,
)


def test_grid_of_halves_each_side_rounding_up() -> None:
    assert grid_of((8, 8), 64) == (1, 8, 8)
    assert grid_of((8, 8), 16) == (2, 4, 4)
    assert grid_of((64, 48), 12) == (16, 4, 3)
    assert grid_of((7, 5), 12) == (2, 4, 3)  # 7 -> 4, 5 -> 3, as stride-2 convolutions with padding 1 give
    assert grid_of((8, 8), 10) is None


def _setup(prompt: str = "a photo of sks dog"):
    comps = load_components("tiny")
    add_learned_token(comps.tokenizer, comps.text_encoder, "sks", None, num_vectors=2)
    unet = comps.unet
    settings = LoraConfig(rank=4)
    add_lora(unet, settings, settings.targets)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    ids = comps.tokenizer([prompt, "a photo of a dog"], padding="max_length",
                          max_length=comps.tokenizer.model_max_length, return_tensors="pt").input_ids
    size = unet.config.sample_size
    noisy = torch.randn(2, unet.config.in_channels, size, size, generator=gen)
    return comps, unet, ids, noisy


def test_the_maps_are_the_layers_own_attention() -> None:
    comps, unet, ids, noisy = _setup()
    token_ids = [comps.tokenizer.convert_tokens_to_ids(t) for t in ("sks", "sks_1")]
    term = AttentionLoss(unet, token_ids, 0.01, [1, 2, 4])
    outputs: dict[int, torch.Tensor] = {}
    for layer in term.layers:
        layer.register_forward_hook(lambda m, a, o: outputs.__setitem__(id(m), o))
    with torch.no_grad(), term.recording(noisy.shape[-2:]):
        unet(noisy, torch.tensor([10, 500]), comps.text_encoder(ids)[0])
    assert len(term.captured) == len(term.layers) > 0  # every level chosen: every layer kept
    for layer, hidden, text, _ in term.captured:
        probs = AttentionLoss.probabilities(layer, hidden, text)  # (B, heads, Q, L)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        value = layer.head_to_batch_dim(layer.to_v(text))
        mixed = layer.batch_to_head_dim(probs.flatten(0, 1) @ value)
        rebuilt = layer.to_out[1](layer.to_out[0](mixed))
        assert torch.allclose(rebuilt, outputs[id(layer)], atol=1e-5), "the map must be what the layer attended"
    with torch.no_grad():  # outside recording() nothing is kept
        unet(noisy, torch.tensor([10, 500]), comps.text_encoder(ids)[0])
    assert len(term.captured) == len(term.layers)


def test_the_term_reaches_the_token_and_the_lora_and_skips_prompts_without_it() -> None:
    comps, unet, ids, noisy = _setup()
    token_ids = [comps.tokenizer.convert_tokens_to_ids(t) for t in ("sks", "sks_1")]
    term = AttentionLoss(unet, token_ids, 0.01, [2])
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:24] = 1.0
    with term.recording(noisy.shape[-2:]):
        unet(noisy, torch.tensor([10, 500]), comps.text_encoder(ids)[0])
    loss = term.loss(ids, masks, num_train=2)
    assert loss is not None and loss.item() > 0
    loss.backward()
    learned = [p for n, p in comps.text_encoder.named_parameters() if p.requires_grad]
    assert learned and all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in unet.named_parameters() if "lora_A" in n)
    with torch.no_grad(), term.recording(noisy.shape[-2:]):  # the second prompt alone has no token: no term
        unet(noisy[1:], torch.tensor([500]), comps.text_encoder(ids[1:])[0])
    assert term.loss(ids[1:], masks[1:], num_train=1) is None
    term.downscales = [8]  # no map of this UNet is 8 times smaller than its latents: none is kept
    with torch.no_grad(), term.recording(noisy.shape[-2:]):
        unet(noisy, torch.tensor([10, 500]), comps.text_encoder(ids)[0])
    assert term.captured == []
    with pytest.raises(ConfigError, match=r"downscales=\[8\].*maps are \[2\] times smaller"):
        term.loss(ids, masks, num_train=2)


def _config(train: dict, data: dict | None = None) -> dict:
    return {"output_dir": "runs/x", "model": {"base": "tiny"},
            "data": {"instance_dir": "data/me", "instance_prompt": "a photo of sks dog", **(data or {})},
            "train": {"lora": {"rank": 4}, **train}}


def test_what_the_term_needs_is_said_in_one_line() -> None:
    learned = {"textual_inversion": {"token": "sks"}}
    with pytest.raises(ConfigError, match="add train.textual_inversion"):
        config_from_dict(_config({"attention_loss": {}}, {"masked_loss": True}))
    with pytest.raises(ConfigError, match="set data.masked_loss=true"):
        config_from_dict(_config({**learned, "attention_loss": {}}))
    one = config_from_dict(_config({**learned, "attention_loss": {"downscales": 4}}, {"masked_loss": True}))
    assert one.train.attention_loss.downscales == [4]  # one size written without brackets
    with pytest.raises(ConfigError, match="1, 2, 4, 8"):
        config_from_dict(_config({**learned, "attention_loss": {"downscales": [3]}}, {"masked_loss": True}))
    with pytest.raises(ConfigError, match=r"mask_start=0.99 of 4 steps .* leaves no step with masks"):
        config_from_dict(_config({**learned, "max_steps": 4, "attention_loss": {}},
                                 {"masked_loss": True, "mask_start": 0.99}))
    cfg = config_from_dict(_config({**learned, "attention_loss": {"weight": 0.05}}, {"masked_loss": True}))
    assert cfg.train.attention_loss.downscales is None and cfg.train.attention_loss.weight == 0.05
    comps = load_components("tiny")
    add_learned_token(comps.tokenizer, comps.text_encoder, "sks", None)
    term = build_attention_loss(cfg, comps)
    assert term is not None and term.token_ids.tolist() == [comps.tokenizer.convert_tokens_to_ids("sks")]
    assert term.downscales == [2]  # the tiny UNet's one cross-attention level
    assert build_attention_loss(config_from_dict(_config(learned)), comps) is None
    wrong = config_from_dict(_config({**learned, "attention_loss": {"downscales": [4]}}, {"masked_loss": True}))
    with pytest.raises(ConfigError, match=r"maps \[2\] times smaller than its latents, not \[4\]"):
        build_attention_loss(wrong, comps)  # before any latent is cached, not at the first step


@pytest.mark.parametrize(("preset", "resolution", "expected"), [
    ("real-sd15", 512, 4), ("real-sd2-base", 512, 4), ("real-sd2-768", 768, 8), ("real-sdxl", 1024, 4),
    ("toy", 32, 2)])
def test_the_default_maps_are_those_nearest_16x16(preset: str, resolution: int, expected: int) -> None:
    """Break-A-Scene read 16x16 maps of SD 2.1's 64x64 latents: the default is the level nearest that size."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from sdtune.config import AttentionLossConfig
    from sdtune.models.presets import toy_path
    from sdtune.models.real import read_component_config

    config = (UNet2DConditionModel.load_config(str(toy_path() / "pipeline" / "unet")) if preset == "toy"
              else read_component_config(preset, "unet"))  # the configs alone: real-shape weights are GBs
    unet = SimpleNamespace(**config)
    assert chosen_downscales(AttentionLossConfig(), unet, resolution // 8 if preset != "toy" else 8) == [expected]


def test_a_term_that_starts_after_the_token_froze_says_so() -> None:
    pivotal = {"textual_inversion": {"token": "sks", "ti_fraction": 0.5, "lora_start": 0.5}, "max_steps": 10,
               "attention_loss": {}}
    late = config_from_dict(_config(pivotal, {"masked_loss": True, "mask_start": 0.5}))
    assert "from step 6 (data.mask_start), after the token's last step 5" in attention_note(late)
    assert attention_note(config_from_dict(_config(pivotal, {"masked_loss": True}))) is None
