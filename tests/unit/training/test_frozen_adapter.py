"""Training a LoRA on top of another kept as a frozen, unfused adapter (``model.adapters``: the concept under the
person) trains what training on the fused model trains; only the new adapter moves, and the run folder generates
with the stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtune.config import config_from_dict
from sdtune.errors import ConfigError
from sdtune.inference.pipeline import load_for_inference, read_run
from sdtune.inference.testing import make_lora_file
from sdtune.models.loading import load_pipeline
from tests.helpers import make_images, tiny_config


def _fused(lora: Path, folder: Path) -> Path:
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_unfused_concept_adapter_trains_like_the_fused_model(tmp_path: Path) -> None:
    from sdtune.training.loop import train

    concept = make_lora_file(tmp_path / "concept", seed=4, scale=0.5)
    data = {"instance_dir": str(make_images(tmp_path / "me", 3)), "instance_prompt": "a photo of sks dog"}
    lora = {"max_steps": 3, "lora": {"rank": 2}, "train_text_encoder": True}
    fused = tiny_config(tmp_path / "fused", data, lora)
    fused["model"] = {"base": str(_fused(concept, tmp_path / "fused-model"))}
    stacked = tiny_config(tmp_path / "stacked", data, lora)
    stacked["model"] = {"base": "tiny", "adapters": [{"path": str(concept), "name": "concept"}]}
    for cfg in (fused, stacked):
        train(config_from_dict(cfg))
    a = load_file(str(tmp_path / "fused" / "lora" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "stacked" / "lora" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys(), "only the trained adapter is saved, under the same names"
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4, rtol=1e-3), key
    state = load_file(str(tmp_path / "stacked" / "checkpoints" / "step-000003" / "trainable.safetensors"))
    assert state and all(".default." in k for k in state), "the concept adapter is frozen: not in the checkpoint"
    assert [a.name for a in read_run(tmp_path / "stacked").stack] == ["concept"]
    prompt = dict(prompt="a photo of sks dog", num_inference_steps=2, output_type="np")
    images = [load_for_inference(str(tmp_path / run))(**prompt, generator=torch.Generator().manual_seed(0)).images
              for run in ("fused", "stacked")]
    assert abs(images[0] - images[1]).max() < 1e-3, "the run folder generates with base + concept + person"


def test_adapters_need_a_lora_run_and_no_fused_output() -> None:
    data = {"instance_dir": "x", "instance_prompt": "sks"}
    model = {"base": "tiny", "adapters": [{"path": "c.safetensors", "name": "concept"}]}
    with pytest.raises(ConfigError, match="need train.lora"):
        config_from_dict({"data": data, "model": model})
    with pytest.raises(ConfigError, match="save.full_model"):
        config_from_dict({"data": data, "model": model, "train": {"lora": {}}, "save": {"full_model": True}})
    with pytest.raises(ConfigError, match="distinct names"):
        config_from_dict({"data": data, "train": {"lora": {}},
                          "model": {"adapters": [{"path": "a", "name": "x"}, {"path": "b", "name": "x"}]}})


def _xl_lora_with_both_text_encoders(folder: Path) -> Path:
    from sdtune.config import LoraConfig
    from sdtune.models.loading import load_components
    from sdtune.models.lora import add_lora, save_lora

    comps = load_components("tiny-xl")
    settings = LoraConfig(rank=2)
    add_lora(comps.unet, settings, settings.targets)
    add_lora(comps.text_encoder, settings, settings.text_encoder_targets)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (comps.unet, comps.text_encoder):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    folder.mkdir(parents=True)
    return save_lora(folder, comps.unet, comps.text_encoder, settings)


def test_sdxl_concept_with_text_encoder_layers_loads_frozen_on_both_encoders(tmp_path: Path) -> None:
    # DualTextEncoder has no load_adapter: SDXL adapters with text-encoder layers crashed with a traceback.
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtune.models.loading import load_components
    from sdtune.models.lora import apply_model_adapters

    file = _xl_lora_with_both_text_encoders(tmp_path / "concept")
    cfg = config_from_dict({"data": {"instance_dir": "x", "instance_prompt": "sks"}, "train": {"lora": {"rank": 2}},
                            "model": {"base": "tiny-xl", "adapters": [{"path": str(file), "name": "concept"}]}})
    comps = load_components("tiny-xl")
    ids = comps.tokenizer("a photo of sks dog", padding="max_length", max_length=comps.tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        before = comps.family.encode(comps.text_encoder, ids)
    apply_model_adapters(cfg, comps.unet, comps.text_encoder)
    for encoder in (comps.text_encoder.text_encoder, comps.text_encoder.text_encoder_2):
        layers = [m for m in encoder.modules() if isinstance(m, BaseTunerLayer) and "concept" in m.lora_A]
        assert layers, "the concept's layers of each encoder are loaded"
    assert not any(p.requires_grad for p in comps.text_encoder.parameters()), "frozen"
    with torch.no_grad():
        after = comps.family.encode(comps.text_encoder, ids)
    assert not torch.allclose(before.hidden, after.hidden) and not torch.allclose(before.pooled, after.pooled)


def test_an_adapter_of_another_family_is_one_line(tmp_path: Path) -> None:
    from sdtune.errors import ModelLoadError
    from sdtune.models.loading import load_components
    from sdtune.models.lora import apply_model_adapters

    sd_lora = make_lora_file(tmp_path / "sd", seed=1, scale=0.5)
    cfg = config_from_dict({"data": {"instance_dir": "x", "instance_prompt": "sks"}, "train": {"lora": {"rank": 2}},
                            "model": {"base": "tiny-xl", "adapters": [{"path": str(sd_lora), "name": "concept"}]}})
    comps = load_components("tiny-xl")
    with pytest.raises(ModelLoadError, match="model.adapters") as caught:
        apply_model_adapters(cfg, comps.unet, comps.text_encoder)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400
