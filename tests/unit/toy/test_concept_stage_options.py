"""Stage 1's options for forgetting less (issue #23, part 5): each reaches the concept run's config, and the
benchmark measures them as stage-1 rows against the base's old-prompt accuracy."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sdtune.config import config_from_dict
from sdtune.toy.demo import CROSS_ATTENTION_KV, DemoSettings, concept_stage
from sdtune.toy.evaluate import generic_prompts, old_prompts

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import two_stage  # noqa: E402


def test_concept_options_reach_the_run_config(tmp_path: Path) -> None:
    default = config_from_dict(concept_stage(DemoSettings(), tmp_path, tmp_path / "c"))
    assert default.train.preservation is None and default.data.caption_dropout == 0.1
    settings = replace(DemoSettings(), concept_preservation=0.3, concept_preservation_prompts=24,
                       concept_caption_dropout=0.3, concept_targets="kv")
    cfg = config_from_dict(concept_stage(settings, tmp_path, tmp_path / "c"))
    assert cfg.train.preservation.weight == 0.3 and cfg.train.preservation.prompts == generic_prompts(24)
    evaluated = {f"a photo of {e.prompt}" for e in old_prompts(12)} | {e.prompt for e in old_prompts(12)}
    assert not evaluated & set(cfg.train.preservation.prompts), "preservation must not train on evaluated prompts"
    assert cfg.data.caption_dropout == 0.3 and cfg.train.lora.targets == list(CROSS_ATTENTION_KV)
    with pytest.raises(ValueError, match="all or kv"):
        concept_stage(replace(DemoSettings(), concept_targets="fine"), tmp_path, tmp_path / "c")


def test_concept_variants_are_stage_1_rows_against_the_base() -> None:
    row = dict.fromkeys(two_stage.KEYS, 0.5)
    done = {"base": {**row, "old_both": 0.96}, "concept-s0": {**row, "old_both": 0.72},
            "concept-dop-1-s0": {**row, "old_both": 0.82}, "concept-dop-1-s1": {**row, "old_both": 0.78}}
    tab = two_stage.table(done, [], [0, 1], ("dop-1",))
    assert tab["rows"]["stage 1: dop-1"]["n"] == 2
    assert tab["rows"]["stage 1: dop-1"]["old_vs_base"][0] == pytest.approx(0.80 - 0.96)
    assert tab["per_seed"]["stage 1: dop-1"]["1"]["old_both"] == 0.78
    assert two_stage.settings_for(two_stage.DEMO, 1, False, concept="dop-1").concept_preservation == 1.0


def test_stage_1_prior_preservation_draws_other_prompts_as_class_images(tmp_path: Path) -> None:
    """concept_class_images: the base model's images of the world's other prompts (none evaluated) as a class subset
    beside the concept's captioned images (prior preservation in a text-to-image run), at its own weight."""
    assert config_from_dict(concept_stage(DemoSettings(), tmp_path, tmp_path / "c")).data.subsets == []
    settings = replace(DemoSettings(), concept_class_images=48, concept_class_prompts=24, concept_class_weight=0.5)
    cfg = config_from_dict(concept_stage(settings, tmp_path, tmp_path / "c"))
    (subset,) = cfg.data.subsets
    assert subset.role == "class" and subset.num_images == 48 and subset.loss_weight == 0.5
    assert subset.class_prompts == generic_prompts(24) and subset.path == tmp_path / "class-generic-24"
    evaluated = {f"a photo of {e.prompt}" for e in old_prompts(12)} | {e.prompt for e in old_prompts(12)}
    assert not evaluated & set(subset.class_prompts), "the prior must not train on evaluated prompts"
    assert cfg.data.train_dir == tmp_path / "concept"


def test_the_concepts_own_token_reaches_captions_config_and_prompts(tmp_path: Path) -> None:
    """concept_token: stage 1 learns "<arrow>" beside its LoRA; its captions and the evaluated prompts write it."""
    import json

    from sdtune.toy.demo import concept_data, write_concept_data
    from sdtune.toy.demo_eval import demo_suite

    settings = replace(DemoSettings.quick(), concept_token="<arrow>", concept_token_init="shape")
    folder = write_concept_data(settings, tmp_path)
    assert folder == concept_data(settings, tmp_path) != tmp_path / "concept"
    captions = [json.loads(line)["text"] for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert all("<arrow>" in c and " arrow" not in c for c in captions)
    cfg = config_from_dict(concept_stage(settings, tmp_path, tmp_path / "c"))
    learned = cfg.train.textual_inversion
    assert cfg.is_pivotal and learned.token == "<arrow>" and learned.initializer == "shape"
    assert cfg.data.train_dir == folder
    suite = demo_suite(settings)
    assert all("<arrow>" in e.prompt and e.shape == "arrow" for e in suite.concept)
    assert "<arrow>" in suite.composite[0].prompt
