"""Textual inversion's pieces: the wrapped embedding, the added token, the config's refusals, the file format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.config import config_from_dict
from sdtune.errors import ConfigError, ModelLoadError


def _base_embedding(dtype: torch.dtype = torch.float32) -> torch.nn.Embedding:
    torch.manual_seed(0)
    return torch.nn.Embedding(10, 4).to(dtype).requires_grad_(False)


def test_learned_rows_replace_only_their_ids_and_take_all_the_gradient() -> None:
    from sdtune.models.embeddings import LearnedTokenEmbedding

    base = _base_embedding()
    rows = torch.full((1, 4), 3.0)
    wrapped = LearnedTokenEmbedding(base, [10], rows)  # an id past the base's rows, as an added token is
    ids = torch.tensor([[1, 10, 2, 10]])
    out = wrapped(ids)
    assert torch.equal(out[0, 0], base.weight[1]) and torch.equal(out[0, 2], base.weight[2])
    assert torch.equal(out[0, 1], rows[0]) and torch.equal(out[0, 3], rows[0])
    out.sum().backward()
    assert base.weight.grad is None
    assert torch.equal(wrapped.learned.weight.grad, torch.full((1, 4), 2.0)), "one gradient per occurrence"
    assert [p for p in wrapped.parameters() if p.requires_grad] == [wrapped.learned.weight]


def test_learned_row_stays_fp32_under_a_bf16_base_and_frozen_rows_come_first() -> None:
    from sdtune.models.embeddings import LearnedTokenEmbedding

    wrapped = LearnedTokenEmbedding(_base_embedding(torch.bfloat16), [3], torch.ones(1, 4))
    out = wrapped(torch.tensor([[3, 4]]))
    assert out.dtype == torch.bfloat16
    assert wrapped.learned.weight.dtype == torch.float32
    assert next(wrapped.parameters()).dtype == torch.bfloat16, "transformers reads a model's dtype from it"
    out.float().sum().backward()
    assert wrapped.learned.weight.grad.dtype == torch.float32


def test_added_token_tokenizes_as_diffusers_adds_it_and_starts_from_its_old_word() -> None:
    from sdtune.models.embeddings import add_learned_token, learned_state
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline("tiny")
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    old_ids = tokenizer("sks", add_special_tokens=False).input_ids
    start = encoder.get_input_embeddings().weight[old_ids].mean(0)
    before = encoder(tokenizer("a red disc", return_tensors="pt").input_ids)[0]
    add_learned_token(tokenizer, encoder, "sks", None)
    assert tokenizer.tokenize("a photo of sks dog") == [*tokenizer.tokenize("a photo of"), "sks",
                                                         *tokenizer.tokenize("dog")]
    state = learned_state(encoder, "sks")
    assert list(state) == ["sks"] and torch.allclose(state["sks"][0], start)
    after = encoder(tokenizer("a red disc", return_tensors="pt").input_ids)[0]
    assert torch.equal(before, after), "a prompt without the token encodes exactly as before"


def test_a_token_already_in_the_vocabulary_is_refused_as_diffusers_would() -> None:
    from sdtune.models.embeddings import add_learned_token
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline("tiny")
    with pytest.raises(ConfigError, match="already a token of the model's vocabulary"):
        add_learned_token(pipe.tokenizer, pipe.text_encoder, "a", None)
    with pytest.raises(ConfigError, match="has no tokens"):
        add_learned_token(pipe.tokenizer, pipe.text_encoder, "<me>", "   ")


def _cfg(**train) -> dict:
    return {"data": {"instance_dir": "x", "instance_prompt": "a photo of sks dog"},
            "train": {"textual_inversion": {"token": "sks"}, **train}}


@pytest.mark.parametrize("train,message", [
    ({"textual_inversion": {"token": "sks", "ti_fraction": 0.5}}, "add train.lora, or set ti_fraction to 1.0"),
    ({"train_text_encoder": True}, "remove train.train_text_encoder"),
    ({"lora": {"rank": 4}, "train_text_encoder": True}, "remove train.train_text_encoder"),
    ({"preservation": {"weight": 1.0, "prompts": ["a dog"]}}, "it needs train.lora"),
])
def test_textual_inversion_refuses_what_it_cannot_train_with(train: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_cfg(**train))


def test_instance_prompt_must_hold_the_token_and_full_model_is_refused() -> None:
    cfg = _cfg()
    cfg["data"]["instance_prompt"] = "a photo of a dog"
    with pytest.raises(ConfigError, match="does not contain train.textual_inversion.token 'sks'"):
        config_from_dict(cfg)
    with pytest.raises(ConfigError, match="remove save.full_model"):
        config_from_dict({**_cfg(), "save": {"full_model": True}})
    with pytest.raises(ConfigError, match="token"):
        config_from_dict(_cfg(textual_inversion={"token": "two words"}))


def test_textual_inversion_method_name_and_frozen_adapters_allowed() -> None:
    cfg = config_from_dict({**_cfg(), "model": {"base": "tiny", "adapters": [{"path": "concept.safetensors"}]}})
    assert cfg.method == "dreambooth-textual-inversion"
    assert cfg.train.trains_text and not cfg.train.train_text_encoder


def test_embedding_file_names_and_format_errors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from sdtune.models.embeddings import embedding_file_name, load_into_pipeline
    from sdtune.models.loading import load_pipeline

    assert embedding_file_name("sks") == "sks.safetensors"
    assert embedding_file_name("<my token>") == "_my_token_.safetensors"
    two = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 32)}, str(two))
    with pytest.raises(ModelLoadError, match="made for SDXL"):
        load_into_pipeline(load_pipeline("tiny"), two, "sks")
    wide = tmp_path / "wide.safetensors"
    save_file({"sks": torch.zeros(1, 768)}, str(wide))
    with pytest.raises(ModelLoadError, match="Was it trained on this base model"):
        load_into_pipeline(load_pipeline("tiny"), wide)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="broken.safetensors is damaged or not a safetensors file"):
        load_into_pipeline(load_pipeline("tiny"), broken)


def test_norm_limit_caps_the_row_the_encoder_sees_and_the_file_holds() -> None:
    from sdtune.models.embeddings import LearnedTokenEmbedding

    base = _base_embedding()
    longest = float(base.weight.norm(dim=-1).max())
    wrapped = LearnedTokenEmbedding(base, [10], torch.full((1, 4), 5.0), norm_limit=2.0)
    row = wrapped(torch.tensor([[10]]))[0, 0]
    assert abs(float(row.norm()) - 2.0 * longest) < 1e-5
    assert torch.allclose(wrapped.rows()[0], row)
    short = LearnedTokenEmbedding(base, [10], torch.full((1, 4), 1e-3), norm_limit=2.0)
    assert torch.equal(short.rows(), short.learned.weight), "a row within the limit is left as it is"


def test_pivotal_tuning_is_textual_inversion_with_a_lora() -> None:
    from sdtune.training.pivotal import embedding_steps

    cfg = config_from_dict(_cfg(lora={"rank": 4}, max_steps=10, preservation={"prompts": ["a dog"]},
                                textual_inversion={"token": "sks", "learning_rate": 1e-2, "ti_fraction": 0.25}))
    assert cfg.method == "dreambooth-pivotal" and cfg.is_pivotal and not cfg.is_full
    assert embedding_steps(cfg) == 2  # round(0.25 * 10)
    assert embedding_steps(config_from_dict(_cfg(lora={"rank": 4}))) is None, "ti_fraction 1: never frozen"
    with pytest.raises(ConfigError, match="remove save.full_model"):
        config_from_dict({**_cfg(lora={"rank": 4}), "save": {"full_model": True}})


def test_frozen_embedding_loses_its_gradient_only_from_its_last_step_on() -> None:
    from sdtune.training.pivotal import freeze_embedding_if_due

    cfg = config_from_dict(_cfg(lora={"rank": 4}, max_steps=4,
                                textual_inversion={"token": "sks", "ti_fraction": 0.5}))
    encoder = torch.nn.Linear(2, 2)
    encoder.weight.requires_grad_(False)
    for step, frozen in [(0, False), (1, False), (2, True), (3, True)]:
        encoder.bias.grad = torch.ones(2)
        assert freeze_embedding_if_due(cfg, encoder, step) is frozen
        assert (encoder.bias.grad is None) is frozen, step


def test_multi_vector_token_is_written_out_as_diffusers_pipelines_write_it() -> None:
    from sdtune.models.embeddings import add_learned_token, expand_prompt, learned_state, vector_tokens
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline("tiny")
    assert expand_prompt("a photo of sks dog", pipe.tokenizer) == "a photo of sks dog", "nothing added yet"
    add_learned_token(pipe.tokenizer, pipe.text_encoder, "sks", "dog", num_vectors=3)
    assert vector_tokens("sks", 3) == ["sks", "sks_1", "sks_2"]
    expanded = expand_prompt("a photo of sks dog", pipe.tokenizer)
    assert expanded == "a photo of sks sks_1 sks_2 dog" == pipe.maybe_convert_prompt("a photo of sks dog",
                                                                                       pipe.tokenizer)
    state = learned_state(pipe.text_encoder, "sks")
    assert state["sks"].shape == (3, pipe.text_encoder.config.hidden_size)
    fresh = load_pipeline("tiny")
    fresh.tokenizer.add_tokens(["zz_1"])
    with pytest.raises(ConfigError, match="'zz_1' is already a token"):
        add_learned_token(fresh.tokenizer, fresh.text_encoder, "zz", None, num_vectors=2)


def test_embedding_bundles_into_a_lora_as_automatic1111_reads_it(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from sdtune.models.embeddings import bundle_state, unbundle

    sd = tmp_path / "sks.safetensors"
    save_file({"sks": torch.ones(2, 4)}, str(sd), metadata={"token": "sks"})
    assert list(bundle_state(sd)) == ["bundle_emb.sks.string_to_param.*"]
    assert torch.equal(unbundle(bundle_state(sd))["sks"]["sks"], torch.ones(2, 4))
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": torch.ones(1, 4), "clip_g": torch.zeros(1, 8)}, str(xl), metadata={"token": "<p>"})
    assert sorted(bundle_state(xl)) == ["bundle_emb.<p>.clip_g", "bundle_emb.<p>.clip_l"]
    assert sorted(unbundle({**bundle_state(xl), "lora_unet_x.alpha": torch.ones(())})["<p>"]) == ["clip_g", "clip_l"]
