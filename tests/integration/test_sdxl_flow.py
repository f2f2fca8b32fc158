"""SDXL (tiny-xl) through the rest of the tool: the two-stage recipe (configs/sdxl-two-stage.yaml), generate from
its runs and stack, eval against the base, and personalize on its concept: the same commands as for SD 1/2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_two_stage_generate_eval_and_personalize_on_sdxl(tmp_path: Path) -> None:
    from sdtune.evaluation.testing import build_tiny_clip

    make_images(tmp_path / "thumbs", 3, color=(220, 180, 40), captions=["a person giving a thumbs up"])
    make_images(tmp_path / "me", 2, color=(40, 90, 200))
    out = tmp_path / "two-stage"
    run_cli("run", str(REPO / "configs" / "sdxl-two-stage.yaml"),
            f"output_dir={out}", "defaults.model.base=tiny-xl", "defaults.data.resolution=32",
            "defaults.logging.trackers=[]", "defaults.train.gradient_checkpointing=false",
            'defaults.train.mixed_precision="no"', "defaults.checkpoint.every=2",
            f"concept.data.train_dir={tmp_path / 'thumbs'}", "concept.validation.prompts=[]",
            "concept.train.max_steps=2", "concept.train.learning_rate=0.001", "concept.train.lora.rank=4",
            f"person.data.instance_dir={tmp_path / 'me'}", "person.validation.prompts=[]",
            "person.train.max_steps=2", "person.train.learning_rate=0.001", "person.train.lora.rank=4")
    person = out / "person"
    assert json.loads((person / "metrics.json").read_text())["family"] == "sdxl"
    assert (out / "concept" / "model" / "text_encoder_2").is_dir(), "the fused concept model is an SDXL pipeline"
    (embedding,) = (person / "embeddings").glob("*.safetensors")  # pivotal tuning: the token for both encoders
    assert set(load_file(str(embedding))) == {"clip_l", "clip_g"}

    gen = run_cli("generate", str(person / "stack"), "-p", "a photo of <sks> person", "-n", "1", "--steps", "2",
                  "--size", "32", "--out", str(tmp_path / "gen"))
    assert "1 images" in gen.stdout or "1 image" in gen.stdout

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of <sks> person\n", encoding="utf-8")
    clip = build_tiny_clip(tmp_path / "clip")
    run_cli("eval", "tiny-xl", str(person), "--prompts", str(prompts), "--seeds", "1", "--steps", "2",
            "--clip", str(clip), "--out", str(tmp_path / "eval"))
    results = json.loads((tmp_path / "eval" / "results.json").read_text(encoding="utf-8"))
    assert [m["label"] for m in results["models"]] == ["tiny-xl", str(person)]

    people = tmp_path / "people.csv"
    people.write_text(f"name,photos,token,class\nalice,{tmp_path / 'me'},<alice>,woman\n", encoding="utf-8")
    run_cli("personalize", str(people), "--concept", str(out / "concept"), "--out", str(tmp_path / "people"),
            "train.max_steps=2", "train.lora.rank=4", "logging.trackers=[]", "data.resolution=32",
            "train.gradient_checkpointing=false", 'train.mixed_precision="no"', "checkpoint.every=2",
            "validation.prompts=[]")
    assert (tmp_path / "people" / "alice" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert list((tmp_path / "people" / "alice" / "embeddings").glob("*.safetensors")), "and the new token"
    assert json.loads((tmp_path / "people" / "alice" / "metrics.json").read_text())["family"] == "sdxl"
