"""RUN/lora and the kohya export load on an older, common stack (diffusers 0.35, peft 0.17, transformers 4) as
exactly the trained adapter. Needs the second venv that ``make compat-venv`` builds (``make test`` builds it);
skipped without it. The fast, stack-free checks of the same file format are in tests/unit/models/test_lora_save.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdtune.config import LoraConfig as LoraSettings
from sdtune.models.kohya import export_kohya
from sdtune.models.loading import load_pipeline
from sdtune.models.lora import add_lora, save_lora
from sdtune.models.portable import save_pipeline

ROOT = Path(__file__).resolve().parents[2]
OLD_PYTHON = Path(os.environ.get("SDTUNE_COMPAT_PYTHON") or ROOT / ".venv-compat" / "bin" / "python")
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
WIDE = [*ATTENTION, "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not OLD_PYTHON.is_file(), reason=(
    f"no old-stack venv at {OLD_PYTHON}: run `make compat-venv` (or set SDTUNE_COMPAT_PYTHON)"))]


def _portable_base(folder: Path) -> None:
    """The tiny base as an older stack loads it: the text encoder's weights under transformers 4 names."""
    pipe = load_pipeline("tiny")
    pipe.unet.save_pretrained(folder / "unet")
    pipe.vae.save_pretrained(folder / "vae")
    pipe.text_encoder.save_pretrained(folder / "text_encoder")
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, str(weights),
              metadata={"format": "pt"})


def _trained_case(folder: Path, targets: list[str], text_encoder: bool, inputs: dict[str, torch.Tensor]) -> Path:
    """A LoRA 'trained' in this stack (random non-zero peft weights), saved by the run's writer, with the
    outputs of the live adapter as the expectation."""
    settings = LoraSettings(rank=4, alpha=8.0, targets=targets)
    pipe = load_pipeline("tiny")
    add_lora(pipe.unet, settings, settings.targets)
    if text_encoder:
        add_lora(pipe.text_encoder, settings, settings.text_encoder_targets)
    gen = torch.Generator().manual_seed(len(targets) + text_encoder)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, param in module.named_parameters():
                if "lora_" in name:
                    param.copy_(0.2 * torch.randn(param.shape, generator=gen))
        expected = {"unet": pipe.unet(inputs["sample"], inputs["timesteps"], inputs["context"]).sample,
                    "text_encoder": pipe.text_encoder(inputs["ids"])[0]}
    save_lora(folder, pipe.unet, pipe.text_encoder if text_encoder else None, settings)
    save_file({k: v.contiguous() for k, v in expected.items()}, str(folder / "expected.safetensors"))
    return folder / "pytorch_lora_weights.safetensors"


def test_lora_files_load_on_the_old_stack_as_the_trained_adapter(tmp_path: Path) -> None:
    _portable_base(tmp_path / "base")
    gen = torch.Generator().manual_seed(0)
    base = load_pipeline("tiny")
    inputs = {"sample": torch.randn(2, 4, 16, 16, generator=gen), "timesteps": torch.tensor([10, 700]),
              "context": torch.randn(2, 8, base.unet.config.cross_attention_dim, generator=gen),
              "ids": torch.randint(0, base.text_encoder.config.vocab_size, (2, 12), generator=gen)}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    with torch.no_grad():
        base_out = {"unet": base.unet(inputs["sample"], inputs["timesteps"], inputs["context"]).sample,
                    "text_encoder": base.text_encoder(inputs["ids"])[0]}
    cases = tmp_path / "cases"
    for name, targets, te in [("attention", ATTENTION, False), ("attention+te", ATTENTION, True),
                              ("wide", WIDE, False), ("wide+te", WIDE, True)]:
        file = _trained_case(cases / name, targets, te, inputs)
        if te:  # the kohya export of the same adapter, loaded by the old diffusers' kohya converter
            export_kohya(file, cases / f"{name}-kohya" / "kohya.safetensors")
            (cases / f"{name}-kohya" / "expected.safetensors").write_bytes((cases / name /
                                                                            "expected.safetensors").read_bytes())

    tuned = load_pipeline("tiny")  # a full fine-tune's RUN/model, saved as training saves it (portable names)
    with torch.no_grad():
        for module in (tuned.unet, tuned.text_encoder):
            for param in module.parameters():
                param.add_(0.01 * torch.randn(param.shape, generator=gen))
        expected = {"unet": tuned.unet(inputs["sample"], inputs["timesteps"], inputs["context"]).sample,
                    "text_encoder": tuned.text_encoder(inputs["ids"])[0]}
    save_pipeline(tuned, tmp_path / "models" / "full")
    save_file({k: v.contiguous() for k, v in expected.items()}, str(tmp_path / "models" / "full" /
                                                                     "expected.safetensors"))

    proc = subprocess.run([str(OLD_PYTHON), str(ROOT / "tests" / "compat" / "old_stack_check.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    stack, results = lines[0]["stack"], {r["case"]: r for r in lines[1:]}
    assert stack["diffusers"].startswith("0.35") and stack["transformers"].startswith("4."), stack
    assert set(results) == {"attention", "attention+te", "wide", "wide+te", "attention+te-kohya", "wide+te-kohya",
                            "model:full"}
    for name, result in results.items():
        assert "error" not in result, f"{name} on {stack}: {result['error']}"
        assert result["unet"] < 1e-4 and result["text_encoder"] < 1e-4, f"{name} on {stack}: {result}"
        if name.startswith("model:"):
            continue
        expected = load_file(str(cases / name / "expected.safetensors"))
        assert (expected["unet"] - base_out["unet"]).abs().max() > 0.05  # the adapter matters
        if "+te" in name:
            assert (expected["text_encoder"] - base_out["text_encoder"]).abs().max() > 0.05
