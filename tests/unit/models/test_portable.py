"""Pipelines sdtune saves store CLIP text-encoder weights under the names every transformers version loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from sdtune.models.loading import load_pipeline
from sdtune.models.portable import portable_key, portable_text_encoder, save_pipeline


def _keys(file: Path) -> list[str]:
    with safe_open(str(file), "pt") as handle:
        return list(handle.keys())


def test_saved_pipeline_text_encoder_has_transformers4_names_and_loads_back_equal(tmp_path: Path) -> None:
    from transformers import CLIPTextModel

    pipe = load_pipeline("tiny")
    assert not any(k.startswith("text_model.") for k in pipe.text_encoder.state_dict())  # transformers 5 names
    save_pipeline(pipe, tmp_path / "model")
    keys = _keys(tmp_path / "model" / "text_encoder" / "model.safetensors")
    assert keys and all(k.startswith("text_model.") for k in keys)
    reloaded = CLIPTextModel.from_pretrained(tmp_path / "model" / "text_encoder")
    ids = torch.randint(0, pipe.text_encoder.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(ids)[0], pipe.text_encoder(ids)[0])
    unet_keys = _keys(next((tmp_path / "model" / "unet").glob("*.safetensors")))
    assert not any(k.startswith("text_model.") for k in unet_keys)  # only text encoders are renamed


def test_projection_keys_stay_and_non_clip_folders_are_left_alone(tmp_path: Path) -> None:
    assert portable_key("encoder.layers.0.mlp.fc1.weight") == "text_model.encoder.layers.0.mlp.fc1.weight"
    assert portable_key("text_projection.weight") == "text_projection.weight"  # CLIPTextModelWithProjection
    assert portable_key("text_model.final_layer_norm.bias") == "text_model.final_layer_norm.bias"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["T5EncoderModel"]}), encoding="utf-8")
    assert portable_text_encoder(tmp_path) is False


def test_saved_tokenizer_has_slow_vocab_files_that_tokenize_the_same(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    pipe = load_pipeline("tiny")
    save_pipeline(pipe, tmp_path / "model")
    folder = tmp_path / "model" / "tokenizer"
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()  # transformers 4 needs them
    (folder / "tokenizer.json").unlink()  # only the slow files left: what an older transformers reads
    slow = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    for text in ("a photo of sks person", "a red disc, on a noisy background!"):
        assert slow(text).input_ids == pipe.tokenizer(text).input_ids
