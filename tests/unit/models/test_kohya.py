"""kohya export: names, alphas, and the round trip through diffusers' own kohya loader gives the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sdtune.config import LoraConfig as LoraSettings
from sdtune.errors import SdtuneError
from sdtune.models.kohya import export_kohya, kohya_name, peft_scale, read_diffusers_lora, to_kohya
from sdtune.models.loading import load_pipeline
from sdtune.models.lora import save_lora
from tests.helpers import tiny_pipeline_with_lora


def test_kohya_names_follow_the_module_path() -> None:
    assert kohya_name("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0") == \
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert kohya_name("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj") == \
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert kohya_name("text_encoder_2", "text_model.encoder.layers.3.mlp.fc1") == \
        "lora_te2_text_model_encoder_layers_3_mlp_fc1"


def test_peft_scale_follows_alpha_rank_patterns_and_rslora() -> None:
    assert peft_scale({}, "to_q", 4) == 1.0  # no metadata: diffusers loads with alpha = rank
    assert peft_scale({"r": 4, "lora_alpha": 8}, "x.to_q", 4) == 2.0
    cfg = {"r": 4, "lora_alpha": 4, "rank_pattern": {"to_k": 8}, "alpha_pattern": {"attn2.to_k": 2}}
    assert peft_scale(cfg, "blocks.0.attn2.to_k", 8) == 2 / 8
    assert peft_scale(cfg, "blocks.0.attn1.to_k", 8) == 4 / 8
    assert peft_scale(cfg, "blocks.0.attn1.to_q", 4) == 1.0
    assert peft_scale({"r": 16, "lora_alpha": 8, "use_rslora": True}, "to_q", 16) == 2.0
    with pytest.raises(SdtuneError, match="DoRA"):
        peft_scale({"r": 4, "use_dora": True}, "to_q", 4)


def _random_lora_file(folder: Path, rank: int = 4, alpha: float = 8.0) -> Path:
    """A diffusers-format LoRA (UNet + text encoder) saved by the engine's own writer, with non-zero weights."""
    settings = LoraSettings(rank=rank, alpha=alpha)
    pipe = tiny_pipeline_with_lora(settings, seed=0, scale=0.3)
    folder.mkdir(parents=True, exist_ok=True)
    return save_lora(folder, pipe.unet, pipe.text_encoder, settings)


def _images(lora: Path | None) -> np.ndarray:
    pipe = load_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    return pipe(["a photo of sks person", "a dog"], num_inference_steps=3, height=32, width=32, output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in (0, 1)]).images


def test_to_kohya_writes_down_up_and_alpha(tmp_path: Path) -> None:
    layers = read_diffusers_lora(_random_lora_file(tmp_path / "lora", rank=4, alpha=8.0))
    assert {layer.component for layer in layers} == {"unet", "text_encoder"}
    assert all(layer.scale == 2.0 and layer.rank == 4 for layer in layers)
    state = to_kohya(layers)
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert state[f"{name}.lora_down.weight"].shape == (4, 64)
    assert state[f"{name}.lora_up.weight"].shape == (64, 4)
    assert float(state[f"{name}.alpha"]) == 8.0
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in state
    assert len(state) == 3 * len(layers)


def test_kohya_round_trip_through_diffusers_gives_the_same_images(tmp_path: Path) -> None:
    source = _random_lora_file(tmp_path / "lora", rank=4, alpha=8.0)  # alpha != rank: the scale must survive
    target = export_kohya(source, tmp_path / "out" / "me.safetensors")
    with safe_open(str(target), "pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8.0"
    from diffusers import StableDiffusionPipeline

    state, alphas = StableDiffusionPipeline.lora_state_dict(str(target))
    assert alphas, "diffusers did not read the file as a kohya LoRA"
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(target))
    for module in (pipe.unet, pipe.text_encoder):  # both parts were applied, not only the UNet
        assert sum("lora_A" in name for name, _ in module.named_modules()) >= 8
    diffusers_images, kohya_images, base = _images(source), _images(target), _images(None)
    assert np.abs(diffusers_images - base).max() > 0.05, "the LoRA must change the images for the test to mean much"
    np.testing.assert_allclose(kohya_images, diffusers_images, atol=1e-5)


def test_extracted_conv_lora_round_trips_too(tmp_path: Path) -> None:
    from sdtune.models.extract import extract_lora
    from tests.unit.models.test_extract import _perturbed_tiny

    tuned = _perturbed_tiny(tmp_path / "tuned", conv3x3=True)
    extract_lora("tiny", str(tuned), tmp_path / "lora", 3, conv=True)
    source = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    target = export_kohya(source, tmp_path / "k.safetensors", dtype="float32")
    assert any("resnets_0_conv1" in k for k in safe_open(str(target), "pt").keys())
    np.testing.assert_allclose(_images(target), _images(source), atol=1e-5)


def test_half_precision_export_and_bad_inputs(tmp_path: Path) -> None:
    source = _random_lora_file(tmp_path / "lora")
    half = export_kohya(source, tmp_path / "half.safetensors", dtype="float16")
    with safe_open(str(half), "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.float16 for k in fh.keys() if not k.endswith(".alpha"))
        assert all(fh.get_tensor(k).dtype == torch.float32 for k in fh.keys() if k.endswith(".alpha"))  # exact scale
    with pytest.raises(SdtuneError, match="already in the kohya format"):
        export_kohya(half, tmp_path / "again.safetensors")
    with pytest.raises(SdtuneError, match="dtype"):
        export_kohya(source, tmp_path / "x.safetensors", dtype="int8")
    meta = json.loads(safe_open(str(source), "pt").metadata()["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 8.0 or meta["unet.lora_alpha"] == 8


def test_export_cli_forms(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sdtune.cli import app

    run = tmp_path / "me"
    _random_lora_file(run / "lora")
    (run / "config.yaml").write_text("model:\n  base: tiny\n", encoding="utf-8")  # the base exports verify against
    runner = CliRunner()
    short = runner.invoke(app, ["export", str(run), "--format", "kohya"])
    assert short.exit_code == 0, short.output
    assert (run / "export" / "me.safetensors").is_file()
    sub = runner.invoke(app, ["export", "kohya", str(run), "-o", str(tmp_path / "x.safetensors"), "--dtype",
                              "float16"])
    assert sub.exit_code == 0, sub.output
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as a, safe_open(str(run / "export" / "me.safetensors"),
                                                                          "pt") as b:
        assert set(a.keys()) == set(b.keys())
    wrong = runner.invoke(app, ["export", str(run), "--format", "onnx"])
    assert wrong.exit_code != 0 and "unknown format" in str(wrong.exception)
    full = tmp_path / "full"
    (full / "model").mkdir(parents=True)
    missing = runner.invoke(app, ["export", str(full), "--format", "kohya"])
    assert "sdtune export lora --from" in str(missing.exception)


def a1111_version(metadata: dict[str, str]) -> str:
    """How AUTOMATIC1111 files a LoRA (extensions-builtin/Lora/network.py ``NetworkOnDisk.detect_version``): it
    shows only the LoRAs of the loaded model's version."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


@pytest.mark.parametrize(("preset", "generation", "prediction", "version", "ui"), [
    ("real-sd15", "sd1", "epsilon", "sd_v1", "SD1"),
    ("real-sd2-base", "sd2", "epsilon", "sd_v2", "SD2"),
    ("real-sd2-768", "sd2", "v_prediction", "sd_v2_v", "SD2"),
    ("real-sdxl", "sdxl", "epsilon", "sdxl_base_v1-0", "SDXL"),
])
def test_the_base_version_is_what_kohya_and_a1111_call_it(preset, generation, prediction, version, ui) -> None:
    """Read from the configs of the real architectures (no weights): the version kohya writes, and A1111's verdict."""
    from sdtune.models.family import base_generation
    from sdtune.models.kohya import base_metadata
    from sdtune.models.real import configs_path

    assert base_generation(str(configs_path(preset))) == (generation, prediction)
    meta = base_metadata(generation, prediction, title="me", resolution=768)
    assert meta["ss_base_model_version"] == version and a1111_version(meta) == ui
    assert meta["ss_v2"] == str(generation == "sd2")
    assert meta["modelspec.architecture"].endswith("/lora") and meta["modelspec.resolution"] == "768x768"
    assert meta["modelspec.prediction_type"] == ("v" if prediction == "v_prediction" else "epsilon")


@pytest.mark.parametrize(("base", "version"), [("tiny", "sd_v1"), ("tiny-v", "sd_v1_v"), ("tiny-xl", "sdxl_base_v1-0")])
def test_kohya_export_of_a_run_says_its_base(tmp_path: Path, base: str, version: str) -> None:
    """An SDXL LoRA exported without ``ss_base_model_version`` is filed as SD 1 by AUTOMATIC1111 and hidden while an
    SDXL model is loaded; a v-prediction run's file says so (kohya's ``_v``)."""
    from typer.testing import CliRunner

    from sdtune.cli import app
    from sdtune.inference.testing import make_run_folder

    run = make_run_folder(tmp_path / "me", base=base)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "kohya"])
    assert result.exit_code == 0, result.output
    with safe_open(str(run / "export" / "me.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["ss_base_model_version"] == version
    assert a1111_version(meta) == ("SDXL" if base == "tiny-xl" else "SD1")
    assert meta["modelspec.title"] == "me" and meta["modelspec.resolution"] == "512x512"  # the config's default
    assert meta["ss_network_module"] == "networks.lora"
