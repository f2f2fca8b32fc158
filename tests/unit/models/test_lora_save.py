"""A saved training LoRA loads in diffusers as exactly the adapter that was trained, for every target kind, and is
written in the format older stacks load too (the old stack itself runs in tests/integration/test_lora_compat.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sdtune.config import LoraConfig as LoraSettings
from sdtune.errors import SdtuneError
from sdtune.models.loading import load_pipeline
from sdtune.models.lora import portable_metadata, save_lora
from tests.helpers import tiny_pipeline_with_lora

# Every field of peft 0.17.1's LoraConfig (measured): diffusers 0.35 builds LoraConfig(**metadata), so any other
# field in the file (peft 0.21 writes alora_invocation_tokens, arrow_config, ...) fails the whole load there.
PEFT_0_17_FIELDS = {
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "corda_config", "eva_config",
    "exclude_modules", "fan_in_fan_out", "inference_mode", "init_lora_weights", "layer_replication",
    "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha", "lora_bias", "lora_dropout",
    "megatron_config", "megatron_core", "modules_to_save", "peft_type", "qalora_group_size", "r", "rank_pattern",
    "revision", "runtime_config", "target_modules", "target_parameters", "task_type", "trainable_token_indices",
    "use_dora", "use_qalora", "use_rslora"}

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
WIDE = [*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]


def _unet_output(unet: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    context = torch.randn(2, 8, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), context).sample


def _text_output(text_encoder: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, text_encoder.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return text_encoder(ids)[0]


@pytest.mark.parametrize("targets", [ATTENTION, WIDE], ids=["attention", "attention+conv+ff"])
def test_saved_lora_reloads_as_the_trained_adapter(tmp_path: Path, targets: list[str]) -> None:
    # The diffusers example scripts' key conversion (lora.down/up names) made load_lora_weights drop every
    # attention layer of a file that also held conv layers: inference silently ran a different model.
    settings = LoraSettings(rank=4, alpha=8.0, targets=targets)
    trained = tiny_pipeline_with_lora(settings, seed=1, scale=0.2)
    file = save_lora(tmp_path / "lora", trained.unet, trained.text_encoder, settings)

    loaded = load_pipeline("tiny")
    base, base_text = _unet_output(loaded.unet), _text_output(loaded.text_encoder)
    loaded.load_lora_weights(str(tmp_path / "lora"))
    want, got = _unet_output(trained.unet), _unet_output(loaded.unet)
    assert (want - base).abs().max() > 0.05, "the adapter must change the output for the test to mean much"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    want_text = _text_output(trained.text_encoder)
    assert (want_text - base_text).abs().max() > 0.05
    torch.testing.assert_close(_text_output(loaded.text_encoder), want_text, atol=1e-5, rtol=1e-4)

    # The format older stacks load (diffusers 0.35 / peft 0.17 / transformers 4): metadata fields peft 0.17
    # knows, text-encoder layers under transformers 4 names, peft matrix names.
    with safe_open(str(file), "pt") as fh:
        keys, meta = list(fh.keys()), json.loads(fh.metadata()["lora_adapter_metadata"])
    fields = {key.partition(".")[2] for key in meta}
    assert fields <= PEFT_0_17_FIELDS, f"fields peft 0.17 rejects: {sorted(fields - PEFT_0_17_FIELDS)}"
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8.0 and meta["text_encoder.r"] == 4
    assert sorted(meta["unet.target_modules"]) == sorted(targets)
    te_keys = [k for k in keys if k.startswith("text_encoder.")]
    assert te_keys and all(k.startswith("text_encoder.text_model.encoder.layers.") for k in te_keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)


def test_settings_a_portable_file_cannot_hold_are_refused() -> None:
    from peft import LoraConfig

    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"], init_lora_weights="gaussian").to_dict()
    assert set(portable_metadata(config)) == {"r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern",
                                              "use_rslora", "use_dora"}
    with pytest.raises(SdtuneError, match="bias"):  # dropping it would load another model, silently
        portable_metadata({**config, "bias": "all"})
