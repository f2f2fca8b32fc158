"""DoRA / LoHa / LoKr files load in each consumer they claim as the trained adapter: peft's own format (the
reference), the kohya/LyCORIS layout through ComfyUI's loader logic, DoRA's diffusers file through
``load_lora_weights``; SD and SDXL, UNet and text encoder, with adapter weights far from their zero start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdtune.config import LoraConfig as LoraSettings
from sdtune.models.loading import load_pipeline
from sdtune.models.lora import add_lora, save_lora
from sdtune.models.lycoris import LYCORIS_FILE, merge_comfyui, write_lycoris_and_verify, write_peft_folder
from sdtune.models.verify import _text_module, probe_inputs, probe_outputs

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]


def _trained(kind: str, base: str, folder: Path) -> dict[str, torch.Tensor]:
    """A 'trained' adapter of ``kind`` on ``base`` (random factors), written as a run writes RUN/lora; returns
    the live model's outputs (fp32) on the probe inputs."""
    settings = LoraSettings(kind=kind, rank=4, alpha=8.0, targets=TARGETS)
    pipe = load_pipeline(base)
    text = _text_module(pipe)
    add_lora(pipe.unet, settings, settings.targets)
    add_lora(text, settings, settings.text_encoder_targets, "train.lora.text_encoder_targets")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in (pipe.unet, text):
            for _, param in module.named_parameters():
                if param.requires_grad:
                    param.add_(0.3 * torch.randn(param.shape, generator=gen))
    folder.mkdir(parents=True)
    if kind == "dora":
        save_lora(folder, pipe.unet, text, settings)
    write_peft_folder(folder, pipe.unet, text, settings)
    return probe_outputs(pipe.unet, text, probe_inputs(pipe.unet, text))


@pytest.mark.parametrize("kind,base", [("dora", "tiny"), ("loha", "tiny"), ("lokr", "tiny"), ("loha", "tiny-xl"),
                                       ("lokr", "tiny-xl"), ("dora", "tiny-xl")])
def test_each_file_loads_in_its_consumers_as_the_trained_adapter(tmp_path: Path, kind: str, base: str) -> None:
    live = _trained(kind, base, tmp_path / "lora")
    checks = write_lycoris_and_verify(tmp_path / "lora", kind, verify=True, base=base)
    assert [c.consumer for c in checks] == ["kohya-comfyui"] + (["diffusers"] if kind == "dora" else [])
    for check in checks:
        assert check.ok, check.line()
        assert min(check.effect.values()) > 0.05, "the adapter must move both outputs for the check to mean much"
    keys = load_file(str(tmp_path / "lora" / LYCORIS_FILE))
    marker = {"dora": ".diff", "loha": ".hada_w1_a", "lokr": ".lokr_w1"}[kind]
    te = "lora_te1_" if base == "tiny-xl" else "lora_te_"
    assert any(k.startswith("lora_unet_") and k.endswith(marker) for k in keys)
    assert any(k.startswith(te) for k in keys) and (base != "tiny-xl" or any(k.startswith("lora_te2_") for k in keys))

    pipe = load_pipeline(base)  # the ComfyUI merge equals the live trained model (not only the reference)
    merge_comfyui(pipe.unet, _text_module(pipe), tmp_path / "lora" / LYCORIS_FILE)
    merged = probe_outputs(pipe.unet, _text_module(pipe))
    for part in live:
        assert (merged[part] - live[part]).abs().max() < 1e-4 * max(1.0, float(live[part].abs().max()))


def test_a_wrong_scale_in_the_lycoris_file_is_caught(tmp_path: Path) -> None:
    """The negative control: the check sees a LoHa whose alpha is off by 10 % (what a wrong rank/alpha rule does)."""
    _trained("loha", "tiny", tmp_path / "lora")
    write_lycoris_and_verify(tmp_path / "lora", "loha", verify=False, base="tiny")
    file = tmp_path / "lora" / LYCORIS_FILE
    state = load_file(str(file))
    save_file({k: v * 1.1 if k.endswith(".alpha") else v for k, v in state.items()}, str(file))
    pipe, reference = load_pipeline("tiny"), load_pipeline("tiny")
    from sdtune.models.lycoris import apply_peft_folder

    apply_peft_folder(reference.unet, reference.text_encoder, tmp_path / "lora")
    merge_comfyui(pipe.unet, pipe.text_encoder, file)
    inputs = probe_inputs(pipe.unet, pipe.text_encoder)
    got, want = probe_outputs(pipe.unet, pipe.text_encoder, inputs), probe_outputs(reference.unet,
                                                                                    reference.text_encoder, inputs)
    assert (got["unet"] - want["unet"]).abs().max() > 1e-2
