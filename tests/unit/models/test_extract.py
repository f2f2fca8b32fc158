"""SVD LoRA extraction: exact for low-rank changes, Eckart-Young error otherwise; loads in diffusers as the tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdtune.errors import SdtuneError
from sdtune.models.extract import EXTRACTION_REPORT, _factor_layer, extract_lora, extract_module, low_rank


def _rank_k(rows: int, cols: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, k, generator=g) @ torch.randn(k, cols, generator=g)


def test_low_rank_reconstructs_a_low_rank_change_exactly() -> None:
    delta = _rank_k(20, 30, 3)
    up, down, used = low_rank(delta, 3)
    assert used == 3 and up.shape == (20, 3) and down.shape == (3, 30)
    assert torch.allclose(up @ down, delta, atol=1e-4)
    up, down, used = low_rank(delta, 50)  # more rank than the matrix has: capped at min(rows, cols)
    assert used == 20
    assert torch.allclose(up @ down, delta, atol=1e-4)


def test_truncation_error_is_the_singular_value_tail() -> None:
    delta = torch.randn(24, 16, generator=torch.Generator().manual_seed(1))
    singular = torch.linalg.svdvals(delta)
    for k in (1, 4, 8):
        up, down, _ = low_rank(delta, k)
        err = torch.linalg.norm(delta - up @ down)
        assert err == pytest.approx(float(singular[k:].pow(2).sum().sqrt()), rel=1e-4)


def test_conv_factors_have_peft_shapes_and_compose_to_the_change() -> None:
    delta = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    down, up, used, err, norm = _factor_layer(delta, 36)  # full rank of the (6, 36) matrix: exact
    assert down.shape == (36, 4, 3, 3) and up.shape == (6, 36, 1, 1) and used == 6
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(F.conv2d(F.conv2d(x, down, padding=1), up), F.conv2d(x, delta, padding=1), atol=1e-4)
    assert err / norm < 1e-8


def test_extract_module_skips_unchanged_layers_and_reports_coverage() -> None:
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.LayerNorm(12), torch.nn.Linear(12, 8))
    tuned = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.LayerNorm(12), torch.nn.Linear(12, 8))
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        tuned[0].weight += _rank_k(12, 8, 2)
        tuned[1].weight += 0.5  # a norm: no LoRA can hold it
    from sdtune.models.extract import _Totals

    totals = _Totals()
    state = extract_module(base, tuned, 4, totals=totals, component="m")
    assert set(state) == {"0.lora_A.weight", "0.lora_B.weight"}  # layer 2 did not change
    report = totals.report(4)
    assert report.relative_error < 1e-5
    lin, norm = float(_rank_k(12, 8, 2).pow(2).sum()), 12 * 0.25
    assert report.coverage == pytest.approx(lin / (lin + norm), rel=1e-4)


def _perturbed_tiny(folder: Path, conv3x3: bool = False) -> Path:
    """The tiny model with rank-2 changes in every attention linear and 1x1 conv (and optionally 3x3 noise)."""
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in pipe.unet.named_modules():
            if isinstance(module, torch.nn.Linear) and "attentions" in name:
                out, inp = module.weight.shape
                module.weight += 0.2 * torch.randn(out, 2, generator=g) @ torch.randn(2, inp, generator=g)
            elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
                out, inp = module.weight.shape[:2]
                module.weight += (0.2 * torch.randn(out, 2, generator=g) @ torch.randn(2, inp, generator=g))[..., None,
                                                                                                            None]
            elif conv3x3 and isinstance(module, torch.nn.Conv2d):
                module.weight += 0.05 * torch.randn(module.weight.shape, generator=g)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _unet_out(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    sample, text = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        return unet(sample, torch.tensor([500]), text).sample


def test_extracted_lora_loads_in_diffusers_and_reproduces_a_low_rank_finetune(tmp_path: Path) -> None:
    from sdtune.models.loading import load_pipeline

    tuned = _perturbed_tiny(tmp_path / "tuned")
    # rank 64 is wider than many tiny layers (32 features): the zero padding must keep the scale right
    for rank in (2, 64):
        out = tmp_path / f"lora-{rank}"
        report = extract_lora("tiny", str(tuned), out, rank)
        assert report.relative_error < 1e-4 and report.coverage == pytest.approx(1.0)
        assert report.components == ["unet"] and report.layers > 20
        saved = json.loads((out / EXTRACTION_REPORT).read_text())
        assert saved["rank"] == rank and saved["relative_error"] == pytest.approx(report.relative_error)
        pipe = load_pipeline("tiny")
        pipe.load_lora_weights(str(out / "pytorch_lora_weights.safetensors"))
        expected = _unet_out(load_pipeline(str(tuned)).unet)
        assert (_unet_out(pipe.unet) - expected).abs().max() < 1e-3
        assert (_unet_out(load_pipeline("tiny").unet) - expected).abs().max() > 0.5


def test_truncated_extraction_reports_its_error_and_conv_option(tmp_path: Path) -> None:
    tuned = _perturbed_tiny(tmp_path / "tuned", conv3x3=True)
    rank1 = extract_lora("tiny", str(tuned), tmp_path / "r1", 1)
    assert 0.3 < rank1.relative_error < 1.0  # rank-2 changes at rank 1 lose about half their energy
    assert rank1.coverage < 1.0  # the 3x3 changes are not covered without conv
    with_conv = extract_lora("tiny", str(tuned), tmp_path / "conv", 2, conv=True)
    assert with_conv.coverage == pytest.approx(1.0) and with_conv.conv
    assert with_conv.max_layer_error > 0.1  # random 3x3 noise is far from rank 2, and the report says so


def test_nothing_to_extract_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SdtuneError, match="nothing to extract"):
        extract_lora("tiny", "tiny", tmp_path / "out", 4)


def test_sdxl_extraction_covers_both_text_encoders(tmp_path: Path) -> None:
    """A full SDXL fine-tune that changed the second text encoder: its LoRA carries text_encoder_2 layers, and
    StableDiffusionXLPipeline.load_lora_weights reproduces the tuned encoder."""
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline("tiny-xl")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in pipe.text_encoder_2.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith("q_proj"):
                out, inp = module.weight.shape
                module.weight += 0.2 * torch.randn(out, 2, generator=g) @ torch.randn(2, inp, generator=g)
    pipe.save_pretrained(tmp_path / "tuned", safe_serialization=True)
    report = extract_lora("tiny-xl", str(tmp_path / "tuned"), tmp_path / "lora", 2)
    assert report.components == ["text_encoder_2"] and report.relative_error < 1e-4
    ids = torch.tensor([[49, 50, 51, 52]])

    def encode(p) -> torch.Tensor:
        with torch.no_grad():
            return p.text_encoder_2(ids).last_hidden_state  # every position (pooling reads one)

    loaded = load_pipeline("tiny-xl")
    loaded.load_lora_weights(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    expected = encode(load_pipeline(str(tmp_path / "tuned")))
    assert (encode(loaded) - expected).abs().max() < 1e-4
    assert (encode(load_pipeline("tiny-xl")) - expected).abs().max() > 1e-2
