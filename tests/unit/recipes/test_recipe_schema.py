"""Recipe files: stages, merged configs, stage bases, overrides routed by stage name, errors before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdtune.errors import ConfigError
from sdtune.recipes import load_recipe, stage_configs
from sdtune.recipes.schema import route_overrides

REPO = Path(__file__).resolve().parents[3]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _recipe(tmp: Path, **changes) -> dict:
    data = {
        "output_dir": str(tmp / "out"),
        "defaults": {"model": {"base": "tiny"}, "data": {"resolution": 32}, "train": {"max_steps": 5},
                     "logging": {"trackers": []}},
        "stages": [
            {"name": "concept", "config": {"data": {"train_dir": "thumbs"}, "train": {"lora": {"rank": 4}}}},
            {"name": "person", "base": "stage:concept",
             "config": {"data": {"instance_dir": "me", "instance_prompt": "a photo of sks person"},
                        "train": {"lora": {"rank": 2}, "max_steps": 7}}},
        ],
    }
    data.update(changes)
    return data


def test_stages_merge_defaults_and_chain_bases(tmp_path: Path) -> None:
    recipe = load_recipe(_write(tmp_path / "r.yaml", _recipe(tmp_path)))
    (concept, c_cfg), (person, p_cfg) = stage_configs(recipe)
    assert Path(c_cfg.output_dir) == (tmp_path / "out" / "concept").resolve()
    assert c_cfg.model.base == "tiny" and c_cfg.data.resolution == 32 and c_cfg.train.max_steps == 5
    assert c_cfg.save.full_model, "a LoRA stage another stage builds on must also save its fused model"
    assert p_cfg.model.base == str((tmp_path / "out" / "concept" / "model").resolve())
    assert p_cfg.train.max_steps == 7 and p_cfg.train.lora is not None and p_cfg.train.lora.rank == 2
    assert not p_cfg.save.full_model
    assert person.base_stage == "concept" and concept.extract_rank == 32
    assert p_cfg.data.instance_dir == (Path.cwd() / "me").resolve()  # relative to where sdtune runs, as train


def test_overrides_are_routed_by_stage_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "r.yaml", _recipe(tmp_path))
    recipe = load_recipe(path, ["person.train.max_steps=2", "concept.extract_rank=8", "concept.train.lora=null",
                                f"output_dir={tmp_path / 'other'}", "defaults.data.resolution=64"])
    (concept, c_cfg), (_, p_cfg) = stage_configs(recipe)
    assert p_cfg.train.max_steps == 2 and concept.extract_rank == 8
    assert c_cfg.train.lora is None and not c_cfg.save.full_model  # a full stage saves its model anyway
    assert c_cfg.data.resolution == 64 and "other" in str(c_cfg.output_dir)
    assert route_overrides({"stages": [{"name": "a"}]}, ["a.config.data.x=1", "a.base=tiny", "b.c=1"]) == \
        ["stages.0.config.data.x=1", "stages.0.base=tiny", "b.c=1"]


def test_config_file_sits_between_defaults_and_the_stage_config(tmp_path: Path) -> None:
    _write(tmp_path / "db.yaml", {"train": {"learning_rate": 3e-4, "max_steps": 9}, "data": {"resolution": 48}})
    data = _recipe(tmp_path)
    data["stages"][0]["config_file"] = str(tmp_path / "db.yaml")
    data["stages"][0]["config"]["train"]["max_steps"] = 11
    (_, cfg), _ = stage_configs(load_recipe(_write(tmp_path / "r.yaml", data)))
    assert cfg.train.learning_rate == 3e-4 and cfg.data.resolution == 48 and cfg.train.max_steps == 11


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d["stages"][1].update(base="stage:later"), "no earlier stage is named 'later'"),
    (lambda d: d["stages"][1].update(name="concept"), "two stages are named 'concept'"),
    (lambda d: d["stages"][0].update(name="defaults"), "reserved"),
    (lambda d: d["stages"][0].update(name="a b"), "name"),
    (lambda d: d["stages"][1]["config"]["train"].update(max_stepz=3), "max_stepz"),
    (lambda d: d["stages"][1]["config"].update(output_dir="x"), "set the recipe's output_dir"),
    (lambda d: d["stages"][1]["config"].update(model={"base": "tiny"}), "both base and config.model.base"),
    (lambda d: d.update(stages=[]), "stages"),
])
def test_mistakes_are_reported_before_anything_trains(tmp_path: Path, change, message: str) -> None:
    data = _recipe(tmp_path)
    change(data)
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write(tmp_path / "r.yaml", data))


def test_unknown_stage_in_an_override_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'persn' is not a stage of this recipe; did you mean "
                                          r"person\.train\.max_steps\? its stages: concept, person") as caught:
        load_recipe(_write(tmp_path / "r.yaml", _recipe(tmp_path)), ["persn.train.max_steps=2"])
    assert "config-keys" not in str(caught.value)


def test_a_misspelt_top_level_key_is_named_even_with_stage_overrides(tmp_path: Path) -> None:
    """`stage:` for `stages:` used to surface as "'concept' is not a stage of this recipe; its stages: " (none)."""
    data = _recipe(tmp_path)
    data["stage"] = data.pop("stages")
    path = _write(tmp_path / "r.yaml", data)
    with pytest.raises(ConfigError, match=r"r\.yaml: stage: unknown key; did you mean stages\?"):
        load_recipe(path, ["concept.train.max_steps=2"])


def test_shipped_two_stage_recipe_is_valid(tmp_path: Path) -> None:
    from tests.helpers import make_images

    thumbs = make_images(tmp_path / "thumbs", 2, captions=["a man giving a thumbs up", "a thumbs up"])
    recipe = load_recipe(REPO / "configs" / "two-stage.yaml", [f"concept.data.train_dir={thumbs}"])
    (concept, c_cfg), (person, p_cfg) = stage_configs(recipe)
    assert [concept.name, person.name] == ["concept", "person"] and person.base == "stage:concept"
    assert c_cfg.train.lora is not None and c_cfg.save.full_model and c_cfg.data.train_dir is not None
    assert p_cfg.method == "dreambooth-pivotal" and p_cfg.data.class_prompt == "a photo of a person"
    # the measured default keeps the class prompt and the concept by output preservation, no class images
    assert not p_cfg.data.with_prior_preservation and p_cfg.train.preservation is not None
    assert p_cfg.train.preservation.prompts == ["a photo of a person", "a man giving a thumbs up", "a thumbs up"]
    assert p_cfg.model.base.endswith("concept/model") and p_cfg.checkpoint.keep >= 8
    full = stage_configs(load_recipe(REPO / "configs" / "two-stage.yaml", ["concept.train.lora=null",
                                                                         f"concept.data.train_dir={thumbs}"]))
    assert full[0][1].method == "text-to-image-full"


def test_a_missing_data_folder_names_its_stage(tmp_path: Path) -> None:
    """The folder came from `person.data.instance_dir=...`: the message says which stage's key it is."""
    from sdtune.errors import DataError
    from sdtune.recipes.runner import preflight

    data = _recipe(tmp_path)
    from tests.helpers import make_images

    thumbs = make_images(tmp_path / "thumbs", 3, captions=["a thumbs up"])
    data["stages"][0]["config"]["data"]["train_dir"] = str(thumbs)
    recipe = load_recipe(_write(tmp_path / "r.yaml", data), [f"person.data.instance_dir={tmp_path / 'nope'}"])
    with pytest.raises(DataError, match=r"(?s)stage 'person' \(override its keys as person\.data\.KEY=\.\.\.\)"
                                        r".*nope: data folder \(data\.instance_dir\) does not exist; check the path "
                                        r"in your config or the override that set it"):
        preflight(stage_configs(recipe))


def test_a_stage_cannot_build_on_a_textual_inversion_stage(tmp_path: Path) -> None:
    """A textual-inversion stage writes only its token's embedding (no model/), so no stage can train on it: the
    recipe is refused before anything trains, naming the stage and what to do."""
    data = _recipe(tmp_path)
    data["stages"][0]["config"]["train"] = {"textual_inversion": {"token": "sks"}}
    with pytest.raises(ConfigError, match="stage 'person': base stage:concept learns a token by textual inversion"):
        stage_configs(load_recipe(_write(tmp_path / "r.yaml", data)))
    data["stages"] = data["stages"][:1]  # alone, the same stage is a valid recipe (its extract_rank does not apply)
    ((_, cfg),) = stage_configs(load_recipe(_write(tmp_path / "r.yaml", data)))
    assert cfg.is_textual_inversion and not cfg.is_full and not cfg.save.full_model


def test_a_bad_model_key_of_a_later_stage_fails_before_any_stage_trains(tmp_path: Path) -> None:
    """`person.model.vae=nope` was found when the person stage loaded its models, after the concept stage had
    trained; a model an earlier stage writes (the person's base, the concept's model/) is not there yet and passes."""
    from sdtune.errors import ModelLoadError
    from sdtune.recipes.runner import preflight
    from tests.helpers import make_images

    data = _recipe(tmp_path)
    thumbs = make_images(tmp_path / "thumbs", 3, captions=["a thumbs up"])
    data["stages"][0]["config"]["data"]["train_dir"] = str(thumbs)
    person = make_images(tmp_path / "person", 3)
    path = _write(tmp_path / "r.yaml", data)
    preflight(stage_configs(load_recipe(path, [f"person.data.instance_dir={person}"])))
    recipe = load_recipe(path, [f"person.data.instance_dir={person}", "person.model.vae=nope"])
    with pytest.raises(ModelLoadError, match=r"^stage 'person' \(set as person\.base or person\.model\.KEY=\.\.\.\): "
                                             r"model\.vae: VAE 'nope' is not in the local Hugging Face cache"):
        preflight(stage_configs(recipe))
