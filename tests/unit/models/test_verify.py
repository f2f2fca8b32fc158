"""sdtune export verifies what it wrote: loaded as its consumer loads it, the file must act as the trained LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

from sdtune.cli import app
from sdtune.config import LoraConfig as LoraSettings
from sdtune.errors import SdtuneError
from sdtune.models import kohya
from sdtune.models.loading import load_pipeline
from sdtune.models.lora import add_lora
from sdtune.models.verify import comfyui_key_map, verify_lora_file
from tests.helpers import tiny_pipeline_with_lora

WIDE = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.0.proj", "ff.net.2", "conv1", "conv2"]


def _run(folder: Path, rank: int = 4, alpha: float = 8.0, base: str = "tiny") -> Path:
    """A run folder (config.yaml naming its base) whose LoRA covers attention, convs, feed-forwards and the text
    encoder(s), saved by the training writer with non-zero weights."""
    from sdtune.models.loading import family_of_pipeline
    from sdtune.models.lora import save_lora

    settings = LoraSettings(rank=rank, alpha=alpha, targets=WIDE)
    if base == "tiny":
        pipe = tiny_pipeline_with_lora(settings, seed=0, scale=0.1)
        text_encoder = pipe.text_encoder
    else:  # SDXL: both encoders as one module with one adapter, as training holds them
        pipe = load_pipeline(base)
        text_encoder = family_of_pipeline(pipe).text_of(pipe)[1]
        add_lora(pipe.unet, settings, settings.targets)
        add_lora(text_encoder, settings, settings.text_encoder_targets)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for module in (pipe.unet, text_encoder):
                for name, param in module.named_parameters():
                    if "lora_" in name:
                        param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    (folder / "lora").mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"base": base}, "train": {"lora": {}}}))
    save_lora(folder / "lora", pipe.unet, text_encoder, settings)
    return folder


@pytest.mark.parametrize("base", ["tiny", "tiny-xl"])
def test_kohya_export_prints_each_consumers_largest_difference(tmp_path: Path, base: str) -> None:
    """SDXL: text encoders as lora_te1_ / lora_te2_, loaded by diffusers' kohya converter and by ComfyUI's names."""
    run = _run(tmp_path / "me", base=base)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "kohya", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "verified:" in ln]
    assert [ln.split("verified: ")[1].split(":")[0] for ln in lines] == ["kohya-diffusers", "kohya-comfyui"]
    assert all("largest difference UNet" in ln and "text encoder" in ln and ln.endswith(" ok") for ln in lines)
    assert "rounded to float16" in lines[0]
    te = "lora_te1" if base == "tiny-xl" else "lora_te"
    with safe_open(str(run / "export" / "me.safetensors"), "pt") as fh:  # alpha stays exact in a float16 file
        assert fh.get_tensor(f"{te}_text_model_encoder_layers_0_self_attn_q_proj.alpha").dtype == torch.float32
        prefixes = {key.split("_text_model")[0].split("_down_blocks")[0].split("_up_blocks")[0].split("_mid")[0]
                     for key in fh.keys()}
    assert prefixes == ({"lora_unet", "lora_te1", "lora_te2"} if base == "tiny-xl" else {"lora_unet", "lora_te"})
    assert sorted(p.name for p in (run / "export").iterdir()) == ["me.safetensors"]


@pytest.mark.parametrize("fault", ["transformers-5 text-encoder names", "alpha of one layer"])
def test_a_file_that_loads_as_another_model_is_an_error_and_no_file(tmp_path: Path, monkeypatch, fault: str) -> None:
    run = _run(tmp_path / "me")
    if fault == "alpha of one layer":
        real = kohya.to_kohya

        def to_kohya(layers, dtype=torch.float32, sdxl=None):
            state = real(layers, dtype, sdxl)
            key = next(k for k in state if k.endswith("attn1_to_q.alpha"))
            state[key] = state[key] * 2
            return state

        monkeypatch.setattr(kohya, "to_kohya", to_kohya)
    else:  # what kohya_name wrote before it restored transformers 4's text_model level
        monkeypatch.setattr(kohya, "kohya_name", lambda component, module, sdxl=False: (
            f"{kohya.KOHYA_PREFIXES[component]}_{module.removeprefix('text_model.').replace('.', '_')}"))
    result = CliRunner().invoke(app, ["export", str(run), "--format", "kohya"])
    assert isinstance(result.exception, SdtuneError), result.output
    assert "does not load as the trained LoRA" in str(result.exception) and "MISMATCH" in result.output
    assert not (run / "export").exists() or not any((run / "export").iterdir()), "no file, not even a temporary one"


def test_verification_catches_the_diffusers_script_names_and_export_rewrites_them(tmp_path: Path) -> None:
    # The diffusers example scripts' names (lora.down/up): diffusers 0.42 drops every attention layer of such a
    # file when it also holds convs (the bug 2623ae2 fixed in our writer). Files of other trainers look like it.
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    run = _run(tmp_path / "old")
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(run / "lora"), adapter_name="default")
    scripted = tmp_path / "scripted"
    StableDiffusionPipeline.save_lora_weights(scripted, unet_lora_layers=convert_state_dict_to_diffusers(
        get_peft_model_state_dict(pipe.unet)), weight_name="pytorch_lora_weights.safetensors")
    (check,) = verify_lora_file(scripted / "pytorch_lora_weights.safetensors", ["diffusers"], base="tiny")
    assert not check.ok and check.unet > 0.05 * check.effect["unet"], check.line()

    fixed = tmp_path / "fixed.safetensors"
    result = CliRunner().invoke(app, ["export", str(scripted / "pytorch_lora_weights.safetensors"), "--format",
                                      "diffusers", "--base", "tiny", "-o", str(fixed)])
    assert result.exit_code == 0, result.output
    assert "verified: diffusers: largest difference" in result.output and fixed.is_file()
    (again,) = verify_lora_file(fixed, ["diffusers"], base="tiny", source=scripted / "pytorch_lora_weights.safetensors")
    assert again.ok, again.line()


def test_comfyui_names_cover_every_layer_we_export(tmp_path: Path) -> None:
    pipe = load_pipeline("tiny")
    names = comfyui_key_map(pipe.unet, pipe.text_encoder)
    layers = kohya.read_diffusers_lora(_run(tmp_path / "me") / "lora" / "pytorch_lora_weights.safetensors")
    exported = {kohya.kohya_name(layer.component, layer.module) for layer in layers}
    assert exported <= set(names), sorted(exported - set(names))[:3]
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in names


def test_a_loose_file_needs_its_base(tmp_path: Path) -> None:
    run = _run(tmp_path / "me")
    loose = tmp_path / "loose.safetensors"
    loose.write_bytes((run / "lora" / "pytorch_lora_weights.safetensors").read_bytes())
    result = CliRunner().invoke(app, ["export", "kohya", str(loose)])
    assert isinstance(result.exception, SdtuneError) and "--base" in str(result.exception)
    ok = CliRunner().invoke(app, ["export", "kohya", str(loose), "--base", "tiny", "-o",
                                  str(tmp_path / "k.safetensors")])
    assert ok.exit_code == 0, ok.output


def test_end_of_training_check_of_run_lora(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from sdtune.models.lora import save_lora
    from sdtune.models.verify import verify_saved_lora

    settings = LoraSettings(rank=4, alpha=8.0, targets=WIDE)
    pipe = load_pipeline("tiny")
    add_lora(pipe.unet, settings, settings.targets)
    add_lora(pipe.text_encoder, settings, settings.text_encoder_targets)
    with torch.no_grad():
        for module in (pipe.unet, pipe.text_encoder):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    file = save_lora(tmp_path / "lora", pipe.unet, pipe.text_encoder, settings)
    assert verify_saved_lora(file, pipe.unet, pipe.text_encoder, base="tiny").ok
    state = load_file(str(file))
    key = next(k for k in state if k.startswith("text_encoder.") and "lora_B" in k)
    state[key] = state[key] * 0.5
    save_file(state, str(file), metadata=safe_open(str(file), "pt").metadata())
    with pytest.raises(SdtuneError, match="is not the trained weight"):
        verify_saved_lora(file, pipe.unet, pipe.text_encoder, base="tiny")


def test_a_lora_on_some_blocks_only_verifies(tmp_path: Path) -> None:
    """More than 20 full layer names as targets (a LoRA kept off some blocks): peft shortens the live list to
    the suffixes that select the same layers, so the written list differs in text but not in the layers it
    selects. The end-of-training check compared the lists and refused every such run after training it."""
    from sdtune.models.lora import save_lora
    from sdtune.models.verify import verify_saved_lora

    pipe = load_pipeline("tiny")
    leaves = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
    targets = [n for n, _ in pipe.unet.named_modules() if n.startswith(("down_blocks.", "up_blocks."))
               and any(n == t or n.endswith("." + t) for t in leaves)]
    assert len(targets) > 20
    settings = LoraSettings(rank=2, targets=targets)
    add_lora(pipe.unet, settings, targets)
    assert sorted(pipe.unet.peft_config["default"].target_modules) != sorted(targets)  # peft shortened them
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.fill_(0.01)
    file = save_lora(tmp_path, pipe.unet, None, settings)
    assert verify_saved_lora(file, pipe.unet, None, base="tiny").ok


@pytest.mark.parametrize("base", ["tiny", "tiny-xl"])
def test_each_consumer_is_undone_before_the_next(tmp_path: Path, base: str) -> None:
    """Verification loads every consumer into one base, one after the other (no copy of the model per consumer:
    at SD-2 shapes a copy is 4.8 GB): after each, the base computes bitwise what it computed before."""
    from sdtune.models.verify import _load, _loaded_then_undone, _text_module, probe_inputs, probe_outputs

    run = _run(tmp_path / "me", base=base)
    assert CliRunner().invoke(app, ["export", str(run), "--format", "kohya"]).exit_code == 0
    diffusers_file, kohya_file = run / "lora" / "pytorch_lora_weights.safetensors", run / "export" / "me.safetensors"
    pipe = load_pipeline(base)
    inputs = probe_inputs(pipe.unet, _text_module(pipe))
    before = probe_outputs(pipe.unet, _text_module(pipe), inputs)
    layers = sorted(n for n, _ in pipe.unet.named_modules())
    for consumer, file in (("diffusers", diffusers_file), ("kohya-diffusers", kohya_file),
                           ("kohya-comfyui", kohya_file)):
        with _loaded_then_undone(consumer, pipe, file):
            assert _load(consumer, pipe, file) == ""
            during = probe_outputs(pipe.unet, _text_module(pipe), inputs)
            assert all(not torch.equal(during[k], before[k]) for k in before), consumer  # it did load the LoRA
        after = probe_outputs(pipe.unet, _text_module(pipe), inputs)
        assert all(torch.equal(after[k], before[k]) for k in before), consumer
        assert sorted(n for n, _ in pipe.unet.named_modules()) == layers, consumer
