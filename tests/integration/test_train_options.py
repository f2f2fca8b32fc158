"""The training options of issue 24 through the one loop: each trains under bf16 on SD or SDXL, resumes bitwise
from a copy of its half-way checkpoint (what an interruption leaves), and saves the weights it claims to.

Optimizers (Prodigy, schedule-free AdamW, Adafactor) and the EMA of a LoRA / a learned token: the files written
(``lora/``, ``embeddings/``, each checkpoint's ``evaluated.safetensors``) hold the evaluated weights (EMA, or
schedule-free's average ``x``), computed here independently from the checkpoint's raw weights and state, while the
checkpoint's ``trainable.safetensors`` keeps the raw ones for resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import make_images, resume_from_copy, run_cli, safetensors_in, tiny_config, write_config

pytestmark = pytest.mark.slow

STEPS, HALF = 4, 2

# name: (model, train section, validation.every)
COMBOS = {
    "prodigy-lora-te": ("tiny", {"optimizer": "prodigy", "learning_rate": 1.0, "lora": {"rank": 4},
                                 "train_text_encoder": True, "lr_scheduler": "cosine", "lr_warmup_steps": 1,
                                 "optimizer_args": {"safeguard_warmup": True, "d_coef": 2.0}}, 0),
    # schedule-free with validation between checkpoints: swapping x in and out must not move the trajectory
    "xl-schedulefree-lora-te": ("tiny-xl", {"optimizer": "adamw_schedulefree", "learning_rate": 1e-2,
                                            "lora": {"rank": 4}, "train_text_encoder": True,
                                            "lr_warmup_steps": 1}, 1),
    "adafactor-full": ("tiny", {"optimizer": "adafactor", "learning_rate": 1e-4,
                                "optimizer_args": {"beta1": 0.9}}, 0),
    "xl-ema-lora": ("tiny-xl", {"lora": {"rank": 4}, "learning_rate": 1e-2, "ema": {"decay": 0.5}}, 1),
    # LoRA kinds through peft: DoRA with a fused model/, LoHa on SDXL's UNet and both text encoders, LoKr with an
    # EMA of its factors; each RUN/lora verified in its consumers at the end (test_lora_variants: the files alone)
    "dora-te-fused": ("tiny", {"lora": {"kind": "dora", "rank": 4}, "train_text_encoder": True,
                               "learning_rate": 1e-2}, 0),
    "xl-loha-te": ("tiny-xl", {"lora": {"kind": "loha", "rank": 4}, "train_text_encoder": True,
                               "learning_rate": 1e-2}, 1),
    "lokr-ema": ("tiny", {"lora": {"kind": "lokr", "rank": 4}, "learning_rate": 1e-2, "ema": {"decay": 0.5}}, 0),
    "ema-ti": ("tiny", {"textual_inversion": {"token": "sks"}, "learning_rate": 5e-2, "adam_weight_decay": 0.0,
                        "ema": {"decay": 0.5}}, 1),
}


def _config(tmp: Path, name: str, run: str) -> Path:
    model, train, every = COMBOS[name]
    data = {"instance_dir": str(make_images(tmp / "instance", 3, color=(30, 160, 60))),
            "instance_prompt": "a photo of sks dog"}
    cfg = tiny_config(tmp / run, data, {"max_steps": STEPS, "mixed_precision": "bf16", **train},
                      checkpoint={"every": HALF, "keep": 5},
                      validation={"prompts": ["a photo of sks dog"], "every": every, "steps": 1})
    cfg["model"]["base"] = model
    if name.endswith("-fused"):
        cfg["save"] = {"full_model": True}
    return write_config(tmp / f"{run}.yaml", cfg)


def _resume_from_copy(tmp: Path, name: str) -> Path:
    out = resume_from_copy(tmp / "straight", tmp / "resumed", _config(tmp, name, "resumed"), HALF)
    assert f"done: {STEPS} steps" in out.stdout
    return tmp / "resumed"


def _evaluated_independently(name: str, checkpoint: Path) -> dict[str, torch.Tensor] | None:
    """The weights a checkpoint should evaluate, from its raw weights and saved state alone (None: the raw ones)."""
    raw = load_file(str(checkpoint / "trainable.safetensors"))
    train = COMBOS[name][1]
    if "ema" in train:
        shadow = torch.load(checkpoint / "ema.pt", weights_only=True)["shadow_params"]
        assert len(shadow) == len(raw)
        return dict(zip(_trainable_order(raw, checkpoint), shadow, strict=True))
    if train.get("optimizer") == "adamw_schedulefree":
        state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
        beta1 = state["param_groups"][0]["betas"][0]
        assert all(group["train_mode"] for group in state["param_groups"]), "saved in training mode (raw y)"
        z = state["state"]
        # a LoRA no gradient reaches (SDXL's last text-encoder layer: its penultimate states are used) has no z
        return {key: raw[key].lerp(z[i]["z"], 1 - 1 / beta1) if "z" in z.get(i, {}) else raw[key]
                for i, key in enumerate(_trainable_order(raw, checkpoint))}
    return None


def _trainable_order(raw: dict[str, torch.Tensor], checkpoint: Path) -> list[str]:
    """Checkpoint keys in parameter order (the optimizer's and the EMA's order; safetensors sorts names)."""
    from sdtune.config import load_config
    from sdtune.models.loading import load_components
    from sdtune.training.checkpoint import trainable_state
    from sdtune.training.modules import configure_trainables

    cfg = load_config(checkpoint / "config.yaml")
    trainables = configure_trainables(cfg, load_components(cfg.model.base), torch.device("cpu"))
    order = list(trainable_state(trainables.modules()))
    assert sorted(order) == sorted(raw)
    return order


@pytest.mark.parametrize("name", list(COMBOS))
def test_option_trains_in_bf16_resumes_bitwise_and_saves_the_evaluated_weights(tmp_path: Path, name: str) -> None:
    straight = tmp_path / "straight"
    run_cli("train", str(_config(tmp_path, name, "straight")))
    resumed = _resume_from_copy(tmp_path, name)
    final = f"checkpoints/step-{STEPS:06d}"
    for folder in (final, "lora", "embeddings", "model"):
        expected, actual = safetensors_in(straight / folder), safetensors_in(resumed / folder)
        assert expected.keys() == actual.keys(), folder
        for key in expected:
            assert torch.equal(expected[key], actual[key]), f"{folder}: {key} differs after resume"

    kind = (COMBOS[name][1].get("lora") or {}).get("kind")
    if kind is not None:
        _check_kind_outputs(straight, kind, resumed_log=(resumed / "config.yaml"))
    evaluated = _evaluated_independently(name, straight / final)
    written = straight / final / "evaluated.safetensors"
    if evaluated is None or "lora" not in COMBOS[name][1] and "textual_inversion" not in COMBOS[name][1]:
        assert not written.exists()
        return
    raw = load_file(str(straight / final / "trainable.safetensors"))
    on_disk = load_file(str(written))
    assert on_disk.keys() == evaluated.keys()
    assert all(torch.equal(on_disk[k], evaluated[k]) for k in on_disk), "evaluated.safetensors = EMA / x"
    assert not all(torch.equal(on_disk[k], raw[k]) for k in raw), "the evaluated weights must differ here"
    if "lora" in COMBOS[name][1]:  # the LoRA file holds the evaluated matrices (peft names without the adapter)
        if kind in ("loha", "lokr"):
            lora = {"unet." + k.removeprefix("base_model.model."): v for k, v in
                    load_file(str(straight / "lora/peft/unet/adapter_model.safetensors")).items()}
        else:
            lora = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
        for key, value in on_disk.items():
            part, rest = key.split(".", 1)
            if part == "unet":
                stored = f"unet.{rest.replace('.default.', '.')}".removesuffix(".default")
                assert torch.equal(lora[stored], value), key
    else:
        row = load_file(str(straight / "embeddings" / "sks.safetensors"))["sks"]
        (value,) = on_disk.values()
        assert torch.equal(row.reshape(value.shape), value), "the embedding file holds the EMA row"


def test_schedule_free_needs_a_constant_schedule_and_prodigy_a_rate_near_one(tmp_path: Path) -> None:
    config = _config(tmp_path, "prodigy-lora-te", "refused")
    for override, needle in (("train.optimizer=adamw_schedulefree", "set train.lr_scheduler=constant"),
                             ("train.learning_rate=1e-4", "use train.learning_rate=1.0")):
        proc = run_cli("train", str(config), override, check=False)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _check_kind_outputs(run: Path, kind: str, resumed_log: Path) -> None:
    """RUN/lora of a DoRA / LoHa / LoKr run: the files it claims, and `sdtune generate` draws from it."""
    import numpy as np

    from sdtune.inference.pipeline import load_for_inference

    lora = run / "lora"
    assert (lora / "lycoris.safetensors").is_file() and (lora / "peft" / "unet" / "adapter_config.json").is_file()
    assert (lora / "pytorch_lora_weights.safetensors").is_file() == (kind == "dora")
    keys = load_file(str(lora / "lycoris.safetensors"))
    assert any(k.endswith({"dora": ".diff", "loha": ".hada_w2_b", "lokr": ".lokr_w2"}[kind]) for k in keys) or \
        any(".lokr_w2_" in k for k in keys)
    pipe = load_for_inference(str(run))
    image = pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(image).all()
    out = run_cli("export", str(run), "--format", "kohya")
    assert "kohya/LyCORIS file" in out.stdout


def test_validation_loss_is_fixed_logged_resumes_exactly_and_picks(tmp_path: Path) -> None:
    """validation.loss.split: the held-out image is never trained on; the loss at each checkpoint is the same in a
    resumed run (fixed noise and timesteps, no global RNG), logged to tensorboard, and `pick --by val_loss` keeps
    the lowest (a DoRA run: its kept checkpoint is exported as the run's kohya/LyCORIS file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = {"instance_dir": str(make_images(tmp_path / "instance", 3, color=(30, 160, 60))),
            "instance_prompt": "a photo of sks dog"}

    def config(run: str) -> Path:
        cfg = tiny_config(tmp_path / run, data, {"max_steps": STEPS, "mixed_precision": "bf16",
                                                 "lora": {"rank": 4, "kind": "dora"},
                                                 "learning_rate": 1e-2, "train_text_encoder": True},
                          checkpoint={"every": 1, "keep": 10}, logging={"trackers": ["tensorboard"]},
                          validation={"loss": {"split": 0.34, "timesteps": 2}})
        return write_config(tmp_path / f"{run}.yaml", cfg)

    run_cli("train", str(config("straight")))
    straight = json.loads((tmp_path / "straight/metrics.json").read_text())
    assert straight["images"] == 2, "the held-out image is not trained on"
    assert list(straight["val_loss"]) == [str(s) for s in range(1, STEPS + 1)]
    assert len(set(straight["val_loss"].values())) > 1, "training moves the loss"

    run = tmp_path / "resumed"
    resume_from_copy(tmp_path / "straight", run, config("resumed"), 2)
    assert json.loads((run / "metrics.json").read_text())["val_loss"] == straight["val_loss"]

    events = EventAccumulator(str(next((tmp_path / "straight/logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("val_loss")}
    assert logged == pytest.approx({int(k): v for k, v in straight["val_loss"].items()}, rel=1e-6)

    out = run_cli("pick", str(tmp_path / "straight"), "--by", "val_loss")
    best = min(straight["val_loss"].items(), key=lambda kv: (kv[1], int(kv[0])))
    assert f"kept: step {best[0]}," in out.stdout
    assert json.loads((tmp_path / "straight/picked/pick.json").read_text())["step"] == int(best[0])
    assert (tmp_path / "straight/export" / f"straight-step-{int(best[0]):06d}.safetensors").is_file(), \
        "the kept DoRA checkpoint's kohya/LyCORIS file"
