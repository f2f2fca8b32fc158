"""Differential output preservation: the starting model is the run's model with its LoRA at scale 0, exactly; a
frozen adapter below stays on; the term trains the LoRA only; config mistakes are one clear error."""

from __future__ import annotations

import pytest
import torch

from sdtune.config import LoraConfig, config_from_dict
from sdtune.errors import ConfigError
from sdtune.models.loading import load_components
from sdtune.models.lora import add_lora
from sdtune.training.preservation import OutputPreservation, trained_adapter_off


def _inputs(unet, text_encoder, tokenizer, prompt: str = "a photo of a dog"):
    gen = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    noisy = torch.randn(2, unet.config.in_channels, size, size, generator=gen)
    ids = tokenizer([prompt] * 2, padding="max_length", max_length=tokenizer.model_max_length,
                    return_tensors="pt").input_ids
    return noisy, torch.tensor([10, 500]), ids


def _randomize_lora(*modules) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _forward(unet, text_encoder, noisy, t, ids) -> torch.Tensor:
    with torch.no_grad():
        return unet(noisy, t, text_encoder(ids)[0]).sample


def test_trained_adapter_off_is_the_starting_model_exactly_and_touches_no_flag() -> None:
    comps = load_components("tiny")
    unet, te = comps.unet, comps.text_encoder
    noisy, t, ids = _inputs(unet, te, comps.tokenizer)
    start = _forward(unet, te, noisy, t, ids)
    settings = LoraConfig(rank=4)
    add_lora(unet, settings, settings.targets)
    add_lora(te, settings, settings.text_encoder_targets)
    _randomize_lora(unet, te)
    flags = {n: p.requires_grad for m in (unet, te) for n, p in m.named_parameters()}
    trained = _forward(unet, te, noisy, t, ids)
    assert not torch.allclose(trained, start, atol=1e-4)
    with trained_adapter_off(unet, te):
        assert torch.equal(_forward(unet, te, noisy, t, ids), start)
    assert torch.equal(_forward(unet, te, noisy, t, ids), trained)  # scale restored
    assert flags == {n: p.requires_grad for m in (unet, te) for n, p in m.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"), trained_adapter_off(unet):
        raise RuntimeError("inside")
    assert torch.equal(_forward(unet, te, noisy, t, ids), trained)  # restored after an error too


def test_a_frozen_adapter_below_stays_on() -> None:
    from peft import inject_adapter_in_model

    from sdtune.models.lora import peft_config

    comps = load_components("tiny")
    unet, te = comps.unet, comps.text_encoder
    noisy, t, ids = _inputs(unet, te, comps.tokenizer)
    settings = LoraConfig(rank=4)
    inject_adapter_in_model(peft_config(settings, settings.targets), unet, adapter_name="concept")
    _randomize_lora(unet)
    with_concept = _forward(unet, te, noisy, t, ids)
    unet.add_adapter(peft_config(settings, settings.targets))  # the trained one, "default"
    unet.set_adapters(["concept", "default"])
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B.default" in name:
                p.fill_(0.05)
    assert not torch.allclose(_forward(unet, te, noisy, t, ids), with_concept, atol=1e-4)
    with trained_adapter_off(unet):
        assert torch.allclose(_forward(unet, te, noisy, t, ids), with_concept, atol=1e-6)


@pytest.mark.parametrize("base", ["tiny", "tiny-xl"])
def test_the_term_is_zero_at_the_start_and_trains_only_the_lora(base: str) -> None:
    comps = load_components(base)
    unet, te = comps.unet, comps.text_encoder
    settings = LoraConfig(rank=4)
    add_lora(unet, settings, settings.targets)
    add_lora(te, settings, settings.text_encoder_targets)
    noisy, t, _ = _inputs(unet, te, comps.tokenizer)
    term = OutputPreservation(["a photo of a dog", "a red ball"], 2.0, comps.tokenizer)
    size = noisy.shape[-1] * 8  # SDXL's added conditioning: the training images' own size and crop
    crops = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
    torch.manual_seed(0)
    # LoRA B starts at zero: nothing moved yet
    assert term.loss(unet, te, True, noisy, t, comps.family, crops).item() == 0.0
    _randomize_lora(unet, te)
    torch.manual_seed(0)
    loss = term.loss(unet, te, True, noisy, t, comps.family, crops)
    loss.backward()
    assert loss.item() > 0
    grads = {n for m in (unet, te) for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all("lora_" in n for n in grads)
    assert any("encoder.layers" in n for n in grads)  # the prompt's embedding is pulled back too


def test_config_errors_name_the_fix() -> None:
    data = {"instance_dir": "x", "instance_prompt": "a photo of sks dog"}
    with pytest.raises(ConfigError, match="needs train.lora"):
        config_from_dict({"data": data, "train": {"preservation": {"weight": 1.0}}})
    with pytest.raises(ConfigError, match="train.preservation.prompts"):
        config_from_dict({"data": data, "train": {"lora": {}, "preservation": {}}})
    cfg = config_from_dict({"data": {**data, "class_prompt": "a photo of a dog", "class_dir": "c"},
                            "train": {"lora": {}, "preservation": {"weight": 0.5}}})
    assert cfg.train.preservation.resolved_prompts(cfg.data) == ["a photo of a dog"]
