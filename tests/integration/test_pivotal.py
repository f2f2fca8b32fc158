"""Pivotal tuning through the real CLI: a token's vectors and a LoRA train together, the embedding freezes after
ti_fraction of the steps, and both outputs load where users load them (diffusers, generate, checkpoints, kohya)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_images, run_cli, sample_images, tiny_config, train_pivotal_sequence, write_config

pytestmark = pytest.mark.slow

PROMPT = "a photo of sks dog"


def _train(tmp: Path, base: str) -> Path:
    data = {"instance_dir": str(make_images(tmp / "data", 3)), "instance_prompt": PROMPT}
    cfg = tiny_config(tmp / "run", data, {"max_steps": 4, "learning_rate": 1e-2, "lora": {"rank": 4},
                                          "textual_inversion": {"token": "sks", "learning_rate": 5e-2,
                                                                "ti_fraction": 0.5, "num_vectors": 2}},
                      checkpoint={"every": 1, "keep": 5}, model={"base": base})
    out = run_cli("train", str(write_config(tmp / "c.yaml", cfg)))
    assert "RUN/embeddings verified: loads with diffusers load_textual_inversion" in out.stdout
    assert "RUN/lora verified" in out.stdout and "Traceback" not in out.stderr
    return tmp / "run"


def _checkpoint(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "trainable.safetensors"))


@pytest.mark.parametrize("base", ["tiny", "tiny-xl"])
def test_token_and_lora_train_together_and_load_as_users_load_them(tmp_path: Path, base: str) -> None:
    from sdtune.inference.pipeline import load_for_inference
    from sdtune.models.embeddings import load_into_pipeline
    from sdtune.models.loading import load_pipeline

    run = _train(tmp_path, base)
    rows = load_file(str(run / "embeddings" / "sks.safetensors"))
    assert {k: tuple(v.shape) for k, v in rows.items()} == (
        {"clip_l": (2, 32), "clip_g": (2, 32)} if base == "tiny-xl" else {"sks": (2, 32)})
    lora = load_file(str(run / "lora" / "pytorch_lora_weights.safetensors"))
    assert lora and all(k.startswith("unet.") for k in lora), "the token's rows are no LoRA weights"
    assert "dreambooth-pivotal" in (run / "README.md").read_text()

    first, frozen, last = _checkpoint(run, 1), _checkpoint(run, 2), _checkpoint(run, 4)
    learned = [k for k in last if k.endswith("token_embedding.learned.weight")]  # one per text encoder
    assert len(learned) == (2 if base == "tiny-xl" else 1)
    for key in learned:
        assert not torch.equal(first[key], frozen[key]), "the embedding trains for ti_fraction of the steps"
        assert torch.equal(frozen[key], last[key]), "then it is frozen"
    loras = [k for k in last if k not in learned]
    assert any(not torch.equal(frozen[k], last[k]) for k in loras), "the LoRA trains on after the freeze"

    trained = load_for_inference(str(run))  # what generate, eval and pick load: LoRA + token
    user = load_pipeline(base)  # what a diffusers user writes from the model card
    user.load_lora_weights(str(run / "lora"))
    load_into_pipeline(user, run / "embeddings" / "sks.safetensors")
    images = sample_images(trained, PROMPT)
    assert np.array_equal(sample_images(user, PROMPT), images)
    lora_only = load_pipeline(base)
    lora_only.load_lora_weights(str(run / "lora"))
    assert not np.allclose(sample_images(lora_only, PROMPT), images), "the token must matter"

    out = run_cli("generate", str(run), "--prompt", PROMPT, "--out", str(tmp_path / "gen"), "--steps", "2")
    assert "images in" in out.stdout and list((tmp_path / "gen").glob("*.png"))


def test_checkpoints_and_kohya_export_carry_the_lora_and_the_token(tmp_path: Path) -> None:
    from sdtune.evaluation.checkpoints import expand_checkpoints
    from sdtune.inference.pipeline import load_for_inference
    from sdtune.models.embeddings import unbundle

    run = _train(tmp_path, "tiny")
    models = expand_checkpoints(run, tmp_path / "eval")
    assert [m.step for m in models] == [1, 2, 3, 4] and models[-1].final
    final = models[-1].folder
    for part in ("embeddings/sks.safetensors", "lora/pytorch_lora_weights.safetensors"):
        mine, theirs = load_file(str(final / part)), load_file(str(run / part))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), part
    assert np.array_equal(sample_images(load_for_inference(str(final)), PROMPT),
                          sample_images(load_for_inference(str(run)), PROMPT))

    out = run_cli("export", str(run), "--format", "kohya")
    assert "bundled in the LoRA file" in out.stdout
    exported = load_file(str(run / "export" / "run.safetensors"))
    bundled = unbundle(exported)
    assert list(bundled) == ["sks"] and torch.equal(bundled["sks"]["sks"], load_file(
        str(run / "embeddings" / "sks.safetensors"))["sks"])
    assert any(k.startswith("lora_unet_") for k in exported)
    assert (run / "export" / "run" / "sks.safetensors").is_file(), "the embedding file for ComfyUI, in its folder"


def test_the_token_alone_first_then_the_lora_around_it(tmp_path: Path) -> None:
    """train.textual_inversion.lora_start (inversion first, then tuning: cloneofsimo's lora_pti): the LoRA keeps its
    initial weights while the token learns, then trains around the frozen token."""
    run = train_pivotal_sequence(tmp_path, "sks", PROMPT)
    first, held, last = _checkpoint(run, 1), _checkpoint(run, 2), _checkpoint(run, 4)
    (row,) = [k for k in last if k.endswith("token_embedding.learned.weight")]
    loras = [k for k in last if k != row]
    assert loras and all(torch.equal(first[k], held[k]) for k in loras), "the LoRA waits for lora_start"
    assert all(torch.equal(held[k], torch.zeros_like(held[k])) for k in loras if "lora_B" in k), "untouched"
    assert not torch.equal(first[row], held[row]), "the token learns alone first"
    assert torch.equal(held[row], last[row]), "then it is frozen (ti_fraction)"
    assert any(not torch.equal(held[k], last[k]) for k in loras), "and the LoRA trains around it"
    assert "| pivotal tuning | token steps 1-2, LoRA steps 3-4 |" in (run / "README.md").read_text()
    # a prompt without the learned token draws no person: generate says so (a newcomer wrote "sks" for "<sks>")
    gen = run_cli("generate", str(run), "-p", "a photo of a dog", "-n", "1", "--steps", "1", "--size", "32",
                  "--out", str(tmp_path / "gen"))
    assert f"note: {run} learned the token 'sks', which no prompt contains" in gen.stderr


def test_output_preservation_waits_with_the_lora(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While lora_start holds the LoRA back, output preservation is not computed (it is zero there, and its
    gradient only reaches the held LoRA): two UNet forwards per example saved in every token-only step. From the
    LoRA's first step on it is computed, and its value is not zero."""
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train
    from sdtune.training.preservation import OutputPreservation

    seen: list[float] = []
    real = OutputPreservation.loss

    def recorded(self, *args, **kwargs):
        value = real(self, *args, **kwargs)
        seen.append(float(value.detach()))
        return value

    monkeypatch.setattr(OutputPreservation, "loss", recorded)
    data = {"instance_dir": str(make_images(tmp_path / "data", 2)), "instance_prompt": PROMPT,
            "class_prompt": "a photo of a dog"}
    cfg = tiny_config(tmp_path / "run", data, {"max_steps": 4, "learning_rate": 1e-2, "lora": {"rank": 4},
                                               "preservation": {"weight": 1.0},
                                               "textual_inversion": {"token": "sks", "learning_rate": 5e-2,
                                                                     "ti_fraction": 0.5, "lora_start": 0.5}})
    train(config_from_dict(cfg))
    assert len(seen) == 2, f"computed in the LoRA's 2 steps only, not in the token's: {len(seen)} times"
    assert seen[-1] > 0.0, "the LoRA's first update moved it from the starting model"


def test_a_token_inside_a_kept_prompt_is_refused(tmp_path: Path) -> None:
    """An added token matches inside words ("man" in "woman"): the class prompt that output preservation keeps
    without the person would then hold the token and train it. Found by a newcomer (token "man", class "woman")."""
    data = {"instance_dir": str(make_images(tmp_path / "data", 2)), "instance_prompt": "a photo of man",
            "class_prompt": "a photo of a woman"}
    cfg = tiny_config(tmp_path / "run", data, {"max_steps": 2, "lora": {"rank": 4}, "preservation": {"weight": 1.0},
                                               "textual_inversion": {"token": "man", "lora_start": 0.5}})
    proc = run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert ("data.class_prompt 'a photo of a woman' contains train.textual_inversion.token 'man' as the "
            "tokenizer reads it") in proc.stderr and "e.g. '<man>'" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
