"""Break-A-Scene's cross-attention loss through the real CLI (``train.attention_loss``, pivotal tuning with masks):
it changes what trains, a run resumes bitwise in bf16 (SD and SDXL), gradient checkpointing gives the same
weights, and the model card says it was on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers import make_images, resume_from_copy, run_cli, safetensors_in, tiny_config, write_config

pytestmark = pytest.mark.slow

STEPS, HALF = 4, 2


def _masks(images: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted(images.glob("*.png")):
        mask = Image.new("L", Image.open(image).size, 0)
        mask.paste(255, (8, 8, 24, 24))
        mask.save(folder / image.name)
    return folder


def _config(tmp: Path, name: str, base: str = "tiny", attention: dict | None = None, **train) -> Path:
    images = tmp / "photos"
    if not images.is_dir():
        make_images(images, 3)
        _masks(images, tmp / "masks")
    data = {"instance_dir": str(images), "instance_prompt": "a photo of sks dog", "masked_loss": True,
            "mask_dir": str(tmp / "masks")}
    pivotal = {"max_steps": STEPS, "lora": {"rank": 4}, "learning_rate": 1e-3, "adam_weight_decay": 0.0,
               "textual_inversion": {"token": "sks", "learning_rate": 5e-2, "ti_fraction": 0.75, "num_vectors": 2},
               **train}
    if attention is not None:
        pivotal["attention_loss"] = attention
    cfg = tiny_config(tmp / name, data, pivotal, checkpoint={"every": HALF, "keep": 5}, model={"base": base})
    return write_config(tmp / f"{name}.yaml", cfg)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{STEPS:06d}" / "trainable.safetensors"))


@pytest.mark.parametrize("base", ["tiny", "tiny-xl"])
def test_the_term_trains_and_resumes_bitwise_in_bf16(tmp_path: Path, base: str) -> None:
    attention = {"weight": 1.0}  # the maps nearest 16x16: the tiny UNets have one level
    out = run_cli("train", str(_config(tmp_path, "straight", base, attention, mixed_precision="bf16")))
    assert f"done: {STEPS} steps" in out.stdout and "Traceback" not in out.stderr
    assert "cross-attention loss: weight 1 on the maps 2x smaller than the latents" in out.stdout  # chosen: said
    resume_from_copy(tmp_path / "straight", tmp_path / "resumed",
                     _config(tmp_path, "resumed", base, attention, mixed_precision="bf16"), HALF)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    for folder in ("lora", "embeddings"):
        a, b = safetensors_in(tmp_path / "straight" / folder), safetensors_in(tmp_path / "resumed" / folder)
        assert a and all(torch.equal(a[k], b[k]) for k in a), folder
    card = (tmp_path / "straight" / "README.md").read_text()  # the level the term chose, not "nearest 16x16"
    assert "| cross-attention loss | weight 1, maps 2x smaller than the latents (" in card, card
    progress = (tmp_path / "straight" / "logs" / "progress.jsonl").read_text().splitlines()
    assert progress and all(json.loads(line)["attention_loss"] > 0 for line in progress), "the term is logged"


def test_the_term_changes_what_trains_and_checkpointing_keeps_it(tmp_path: Path) -> None:
    attention = {"weight": 1.0}  # the maps nearest 16x16: the tiny UNets have one level
    run_cli("train", str(_config(tmp_path, "with", attention=attention)))
    run_cli("train", str(_config(tmp_path, "without")))
    run_cli("train", str(_config(tmp_path, "checkpointed", attention=attention, gradient_checkpointing=True)))
    with_term, without, checkpointed = (_weights(tmp_path / n) for n in ("with", "without", "checkpointed"))
    row = "text_encoder.embeddings.token_embedding.learned.weight"
    assert not torch.equal(with_term[row], without[row]), "the term must move the token"
    assert all(torch.allclose(with_term[k], checkpointed[k], atol=1e-6) for k in with_term), \
        "gradient checkpointing must give the term's gradients too"
    bad = run_cli("train", str(_config(tmp_path, "bad", attention={"downscales": [16]})), check=False)
    assert bad.returncode == 2 and "choose among those" in bad.stderr and "Traceback" not in bad.stderr
