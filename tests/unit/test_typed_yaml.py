"""Every reader of configs keeps the user's spelling: overrides, run config files, recipes, personalize templates.

YAML 1.1 (PyYAML) reads ``no``/``yes``/``on``/``off`` as booleans, ``1.0`` as a float and ``2024`` as an int;
keys that hold text must get the text as typed, and boolean keys must still take their words.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdtune import typed_yaml
from sdtune.config import RunConfig, apply_overrides, config_from_dict, dump_config, load_config, save_config
from sdtune.errors import ConfigError
from sdtune.recipes import load_recipe, stage_configs
from sdtune.recipes.personalize import load_template, subject_config
from sdtune.recipes.runs import saved_config_changes
from sdtune.recipes.subjects import Subject
from sdtune.run_folder import read_run_config

MINIMAL = {"data": {"instance_dir": "photos", "instance_prompt": "a photo of sks dog"}}

# (override, dotted attribute of the validated config, value it must have)
SPELLINGS = [
    ("train.mixed_precision=no", "train.mixed_precision", "no"),
    ("logging.run_name=2024", "logging.run_name", "2024"),
    ("model.revision=1.0", "model.revision", "1.0"),
    ("model.variant=010", "model.variant", "010"),
    ("data.instance_prompt=yes", "data.instance_prompt", "yes"),
    ("data.class_prompt=off", "data.class_prompt", "off"),
    ("validation.prompts=[no, 1e3, 1.10, on]", "validation.prompts", ["no", "1e3", "1.10", "on"]),
    ("logging.project=0x10", "logging.project", "0x10"),
    ("data.instance_prompt=a photo: #1", "data.instance_prompt", "a photo: #1"),
    ("data.instance_prompt='quoted'", "data.instance_prompt", "quoted"),
    ("model.revision=null", "model.revision", None),
    # boolean keys keep taking YAML 1.1's words and YAML 1.2's true/false
    ("data.center_crop=false", "data.center_crop", False),
    ("data.center_crop=no", "data.center_crop", False),
    ("data.random_flip=yes", "data.random_flip", True),
    ("data.random_flip=on", "data.random_flip", True),
    ("data.random_flip=True", "data.random_flip", True),
    ("train.gradient_checkpointing=off", "train.gradient_checkpointing", False),
    # numbers stay numbers
    ("train.max_steps=1e3", "train.max_steps", 1000),
    ("train.learning_rate=1e-4", "train.learning_rate", 1e-4),
    ("train.max_grad_norm=null", "train.max_grad_norm", None),
]


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("override,key,expected", SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_override_keeps_the_spelling(override: str, key: str, expected) -> None:
    needs = ["data.class_dir=c", "data.with_prior_preservation=false"] if "class_prompt" in override else []
    cfg = config_from_dict(apply_overrides(yaml.safe_load(yaml.safe_dump(MINIMAL)), [*needs, override]))
    assert _get(cfg, key) == expected


def test_config_file_keeps_the_spelling(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {base: tiny, revision: 1.0, variant: 010}\n"
        "data:\n  instance_dir: photos\n  instance_prompt: yes\n  center_crop: no\n  random_flip: on\n"
        "train:\n  mixed_precision: no\n  max_steps: 1e3\n"
        "validation:\n  prompts: [no, 1e3, on]\n"
        "logging:\n  run_name: 2024\n  trackers: []\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.train.mixed_precision == "no" and cfg.logging.run_name == "2024"
    assert (cfg.model.revision, cfg.model.variant) == ("1.0", "010")
    assert cfg.data.instance_prompt == "yes" and cfg.validation.prompts == ["no", "1e3", "on"]
    assert cfg.data.center_crop is False and cfg.data.random_flip is True and cfg.train.max_steps == 1000


def test_saved_config_reads_back_the_same_under_any_yaml_reader(tmp_path: Path) -> None:
    cfg = config_from_dict(apply_overrides(yaml.safe_load(yaml.safe_dump(MINIMAL)), [
        "validation.prompts=[1e3, 0o17, .5, no]", "logging.run_name=2024", "train.mixed_precision=no"]))
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    as_json = cfg.model_dump(mode="json")
    text = dump_config(cfg)
    assert yaml.safe_load(text) == as_json, "YAML 1.1 readers (PyYAML) read it back unchanged"
    assert typed_yaml.load(text) == as_json, "YAML 1.2 readers (no schema) read it back unchanged"
    assert read_run_config(tmp_path) == as_json and saved_config_changes(tmp_path, cfg) == []


def test_recipe_files_and_stage_overrides_keep_the_spelling(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        "defaults:\n  model: {base: tiny}\n  train: {mixed_precision: no, max_steps: 5}\n  logging: {trackers: []}\n"
        "stages:\n"
        "  - name: concept\n    config: {data: {train_dir: thumbs, center_crop: no}}\n"
        "  - name: person\n    config: {data: {instance_dir: me, instance_prompt: on}}\n", encoding="utf-8")
    recipe = load_recipe(path, ["person.logging.run_name=2024", "concept.validation.prompts=[yes, 1.0]",
                                "defaults.model.revision=2.0"])
    (_, concept), (_, person) = stage_configs(recipe)
    assert concept.train.mixed_precision == "no" and concept.data.center_crop is False
    assert concept.validation.prompts == ["yes", "1.0"] and concept.model.revision == "2.0"
    assert person.data.instance_prompt == "on" and person.logging.run_name == "2024"


def test_personalize_template_and_overrides_keep_the_spelling(tmp_path: Path) -> None:
    concept = tmp_path / "concept"
    (concept / "model").mkdir(parents=True)
    template_file = tmp_path / "template.yaml"
    template_file.write_text("model: {allow_pickle: no}\ntrain: {mixed_precision: no}\n"
                             "data: {with_prior_preservation: no}\n", encoding="utf-8")
    template = load_template(template_file)
    cfg = subject_config(Subject("ann", tmp_path / "ann", "sks", "woman"), template, concept, tmp_path / "out",
                         overrides=["logging.run_name=1999", "validation.prompts=[no]"])
    assert cfg.train.mixed_precision == "no" and cfg.model.allow_pickle is False
    assert cfg.data.with_prior_preservation is False and cfg.data.class_dir is None
    assert cfg.logging.run_name == "1999" and cfg.validation.prompts == ["no"]


def test_yaml_mistakes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("data: {instance_dir: a, instance_prompt: b}\ntrain: {max_steps: 5}\ntrain: {seed: 1}\n")
    with pytest.raises(ConfigError, match="line 3: key 'train' is given twice"):
        load_config(path)
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        config_from_dict(apply_overrides(yaml.safe_load(yaml.safe_dump(MINIMAL)), ["train.mixed_precision=fp8"]))
    merged = typed_yaml.load("base: &b {center_crop: no, resolution: 64}\ndata:\n  <<: *b\n  resolution: 32\n",
                             RunConfig)
    assert merged["data"] == {"resolution": 32, "center_crop": False}
