"""run_eval: cached generations (counted), spread over seeds, fidelity and forgetting wired to the right images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from sdtune.errors import SdtuneError
from sdtune.evaluation.cache import GenerationCache, ModelSpec
from sdtune.evaluation.clip_score import ClipScorer
from sdtune.evaluation.runner import EvalRequest, run_eval
from sdtune.evaluation.stats import _std
from sdtune.inference.generate import GenerationSettings
from sdtune.inference.metadata import read_png_parameters
from sdtune.inference.testing import make_lora_file

PROMPTS = ["a photo of sks person", "sks person on a beach"]
GENERIC = ["a dog", "a red car"]
SEEDS = [0, 1, 2]
SETTINGS = GenerationSettings(steps=2, guidance=5.0)


def request(out: Path, models: list[str], clip: Path, **kw) -> EvalRequest:
    return EvalRequest(models=models, prompts=PROMPTS, seeds=SEEDS, out_dir=out, settings=SETTINGS, clip=str(clip),
                       **kw)


@pytest.fixture(scope="module")
def first(tmp_path_factory, eval_runs, tiny_clip, tiny_vit, reference_dir):
    out = tmp_path_factory.mktemp("eval")
    req = request(out, ["tiny", str(eval_runs["lora"]), str(eval_runs["noop"])], tiny_clip, dino=str(tiny_vit),
                  reference_dir=reference_dir, generic_prompts=GENERIC)
    return req, run_eval(req, progress=False)


def by_label(results: dict) -> dict[str, dict]:
    return {m["label"]: m for m in results["models"]}


def test_first_run_generates_each_image_once(first, eval_runs):
    _, res = first
    gen = res["generation"]["by_model"]
    per_model = len(PROMPTS) * len(SEEDS) + len(GENERIC) * len(SEEDS)
    assert gen["tiny"]["generated"] == per_model  # its generic images then serve as the runs' base images
    assert gen[str(eval_runs["lora"])] == {"generated": per_model, "reused": 0}
    assert res["generation"]["generated"] == 3 * per_model
    assert len(list((Path(first[0].out_dir) / "cache").glob("*.png"))) == 3 * per_model


def test_adding_a_model_generates_only_that_model(first, eval_runs):
    req, _ = first
    req2 = request(req.out_dir, [*req.models, str(eval_runs["full"])], Path(req.clip),
                   generic_prompts=GENERIC)
    res = run_eval(req2, progress=False)
    per_model = len(PROMPTS) * len(SEEDS) + len(GENERIC) * len(SEEDS)
    assert res["generation"]["generated"] == per_model
    assert res["generation"]["by_model"][str(eval_runs["full"])]["generated"] == per_model
    assert by_label(res)[str(eval_runs["lora"])]["reused"] == per_model


def test_changed_lora_or_settings_regenerate(first, eval_runs, tiny_clip, tmp_path):
    req, _ = first
    run = tmp_path / "run"
    shutil.copytree(eval_runs["lora"], run)
    cache = GenerationCache(Path(req.out_dir) / "cache", SETTINGS, progress=False)
    jobs = [(PROMPTS[0], 0)]
    assert cache.ensure(ModelSpec(str(run)), jobs) and cache.generated[str(run)] == 0  # same content: reused
    make_lora_file(run / "lora", seed=9)
    cache.ensure(ModelSpec(str(run)), jobs)
    assert cache.generated[str(run)] == 1
    other = GenerationCache(Path(req.out_dir) / "cache", GenerationSettings(steps=3, guidance=5.0), progress=False)
    assert other.key(ModelSpec("tiny"), *jobs[0]) != cache.key(ModelSpec("tiny"), *jobs[0])
    for change in ({"negative_prompt": "x"}, {"scheduler": "ddim"}, {"width": 64}, {"guidance": 1.0}):
        changed = GenerationCache(cache.root, GenerationSettings(**(SETTINGS.as_dict() | change)))
        assert changed.key(ModelSpec("tiny"), *jobs[0]) != cache.key(ModelSpec("tiny"), *jobs[0]), change


def test_scores_match_an_independent_recomputation(first, tiny_clip):
    req, res = first
    scorer = ClipScorer(str(tiny_clip))
    for model in res["models"]:
        rows = model["per_prompt"]["clip_t"]
        for i, prompt in enumerate(PROMPTS):
            images = [Image.open(Path(req.out_dir) / rel) for rel in model["images"]["main"][i]]
            expected = scorer.scores(images, [prompt] * len(images))
            assert [rows[i]["per_seed"][str(s)] for s in SEEDS] == pytest.approx(expected, abs=1e-4)
            assert read_png_parameters(Path(req.out_dir) / model["images"]["main"][i][1])["seed"] == SEEDS[1]


def test_spread_is_over_seeds(first):
    _, res = first
    for model in res["models"]:
        rows = model["per_prompt"]["clip_t"]
        seed_means = [sum(r["per_seed"][str(s)] for r in rows) / len(rows) for s in SEEDS]
        metric = model["metrics"]["clip_t"]
        assert metric["std"] == pytest.approx(_std(seed_means))
        assert metric["mean"] == pytest.approx(sum(seed_means) / len(SEEDS))
        assert metric["n"] == len(PROMPTS) * len(SEEDS)
        assert rows[0]["std"] == pytest.approx(_std(list(rows[0]["per_seed"].values())))


def test_every_number_names_its_backbone_and_scale(first, tiny_clip, tiny_vit):
    _, res = first
    model = res["models"][1]
    assert model["metrics"]["clip_t"]["backbone"] == str(tiny_clip)
    assert model["metrics"]["clip_t"]["scale"] == "100*max(cos,0)"
    assert model["metrics"]["dino"]["backbone"] == str(tiny_vit)
    assert set(res["metrics"]) == {"clip_t", "clip_i", "dino", "generic_clip_t", "generic_clip_delta",
                                   "base_similarity"}


def test_forgetting(first, eval_runs):
    _, res = first
    models = by_label(res)
    base, lora, noop = models["tiny"], models[str(eval_runs["lora"])], models[str(eval_runs["noop"])]
    assert base["base"] is None and "generic_clip_delta" not in base["metrics"]  # a base is not its own baseline
    assert lora["base"] == "tiny" and noop["base"] == "tiny"
    assert lora["images"]["base"] == base["images"]["generic"]  # the base's images are shared, not re-made
    # A LoRA whose B matrices are zero is the base model: no drift, no change of score.
    assert noop["metrics"]["base_similarity"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert noop["metrics"]["generic_clip_delta"]["mean"] == pytest.approx(0.0, abs=1e-3)
    assert lora["metrics"]["base_similarity"]["mean"] < 0.9999
    assert lora["metrics"]["generic_clip_delta"]["mean"] == pytest.approx(
        lora["metrics"]["generic_clip_t"]["mean"] - base["metrics"]["generic_clip_t"]["mean"], abs=1e-4)


def test_fidelity_against_references(first):
    _, res = first
    for model in res["models"]:
        for name in ("clip_i", "dino"):
            metric = model["metrics"][name]
            assert -1.0 <= metric["mean"] <= 1.0 and metric["n"] == len(PROMPTS) * len(SEEDS)


def test_user_errors(tmp_path, tiny_clip, tiny_vit):
    with pytest.raises(SdtuneError, match="no prompts"):
        run_eval(EvalRequest(models=["tiny"], prompts=[], seeds=[0], out_dir=tmp_path), progress=False)
    with pytest.raises(SdtuneError, match="--reference"):
        run_eval(request(tmp_path, ["tiny"], tiny_clip, dino=str(tiny_vit)), progress=False)
    with pytest.raises(SdtuneError, match="--clip PATH"):
        run_eval(request(tmp_path, ["tiny"], "openai/clip-vit-base-patch16", local_files_only=True), progress=False)
    assert not (tmp_path / "cache").exists()  # the backbone is checked before anything is generated

