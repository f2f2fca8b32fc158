"""The text encoder's LoRA is injected by peft itself, never by transformers' ``add_adapter`` (from transformers 5.24
it demands a peft newer than any released, which made sdtune uninstallable beside the current transformers), and
the injection is the one ``add_adapter`` made: same layers, names, initial draws, so checkpoints, resume and outputs
of runs trained before stay what they were."""

from __future__ import annotations

import pytest
import torch

from sdtune.config import LoraConfig as LoraSettings
from sdtune.models.lora import add_lora, peft_config


def _text_encoder():
    from sdtune.models.loading import load_pipeline

    return load_pipeline("tiny").text_encoder


def test_text_encoder_lora_is_injected_without_transformers_add_adapter() -> None:
    settings = LoraSettings(rank=4, alpha=8.0)
    encoder = _text_encoder()
    calls = []
    encoder.add_adapter = lambda *a, **k: calls.append(a)  # noqa: ARG005 - records a call, if one were made
    add_lora(encoder, settings, settings.text_encoder_targets)
    assert not calls
    trained = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and ".default." in n for n in trained)
    assert encoder.peft_config["default"].r == 4  # what verification and saving read


def test_injection_equals_what_add_adapter_made() -> None:
    settings = LoraSettings(rank=4, alpha=8.0)
    ours, theirs = _text_encoder(), _text_encoder()
    torch.manual_seed(0)
    add_lora(ours, settings, settings.text_encoder_targets)
    torch.manual_seed(0)
    try:
        theirs.requires_grad_(False)
        theirs.add_adapter(peft_config(settings, settings.text_encoder_targets))
    except Exception as exc:  # noqa: BLE001 - transformers >= 5.24 with a released peft: what we avoid
        pytest.skip(f"transformers' add_adapter does not run on this stack ({type(exc).__name__})")
    a, b = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, ours.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(ours(ids)[0], theirs(ids)[0])
