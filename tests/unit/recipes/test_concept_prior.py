"""Keeping the concept through the person stage with class images: the concept stage's own prompts, drawn by the
concept model, join the person's prior - in a recipe stage (``concept_prior``), in ``personalize`` and in the data
stream, with the generated folder captioned by its prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sdtune.config import config_from_dict
from sdtune.data.class_images import class_image_jobs, generate_class_images
from sdtune.data.subsets import build_stream
from sdtune.errors import ConfigError
from sdtune.recipes import load_recipe, stage_configs
from sdtune.recipes.personalize import subject_config, template_stage
from sdtune.recipes.subjects import Subject
from tests.helpers import make_images

CAPTIONS = ["a man giving a thumbs up", "a woman giving a thumbs up, photo", "a thumbs up"]


def _recipe(tmp: Path, thumbs: Path, **person) -> Path:
    data = {"output_dir": str(tmp / "out"), "defaults": {"model": {"base": "tiny"}, "data": {"resolution": 32}},
            "stages": [{"name": "concept", "config": {"data": {"train_dir": str(thumbs)}, "train": {"lora": {}}}},
                       {"name": "person", "base": "stage:concept", **person,
                        "config": {"data": {"instance_dir": "me", "instance_prompt": "a photo of sks person",
                                            "with_prior_preservation": True, "class_prompt": "a photo of a person",
                                            "class_dir": "cls", "prior_loss_weight": 0.5},
                                   "train": {"lora": {}}}}]}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_recipe_stage_adds_the_concepts_prompts_to_the_prior(tmp_path: Path) -> None:
    thumbs = make_images(tmp_path / "thumbs", 5, captions=CAPTIONS)
    (_, _), (_, person) = stage_configs(load_recipe(_recipe(tmp_path, thumbs, concept_prior=6)))
    (subset,) = person.data.subsets
    assert subset.role == "class" and subset.num_images == 6 and subset.loss_weight == 0.5
    assert subset.class_prompts == CAPTIONS, "each caption once, in the folder's order"
    assert subset.path == (tmp_path / "out" / "class-images" / "concept-prompts").resolve()
    jobs = class_image_jobs(person.data)
    assert [(p, n) for _, p, n in jobs] == [("a photo of a person", 100), (CAPTIONS, 6)]
    (_, _), (_, plain) = stage_configs(load_recipe(_recipe(tmp_path, thumbs)))
    assert plain.data.subsets == []


def test_concept_preservation_adds_the_concepts_prompts_to_the_loss_term(tmp_path: Path) -> None:
    thumbs = make_images(tmp_path / "thumbs", 5, captions=CAPTIONS)
    path = _recipe(tmp_path, thumbs, concept_preservation=True)
    with pytest.raises(ConfigError, match="set train.preservation"):
        load_recipe(path)
    data = yaml.safe_load(path.read_text())
    data["stages"][1]["config"]["train"]["preservation"] = {"weight": 0.5}
    path.write_text(yaml.safe_dump(data))
    (_, _), (_, person) = stage_configs(load_recipe(path))
    assert person.train.preservation.prompts == ["a photo of a person", *CAPTIONS]
    assert person.train.preservation.weight == 0.5 and person.data.subsets == []
    template, stage = template_stage(path, "person")
    concept = tmp_path / "concept"
    (concept / "model").mkdir(parents=True)
    (concept / "model" / "model_index.json").write_text("{}")
    (concept / "config.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny"},
                                                        "data": {"train_dir": str(thumbs), "resolution": 32}}))
    cfg = subject_config(Subject("ann", tmp_path / "ann", "sks", "woman"), template, concept, tmp_path / "people",
                         concept_preservation=stage.concept_preservation)
    assert cfg.train.preservation.prompts == ["a photo of a woman", *CAPTIONS]


def test_concept_prior_needs_a_base_stage(tmp_path: Path) -> None:
    thumbs = make_images(tmp_path / "thumbs", 2, captions=CAPTIONS)
    path = _recipe(tmp_path, thumbs, concept_prior=4)
    data = yaml.safe_load(path.read_text())
    del data["stages"][1]["base"]
    data["stages"][1]["config"]["model"] = {"base": "tiny"}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="concept_prior keeps the concept of its base stage"):
        load_recipe(path)


def test_personalize_takes_the_stages_concept_prior(tmp_path: Path) -> None:
    thumbs = make_images(tmp_path / "thumbs", 3, captions=CAPTIONS)
    concept = tmp_path / "concept"
    (concept / "model").mkdir(parents=True)
    (concept / "model" / "model_index.json").write_text("{}")
    (concept / "config.yaml").write_text(yaml.safe_dump({"model": {"base": "tiny"},
                                                        "data": {"train_dir": str(thumbs), "resolution": 32}}))
    template, stage = template_stage(_recipe(tmp_path, thumbs, concept_prior=9), "person")
    assert stage.concept_prior == 9
    cfg = subject_config(Subject("ann", tmp_path / "ann", "sks", "woman"), template, concept, tmp_path / "people",
                         concept_prior=stage.concept_prior)
    (subset,) = cfg.data.subsets
    assert subset.class_prompts == CAPTIONS and subset.num_images == 9
    assert subset.path == tmp_path / "people" / "class-images" / "concept-prompts"
    assert cfg.data.class_prompt == "a photo of a woman", "the subject's own class prior stays"


def test_generated_folder_is_captioned_by_its_prompts_and_resumes(tmp_path: Path) -> None:
    from sdtune.models.loading import load_components

    folder = tmp_path / "prior"
    prompts = ["a red ball", "a blue dot", "a green cube"]
    assert generate_class_images(folder, prompts, 4, "tiny", resolution=32, steps=2) == 4
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": f"class-{i:05d}.png", "text": prompts[i % 3]} for i in range(4)]
    (folder / "class-00002.png").unlink()
    assert generate_class_images(folder, prompts, 4, "tiny", resolution=32, steps=2) == 1
    assert generate_class_images(folder, prompts, 4, "tiny", resolution=32, steps=2) == 0
    cfg = config_from_dict({"data": {"instance_dir": str(make_images(tmp_path / "me", 2)),
                                     "instance_prompt": "a photo of sks dog", "resolution": 32,
                                     "subsets": [{"path": str(folder), "role": "class", "class_prompts": prompts,
                                                  "num_images": 4}]}})
    tokenizer = load_components("tiny").tokenizer
    stream = build_stream(cfg.data, tokenizer, seed=0)
    assert sorted(e.prompts[0] for e in stream.classes) == sorted(prompts[i % 3] for i in range(4))


def test_class_prompts_need_role_class_and_a_count() -> None:
    base = {"instance_dir": "x", "instance_prompt": "sks"}
    with pytest.raises(ConfigError, match="role: class"):
        config_from_dict({"data": {**base, "subsets": [{"path": "p", "class_prompts": ["a"], "num_images": 2}]}})
    with pytest.raises(ConfigError, match="needs num_images"):
        config_from_dict({"data": {**base, "subsets": [{"path": "p", "role": "class", "class_prompts": ["a"]}]}})
