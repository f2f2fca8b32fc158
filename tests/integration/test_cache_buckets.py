"""End to end: a cached run trains bitwise like an uncached one, and a bucketed run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli, tiny_config, write_config

pytestmark = pytest.mark.slow


def _mixed_shapes(folder: Path, captions: list[str] | None = None) -> Path:
    """Landscape-ish and portrait photos: two buckets at 32 px."""
    make_images(folder, 3, size=(40, 36), captions=captions)
    tall = make_images(folder.parent / f"{folder.name}-tall", 2, size=(24, 48), color=(20, 90, 200),
                       captions=captions)
    for p in sorted(tall.iterdir()):
        p.rename(folder / f"tall-{p.name}")
    return folder


COMBOS = {
    "dreambooth-lora-prior": (
        lambda tmp: {"instance_dir": str(_mixed_shapes(tmp / "inst")), "instance_prompt": "a photo of sks dog",
                     "random_flip": True, "with_prior_preservation": True, "class_prompt": "a photo of a dog",
                     "class_dir": str(make_images(tmp / "class", 2, size=(32, 32))), "num_class_images": 2},
        {"lora": {"rank": 2}, "batch_size": 2}),
    "t2i-full": (
        lambda tmp: {"train_dir": str(_mixed_shapes(tmp / "t2i", ["a red disc", "a ball"])), "random_flip": True,
                     "caption_dropout": 0.3},
        {}),
    # SDXL: cached hidden states of both encoders and the pooled embedding; time ids from each bucket and flip
    "xl-dreambooth-lora-prior": (
        lambda tmp: {"instance_dir": str(_mixed_shapes(tmp / "inst")), "instance_prompt": "a photo of sks dog",
                     "random_flip": True, "with_prior_preservation": True, "class_prompt": "a photo of a dog",
                     "class_dir": str(make_images(tmp / "class", 2, size=(32, 32))), "num_class_images": 2,
                     "caption_dropout": 0.3},
        {"lora": {"rank": 2}, "batch_size": 2}),
}


@pytest.mark.parametrize("name", list(COMBOS))
def test_uncached_resume_of_a_cached_bucketed_run_is_bitwise_the_cached_run(tmp_path: Path, name: str) -> None:
    """Steps 3-4 trained without caches, from the cached run's step-2 checkpoint copied to another folder, end
    bitwise where the cached run ended: cached == uncached, and the bucketed stream resumes exactly."""
    data, train = COMBOS[name]
    cached = tmp_path / "cached"
    cfg = tiny_config(cached, data(tmp_path), train, checkpoint={"every": 2, "keep": 5},
                      save={"lora": False, "verify": False}, model={"base": "tiny-xl" if "xl" in name else "tiny"})
    first = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    assert "latent cache:" in first.stdout and "aspect-ratio buckets" in first.stdout
    assert ("text cache:" in first.stdout) != bool(train.get("train_text_encoder"))
    record = json.loads((cached / "buckets.json").read_text())
    assert len(record["train"]) == 2 and set(record["images"].values()) == set(record["train"])

    other = tmp_path / "uncached"
    resumed = run_cli("train", str(cached / "config.yaml"), f"output_dir={other}", "data.cache_latents=false",
                      "data.cache_text=false", "--resume", str(cached / "checkpoints" / "step-000002"))
    assert "resumed from" in resumed.stdout and "latent cache:" not in resumed.stdout
    expected = load_file(str(cached / "checkpoints" / "step-000004" / "trainable.safetensors"))
    actual = load_file(str(other / "checkpoints" / "step-000004" / "trainable.safetensors"))
    assert expected.keys() == actual.keys()
    for key in expected:
        assert (expected[key] == actual[key]).all(), f"{key} differs between the cached and the uncached steps"
