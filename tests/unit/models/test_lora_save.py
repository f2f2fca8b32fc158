"""A saved training LoRA loads in diffusers as exactly the adapter that was trained, for every target kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.config import LoraConfig as LoraSettings
from sdtune.models.loading import load_pipeline
from sdtune.models.lora import add_lora, save_lora

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
WIDE = [*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]


def _unet_output(unet: torch.nn.Module) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, unet.config.in_channels, 8, 8, generator=gen)
    context = torch.randn(2, 8, unet.config.cross_attention_dim, generator=gen)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), context).sample


@pytest.mark.parametrize("targets", [ATTENTION, WIDE], ids=["attention", "attention+conv+ff"])
def test_saved_lora_reloads_as_the_trained_adapter(tmp_path: Path, targets: list[str]) -> None:
    # The diffusers example scripts' key conversion (lora.down/up names) made load_lora_weights drop every
    # attention layer of a file that also held conv layers: inference silently ran a different model.
    settings = LoraSettings(rank=4, alpha=8.0, targets=targets)
    trained = load_pipeline("tiny")
    add_lora(trained.unet, settings, settings.targets)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in trained.unet.named_parameters():
            if "lora_" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    save_lora(tmp_path / "lora", trained.unet, None, settings)

    loaded = load_pipeline("tiny")
    base = _unet_output(loaded.unet)
    loaded.load_lora_weights(str(tmp_path / "lora"))
    want, got = _unet_output(trained.unet), _unet_output(loaded.unet)
    assert (want - base).abs().max() > 0.05, "the adapter must change the output for the test to mean much"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
