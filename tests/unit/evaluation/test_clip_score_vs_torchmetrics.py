"""Our CLIP score equals torchmetrics' CLIPScore on the same (tiny, random) CLIP and the same images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.multimodal.clip_score import clip_score as tm_clip_score
from torchmetrics.multimodal.clip_score import CLIPScore

from sdtune.errors import SdtuneError
from sdtune.evaluation.clip_score import DEFAULT_CLIP, ClipScorer, clip_t, default_clip_for, load_backbone
from sdtune.evaluation.compat import torchmetrics_clip
from sdtune.evaluation.runner import choose_clip
from sdtune.inference.generate import GenerationSettings, generate_images
from sdtune.inference.pipeline import load_for_inference

PROMPTS = ["a photo of sks person", "a dog", "the photo of a person", "a red car", "sks", "a dog of the person"]


@pytest.fixture(scope="module")
def uint8_images() -> list[torch.Tensor]:
    """Random images plus images the tiny Stable Diffusion actually generated, as uint8 CHW (0-255)."""
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randint(0, 256, (3, 32, 32), generator=gen, dtype=torch.uint8) for _ in range(3)]
    made = generate_images(load_for_inference("tiny"), [(p, i) for i, p in enumerate(PROMPTS[:3])],
                           GenerationSettings(steps=2))
    return noise + [torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in made]


def to_pil(t: torch.Tensor) -> Image.Image:
    return Image.fromarray(t.permute(1, 2, 0).numpy())


def test_per_image_score_equals_torchmetrics(tiny_clip, uint8_images):
    ours = ClipScorer(str(tiny_clip)).scores([to_pil(t) for t in uint8_images], PROMPTS)
    loader = torchmetrics_clip(str(tiny_clip))
    metric = CLIPScore(model_name_or_path=loader)
    for image, prompt, score in zip(uint8_images, PROMPTS, ours, strict=True):
        functional = float(tm_clip_score(image, prompt, loader).detach())
        metric.reset()
        metric.update(image, prompt)
        assert score == pytest.approx(functional, abs=1e-3)
        assert score == pytest.approx(float(metric.compute()), abs=1e-3)
    assert any(s > 0 for s in ours)


def test_mean_clamps_each_image_not_the_mean(tiny_clip, uint8_images):
    """torchmetrics clamps the mean; we clamp each image, so our mean is >= theirs and equal when all are > 0."""
    scorer = ClipScorer(str(tiny_clip))
    ours = scorer.scores([to_pil(t) for t in uint8_images], PROMPTS)
    metric = CLIPScore(model_name_or_path=torchmetrics_clip(str(tiny_clip)))
    metric.update(uint8_images, PROMPTS)
    theirs = float(metric.compute())
    raw = (100 * (scorer.image_embeddings([to_pil(t) for t in uint8_images])
                  * scorer.text_embeddings(PROMPTS)).sum(-1)).tolist()
    assert max(sum(raw) / len(raw), 0) == pytest.approx(theirs, abs=1e-3)
    assert sum(ours) / len(ours) >= theirs - 1e-3
    positive = [i for i, r in enumerate(raw) if r > 0]
    assert 0 < len(positive) < len(raw)  # the random model gives both signs: the clamp matters here
    metric.reset()
    metric.update([uint8_images[i] for i in positive], [PROMPTS[i] for i in positive])
    assert sum(ours[i] for i in positive) / len(positive) == pytest.approx(float(metric.compute()), abs=1e-3)


def test_clip_t_formula():
    img = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]]), dim=-1)
    assert clip_t(img, txt).tolist() == pytest.approx([100 / 2**0.5, 0.0, 100.0])


def test_long_prompts_are_truncated_not_fatal(tiny_clip):
    scorer = ClipScorer(str(tiny_clip))
    (score,) = scorer.scores([Image.new("RGB", (32, 32), (90, 30, 200))], ["a photo of a dog " * 40])
    assert 0 <= score <= 100


def test_offline_hub_id_error_tells_to_pass_clip():
    with pytest.raises(SdtuneError, match="--clip PATH"):
        load_backbone("openai/clip-vit-base-patch16", local_files_only=True)


def test_local_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(SdtuneError, match="no config.json"):
        load_backbone(str(tmp_path))
    with pytest.raises(SdtuneError, match="--dino"):
        load_backbone(str(tmp_path / "missing"), kind="dino")


def test_default_backbone():
    assert default_clip_for("runs/me") == DEFAULT_CLIP == "openai/clip-vit-base-patch16"
    assert choose_clip(["tiny", "runs/me"], None) == DEFAULT_CLIP
    assert choose_clip(["tiny"], "/my/clip") == "/my/clip"
