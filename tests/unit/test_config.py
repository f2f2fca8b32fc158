"""The run schema: overrides, clear errors, every shipped config valid, saved config re-runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sdtune.config import (
    apply_overrides,
    config_from_dict,
    list_keys,
    load_config,
    resolve_config,
    save_config,
)
from sdtune.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _minimal(**data) -> dict:
    return {"data": {"instance_dir": "photos", "instance_prompt": "a photo of sks dog", **data}}


def test_overrides_parse_yaml_values_and_nested_keys() -> None:
    data = apply_overrides(_minimal(), ["train.max_steps=7", "train.lora.rank=4", "data.random_flip=true",
                                        "validation.prompts=[a, b]", "train.max_grad_norm=null", "model.base=x=y"])
    cfg = config_from_dict(data)
    assert cfg.train.max_steps == 7 and cfg.train.lora is not None and cfg.train.lora.rank == 4
    assert cfg.data.random_flip is True and cfg.validation.prompts == ["a", "b"]
    assert cfg.train.max_grad_norm is None and cfg.model.base == "x=y"
    assert cfg.method == "dreambooth-lora"


@pytest.mark.parametrize("data,needle", [
    ({"train": {"max_stepz": 1}}, "train.max_stepz: unknown key"),
    ({"train": {"max_steps": 0}}, "train.max_steps"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision"),
    ({"data": {"instance_dir": "x"}}, "needs data.instance_prompt"),
    ({"data": {}}, "no training data"),
    ({"data": {"train_dir": "x", "with_prior_preservation": True}}, "needs data.instance_dir"),
    # raised only after the dataset check and without the values before: now at load time, with both values
    ({"train": {"lr_scheduler": "cosine", "lr_warmup_steps": 1000, "max_steps": 800}},
     "train.lr_warmup_steps=1000 must be smaller than train.max_steps=800 (the cosine schedule"),
    ({"train": {"lr_warmup_steps": 100}}, "train.lr_warmup_steps=100 has no effect with train.lr_scheduler=constant"),
    ({"train": {"min_timestep": 500, "max_timestep": 500}}, "train.max_timestep=500 must be above "
     "train.min_timestep=500"),
    ({"train": {"min_timestep": -1}}, "train.min_timestep"),
    # AUTOMATIC1111 reads a LoRA's bundled token up to its first '.' (found by a newcomer review)
    ({"train": {"textual_inversion": {"token": "my.tok"}}}, "train.textual_inversion.token .*has a '.'.*'my_tok'"),
    ({"train": {"textual_inversion": {"token": "my tok"}}}, "train.textual_inversion.token .*one word, without spaces.*"
     "'my_tok'"),
    ({"train": {"textual_inversion": {"token": "sks", "lora_start": 0.5}}},
     "train.textual_inversion.lora_start holds a LoRA back until the token is learned .*add train.lora"),
    # found by a newcomer: a LoRA held back for every step was saved as all zeros; a gap trained nothing
    ({"train": {"max_steps": 4, "lora": {}, "textual_inversion": {"token": "sks", "lora_start": 0.9}}},
     "lora_start=0.9 holds the LoRA back for all 4 steps"),
    ({"train": {"max_steps": 4, "lora": {}, "textual_inversion": {"token": "sks", "lora_start": 0.75,
                                                                  "ti_fraction": 0.25}}},
     "starts the LoRA at step 4, after the token's last step 1 .*steps 2-3 would train nothing"),
    # a phase rounded away (found by a newcomer): 1 step with lora_start 0.5 trained both at once ("token steps
    # 1-1, LoRA steps 1-1"); ti_fraction 0.9 of 4 steps never froze the token
    ({"train": {"max_steps": 1, "lora": {}, "textual_inversion": {"token": "sks", "lora_start": 0.5,
                                                                  "ti_fraction": 0.5}}},
     "lora_start=0.5 of 1 step .*holds the LoRA back for no step"),
    ({"train": {"max_steps": 4, "lora": {}, "textual_inversion": {"token": "sks", "ti_fraction": 0.9}}},
     "ti_fraction=0.9 of 4 steps .*rounds to all of them, so the token never freezes"),
    # pydantic read true/false as 1/0: max_timestep=true trained timestep 0 alone, max_steps=true one step
    ({"train": {"max_timestep": True}}, "train.max_timestep = true: a yes/no value, where this key takes a number"),
    ({"train": {"max_steps": False}}, "train.max_steps = false: a yes/no value"),
    ({"train": {"lora": {"rank": True}}}, "train.lora.rank = true: a yes/no value"),
    ({"train": {"learning_rate": True}}, "train.learning_rate = true: a yes/no value"),
    # trained, then refused by the validation / class-image pipeline ("divisible by 8"): now at load time
    ({"data": {"instance_dir": "x", "instance_prompt": "p", "resolution": 500}},
     "data.resolution = 500: 500 is not a multiple of 8 .*use 496 or 504"),
])
def test_invalid_configs_name_the_key(data: dict, needle: str) -> None:
    base = _minimal() | data if "data" not in data else data
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(base)


def test_bad_override_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_is_valid(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    if "stages" in raw:  # recipes are validated by their own schema
        pytest.skip("recipe")
    needed = "data.instance_dir=photos/me" if "dreambooth" in path.name else "data.train_dir=data/thumbs"
    cfg = load_config(path, [needed])
    assert cfg.model.base.startswith(("stabilityai/", "stable-diffusion-v1-5/"))
    if "lora" in path.name:
        assert cfg.train.lora is not None and 4 <= cfg.train.lora.rank <= 32 and cfg.train.learning_rate == 1e-4
    else:
        assert cfg.train.lora is None and cfg.train.learning_rate <= 1e-5
    if "dreambooth-full" in path.name:
        assert cfg.data.with_prior_preservation and cfg.train.learning_rate <= 5e-6
    assert cfg.data.resolution == (1024 if "sdxl" in path.name else 768 if "768" in path.name else 512)
    if "sdxl" in path.name:  # the field's SDXL defaults: buckets, gradient checkpointing, 8-bit Adam for full
        assert cfg.data.buckets and cfg.train.gradient_checkpointing
        assert (cfg.train.lora is not None and 16 <= cfg.train.lora.rank <= 32) or cfg.train.optimizer == "adamw8bit"


def test_resolved_config_is_absolute_and_round_trips(tmp_path: Path) -> None:
    cfg = resolve_config(config_from_dict(_minimal() | {"output_dir": "runs/x"}), cwd=tmp_path)
    assert cfg.output_dir == tmp_path / "runs/x" and cfg.data.instance_dir == tmp_path / "photos"
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_every_path_key_is_made_absolute(tmp_path: Path) -> None:
    """A run re-runs and resumes from any folder: data.mask_dir was once left relative ("me-masks: data.mask_dir does
    not exist" from another folder, and a resume giving it absolute was refused as a data change). Every key typed
    Path is set here, relative, and must come back absolute."""
    data = _minimal(class_dir="class", cache_dir="cache", mask_dir="masks", masked_loss=True,
                    subsets=[{"path": "more"}])
    raw = data | {"output_dir": "runs/x", "model": {"adapters": [{"path": "concept.safetensors"}]},
                  "train": {"lora": {"rank": 4}}, "validation": {"loss": {"data_dir": "held-out"}}}
    cfg = resolve_config(config_from_dict(raw), cwd=tmp_path)
    text_to_image = resolve_config(config_from_dict({"data": {"train_dir": "images"}}), cwd=tmp_path)
    dumped = [cfg.model_dump(), text_to_image.model_dump()]  # data.train_dir and data.instance_dir: one or the other

    def values(node, parts: list[str]) -> list:
        if not parts:
            return [node]
        child = node.get(parts[0]) if isinstance(node, dict) else None
        if isinstance(child, list):
            return [v for item in child for v in values(item, parts[1:])]
        return [] if child is None else values(child, parts[1:])

    for key in [key for key, kind, _ in list_keys() if "Path" in kind]:
        found = [v for d in dumped for v in values(d, key.split("."))]
        assert found, f"{key}: set it in this test (every Path key must be covered)"
        assert all(Path(v).is_absolute() and str(v).startswith(str(tmp_path)) for v in found), (key, found)
    assert [s.path for s in cfg.data.subsets] == [tmp_path / "more"]


def test_config_keys_lists_nested_keys_with_defaults() -> None:
    keys = {k: d for k, _, d in list_keys()}
    assert "train.learning_rate" in keys and "0.0001" in keys["train.learning_rate"]
    assert "train.lora.rank" in keys and "data.prior_loss_weight" in keys and "train.ema.decay" in keys


def test_a_resolution_below_the_models_bucket_step_is_refused_before_the_model_loads(tmp_path: Path, capsys) -> None:
    """SD 1/2 buckets are multiples of 64 px: data.resolution=32 on such a model loaded it, then stopped on
    'ValueError: resolution 32 is smaller than the bucket step 64'. The model's config files alone tell."""
    import json

    from sdtune.cli import main
    from sdtune.models.presets import preset_path
    from tests.helpers import make_images

    model = tmp_path / "sd-configs-only"
    for part in ("vae", "unet"):
        config = json.loads((preset_path("tiny") / part / "config.json").read_text())
        blocks = "block_out_channels" if part == "vae" else "down_block_types"
        config[blocks] = [config[blocks][0]] * 4  # SD 1/2: 8x VAE, three UNet down-samplings: 64 px
        (model / part).mkdir(parents=True)
        (model / part / "config.json").write_text(json.dumps(config))
    data = {"instance_dir": str(make_images(tmp_path / "me", 2)), "instance_prompt": "a photo of sks dog",
            "resolution": 32}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "model": {"base": str(model)},
                                   "data": data, "logging": {"trackers": []}}))
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "data.resolution=32 is smaller than" in err and "bucket step of 64 px" in err, err
    assert "data.buckets=false" in err


def test_bad_yaml_is_one_line_with_its_position(tmp_path: Path) -> None:
    """Found by a newcomer: a mis-indented config printed PyYAML's six-line report naming "<unicode string>"."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  base: tiny\n data: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as failure:
        load_config(bad)
    message = str(failure.value)
    assert "\n" not in message and "<unicode string>" not in message, message
    assert message.startswith(f"{bad} is not valid YAML: line 3, column 2: expected <block end>"), message
    assert "while parsing a block mapping at line 1" in message, message


def test_a_timestep_range_past_the_schedule_is_refused_before_class_images_or_the_model(tmp_path: Path,
                                                                                      capsys) -> None:
    """Found by a newcomer: train.max_timestep=1200 was refused only after the class images were drawn and the model
    loaded; the schedule's length is read from the model's scheduler config, like the bucket step. The model
    folder here holds configs only, so anything that loads it (or draws class images with it) fails otherwise."""
    from sdtune.cli import main
    from sdtune.models.presets import preset_path
    from tests.helpers import make_images

    model = tmp_path / "sd-configs-only"
    for part, name in (("vae", "config.json"), ("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        (model / part).mkdir(parents=True)
        (model / part / name).write_text((preset_path("tiny") / part / name).read_text())
    data = {"instance_dir": str(make_images(tmp_path / "me", 2)), "instance_prompt": "a photo of sks dog",
            "resolution": 32, "buckets": False, "with_prior_preservation": True, "class_prompt": "a photo of a dog",
            "class_dir": str(tmp_path / "class"), "num_class_images": 2}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "model": {"base": str(model)},
                                   "data": data, "train": {"max_timestep": 1200}, "logging": {"trackers": []}}))
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(cfg)])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert "train.max_timestep=1200 is past the noise schedule's end (1000 timesteps)" in err, err
    assert not (tmp_path / "class").exists() or not any((tmp_path / "class").iterdir()), "no class image drawn"


@pytest.mark.parametrize("override,key,hint", [
    ("train.textual_inversion.lora_start=1.0", "train.textual_inversion.lora_start", "leave out train.lora"),
    ("data.mask_start=1", "data.mask_start", "data.masked_loss false"),
    ("train.lora.rank=0", "train.lora.rank", "rank"),
])
def test_a_number_out_of_its_range_says_what_the_key_means(override: str, key: str, hint: str) -> None:
    """"input should be less than 1" gives the bound, not what to choose: the line adds the key's meaning."""
    data = apply_overrides(_minimal(), ["train.lora.rank=4", "train.textual_inversion.token=<s>",
                                        "data.masked_loss=true", override])
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, overrides=[override])
    line = next(line for line in str(err.value).splitlines() if key in line)
    assert "input should be" in line and hint in line.split("input should be", 1)[1], line


def test_every_bounded_number_has_a_description() -> None:
    """A range error quotes the key's description (above): a bounded key without one would leave the bare bound."""
    import typing

    from pydantic import BaseModel

    from sdtune.config import RunConfig
    from sdtune.recipes.schema import Recipe

    bare: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            for sub in typing.get_args(field.annotation) or (field.annotation,):
                for inner in typing.get_args(sub) or (sub,):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        walk(inner, f"{prefix}{name}.")
            bounded = any(type(rule).__name__ in {"Ge", "Gt", "Le", "Lt", "MultipleOf"} for rule in field.metadata)
            if bounded and not field.description:
                bare.append(prefix + name)

    walk(RunConfig, "")
    walk(Recipe, "recipe: ")
    assert not bare, bare


@pytest.mark.parametrize("data,extra,key", [
    ({"masked_loss": True, "mask_dir": "me/masks"}, {}, "data.mask_dir"),
    ({"with_prior_preservation": True, "class_prompt": "a person", "class_dir": "me"}, {}, "data.class_dir"),
    ({}, {"train": {"lora": {"rank": 4}}, "validation": {"loss": {"data_dir": "me/held"}}}, "validation.loss.data_dir"),
])
def test_a_folder_inside_the_training_images_is_refused(tmp_path: Path, data: dict, extra: dict, key: str) -> None:
    """The photo folder is read with its subfolders: masks, class images, held-out images or samples inside it were
    trained as photos (a mask even found itself as its own mask, so nothing complained)."""
    raw = {"data": {"instance_dir": "me", "instance_prompt": "a photo of sks person", **data}, **extra}
    with pytest.raises(ConfigError, match=rf"^invalid config: {re.escape(key)} \S+ is (inside )?data.instance_dir me, "
                                          r".*would be trained as training images; move it out"):
        config_from_dict(raw)
    beside = yaml.safe_load(yaml.safe_dump(raw).replace("me/", "me-").replace("class_dir: me\n", "class_dir: mine\n"))
    config_from_dict(beside)  # beside it: fine
