"""Every model key of a run config (model.base, model.vae, model.adapters[i].path) is checked before any model loads,
and a bad one is one line that names the key and what to pass (found by a new user: ``sdtune train C model.vae=nope``
loaded the whole base model first, then printed diffusers' "nope does not appear to have a file named config.json").
This machine has no hub: a hub id that cannot be fetched is one of those lines too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdtune.config import config_from_dict
from sdtune.errors import ModelLoadError
from sdtune.models.loading import load_components
from sdtune.models.presets import preset_path
from sdtune.models.sources import check_model_sources, model_sources


def _cfg(tmp_path: Path, **model) -> object:
    train = {"lora": {"rank": 2}} if model.get("adapters") else {}
    return config_from_dict({"model": {"base": "tiny", **model}, "train": train,
                             "data": {"instance_dir": str(tmp_path), "instance_prompt": "a sks dog"}})


def _refused(cfg: object) -> str:
    with pytest.raises(ModelLoadError) as caught:
        check_model_sources(cfg)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_the_model_keys_are_every_model_path_of_the_schema(tmp_path: Path) -> None:
    """A model-path key added to the schema must join the one list, or it goes unchecked until it loads."""
    from sdtune.config import ModelConfig

    cfg = _cfg(tmp_path, vae="tiny", adapters=[{"path": str(tmp_path)}])
    checked = {key.split("[")[0] for key, _, _ in model_sources(cfg)}
    paths = {f"model.{name}" for name in ModelConfig.model_fields if name in ("base", "vae", "adapters")}
    assert checked == paths == {"model.base", "model.vae", "model.adapters"}


@pytest.mark.parametrize("model,needles", [
    ({"base": "nope"}, ["model.base: ", "'nope'", "huggingface-cli download", "local diffusers folder"]),
    ({"base": "./nope"}, ["model.base: ", "./nope does not exist"]),
    ({"vae": "nope"}, ["model.vae: ", "VAE 'nope'", "huggingface-cli download", "local VAE folder"]),
    ({"vae": "someone/vae-not-cached"}, ["model.vae: ", "not in the local Hugging Face cache", "local VAE folder"]),
    ({"vae": "./nope.safetensors"}, ["model.vae: ", "./nope.safetensors does not exist"]),
    ({"vae": "FOLDER"}, ["model.vae: ", "is a folder but not a VAE", "model folder with vae/"]),
    ({"vae": "FILE"}, ["model.vae: ", "is not a VAE weights file", ".safetensors VAE"]),
    ({"adapters": [{"path": "FOLDER"}]}, ["model.adapters[0].path: ", "no LoRA weights at", "pass a .safetensors"]),
])
def test_a_bad_model_key_is_one_line_naming_it_and_the_fix(tmp_path: Path, model: dict, needles: list[str]) -> None:
    (tmp_path / "notes.txt").write_text("not weights", encoding="utf-8")
    fill = {"FOLDER": str(tmp_path), "FILE": str(tmp_path / "notes.txt")}
    model = {k: ([{"path": fill.get(a["path"], a["path"])} for a in v] if k == "adapters" else fill.get(v, v))
             for k, v in model.items()}
    message = _refused(_cfg(tmp_path, **model))
    assert all(needle in message for needle in needles), message


def test_good_model_keys_pass(tmp_path: Path) -> None:
    vae_folder = preset_path("tiny") / "vae"
    check_model_sources(_cfg(tmp_path, vae="tiny"))  # a built-in model's VAE
    check_model_sources(_cfg(tmp_path, vae=str(vae_folder)))  # a diffusers VAE folder
    check_model_sources(_cfg(tmp_path, vae=str(preset_path("tiny"))))  # a model folder with vae/


def test_a_single_file_vae_loads_offline_with_the_base_models_config(tmp_path: Path) -> None:
    """diffusers' from_single_file fetches a default config from the hub (offline: an error after retries); the
    VAE replaces the base's, so the base's vae/config.json is the config that fits."""
    base = load_components("tiny").vae
    file = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(file))
    check_model_sources(_cfg(tmp_path, vae=str(file)))
    comps = load_components("tiny", vae=str(file))
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), comps.vae.state_dict().values(),
                                                 strict=True))
