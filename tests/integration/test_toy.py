"""The toy model end to end: pretraining runs and is reproducible; a short fine-tune teaches the held-out glyph."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sdtune.toy import world
from tests.helpers import run_cli

pytestmark = pytest.mark.slow

TINY = ["--wide-images", "200", "--pretrain-images", "32", "--vae-steps", "2", "--clip-steps", "2",
        "--judge-steps", "2", "--unet-steps", "2", "--unet-batch", "4", "--eval-seeds", "1", "--no-parallel"]


def test_pretrain_is_reproducible_and_writes_a_pipeline(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sdtune.models.loading import load_pipeline

    for name in ("a", "b"):
        run_cli("toy", "pretrain", str(tmp_path / name), *TINY)
    unet = "pipeline/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(tmp_path / "a" / unet)), load_file(str(tmp_path / "b" / unet))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = load_pipeline(str(tmp_path / "a" / "pipeline"))
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    for part in ("clip/config.json", "judge/judge.safetensors", "pretrain.json"):
        assert (tmp_path / "a" / part).exists()
    report = json.loads((tmp_path / "a" / "pretrain.json").read_text())
    assert report["base_model"]["images"] == 48 and 0 <= report["base_model"]["shape"] <= 1
    assert set(report["base_model"]["shape_by_prompt_shape"]) == set(world.SHAPES)
    assert "zero-shot" in (tmp_path / "a" / "README.md").read_text()


def _concept_loss(pipe, folder: Path) -> float:
    """Mean noise-prediction error on the concept's captioned images, with fixed noise and timesteps."""
    import json

    from PIL import Image

    from sdtune.toy.world import to_model_input

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    import numpy as np

    pixels = to_model_input(np.stack([np.asarray(Image.open(folder / r["file_name"]).convert("RGB")) for r in rows]))
    ids = pipe.tokenizer([r["text"] for r in rows], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        emb = pipe.text_encoder(ids)[0]
        losses = []
        for _ in range(4):
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(50, 950, (len(rows),), generator=gen)
            alpha = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
            noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
            pred = pipe.unet(noisy, t, emb).sample
            losses.append(torch.nn.functional.mse_loss(pred, noise).item())
    return sum(losses) / len(losses)


def test_short_concept_finetune_lowers_its_loss_and_moves_the_judge(tmp_path: Path) -> None:
    from sdtune.toy import world
    from sdtune.toy.evaluate import default_judge, generate, load_toy_pipeline
    from sdtune.toy.finetune import concept_config, run
    from sdtune.toy.judge import judge_images

    data = world.write_concept_set(tmp_path / "concept", 16, seed=5)
    # Full fine-tuning: 100 LoRA steps (rank 8, attention or attention+convs) did not yet move the judge (measured).
    run(concept_config("toy", data, tmp_path / "run", steps=100, lr=3e-4, lora_rank=None))
    judge = default_judge()
    prompts = ["a red arrow", "a blue arrow", "a green arrow"]
    seen = {}
    for name, ref in (("base", "toy"), ("tuned", str(tmp_path / "run"))):
        pipe = load_toy_pipeline(ref)
        verdicts = judge_images(judge, generate(pipe, prompts, [0, 1, 2], steps=15))
        seen[name] = (_concept_loss(pipe, data), sum(v.shape_probs["arrow"] for v in verdicts) / len(verdicts))
    assert seen["tuned"][0] < seen["base"][0], seen
    assert seen["tuned"][1] > seen["base"][1] + 0.05, seen
