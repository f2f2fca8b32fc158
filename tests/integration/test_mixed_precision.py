"""bf16 mixed precision end to end: each config trains to the end, resumes bitwise, and its outputs say what trained.

Not the full factorial (bf16 is slow on this CPU: ~1 s per tiny step): each factor of a run is on in one config
and off in the other — text-to-image / DreamBooth, LoRA / full, text encoder trained / frozen, prior preservation
with class images generated in bf16, EMA, validation during / only at the end of training, fused model. A resume
starts from a copy of the straight run's half-way checkpoint in a fresh run folder (what an interrupted run
leaves), so it needs no kill timing. Both train the v objective, one on ``tiny-v``, one on ``tiny`` (an epsilon
model) through ``model.prediction_type``; every output must say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers import make_images, resume_from_copy, run_cli, safetensors_in, tiny_config, write_config

pytestmark = pytest.mark.slow

STEPS, HALF = 2, 1

# name: (data kind, train section, model section, validation.every, save section)
COMBOS = {
    "t2i-lora-te-fused": ("t2i", {"lora": {"rank": 4}, "train_text_encoder": True}, {"base": "tiny-v"}, 0,
                          {"full_model": True}),
    # validation mid-run swaps the EMA weights in and out: the straight run must still match the resumed one
    "db-full-prior-ema": ("db", {"ema": {"decay": 0.9}}, {"prediction_type": "v_prediction"}, 1, {}),
    # SDXL in bf16 on the CPU: LoRA on the UNet and both text encoders, prior preservation (class images from the
    # SDXL pipeline in bf16), validation mid-run, fused model
    "xl-db-lora-te-prior-fused": ("db", {"lora": {"rank": 4}, "train_text_encoder": True},
                                  {"base": "tiny-xl", "prediction_type": "v_prediction"}, 1, {"full_model": True}),
    # SDXL textual inversion in bf16: a row on each text encoder, fp32 under the bf16 frozen model
    "xl-db-ti": ("db", {"textual_inversion": {"token": "sks"}, "learning_rate": 5e-2},
                 {"base": "tiny-xl", "prediction_type": "v_prediction"}, 1, {}),
    # SDXL pivotal tuning in bf16: two vectors per encoder beside a UNet LoRA, frozen after step 1 (the resume point)
    "xl-db-pivotal": ("db", {"lora": {"rank": 4}, "learning_rate": 1e-3,
                             "textual_inversion": {"token": "sks", "learning_rate": 5e-2, "ti_fraction": 0.5,
                                                   "num_vectors": 2}},
                      {"base": "tiny-xl", "prediction_type": "v_prediction"}, 1, {}),
}


def _data(tmp: Path, kind: str) -> dict:
    if kind == "t2i":
        return {"train_dir": str(make_images(tmp / "captioned", 4, captions=["a red disc", "a blue dot"]))}
    return {"instance_dir": str(make_images(tmp / "instance", 3, color=(30, 160, 60))),
            "instance_prompt": "a photo of sks dog", "with_prior_preservation": True,
            "class_dir": str(tmp / "class"), "class_prompt": "a photo of a dog", "num_class_images": 1,
            "class_generation_steps": 1}


def _config(tmp: Path, name: str, run: str) -> Path:
    kind, train, model, every, save = COMBOS[name]
    prompt = "a red disc" if kind == "t2i" else "a photo of sks dog"
    cfg = tiny_config(tmp / run, _data(tmp, kind), {"max_steps": STEPS, "mixed_precision": "bf16", **train},
                      checkpoint={"every": HALF, "keep": 5}, save=save,
                      validation={"prompts": [prompt], "every": every, "steps": 1})
    cfg["model"].update(model)
    return write_config(tmp / f"{run}.yaml", cfg)


def _resume_from_copy(tmp: Path, name: str) -> Path:
    """A fresh run folder holding only what an interruption at step HALF leaves: config.yaml and that checkpoint."""
    out = resume_from_copy(tmp / "straight", tmp / "resumed", _config(tmp, name, "resumed"), HALF)
    assert f"done: {STEPS} steps" in out.stdout
    return tmp / "resumed"


def _assert_bitwise(expected: dict, actual: dict, what: str) -> None:
    assert expected and expected.keys() == actual.keys(), what
    for key in expected:
        assert torch.equal(expected[key], actual[key]), f"{what}: {key} differs"


@pytest.mark.parametrize("name", list(COMBOS))
def test_bf16_run_finishes_resumes_bitwise_and_outputs_say_what_trained(tmp_path: Path, name: str) -> None:
    from sdtune.inference.pipeline import load_for_inference
    from sdtune.models.portable import portable_key
    from sdtune.models.presets import preset_path

    kind, train, model, every, save = COMBOS[name]
    straight = tmp_path / "straight"
    out = run_cli("train", str(_config(tmp_path, name, "straight")))
    assert f"done: {STEPS} steps" in out.stdout
    resumed = _resume_from_copy(tmp_path, name)

    final = f"checkpoints/step-{STEPS:06d}"
    _assert_bitwise(safetensors_in(straight / final), safetensors_in(resumed / final), "final trainable weights")
    lora, learned = "lora" in train, "textual_inversion" in train
    outputs = ["embeddings"] * learned + ["lora"] * lora + ["model"] * (not lora and not learned
                                                                          or bool(save.get("full_model")))
    for folder in outputs:
        _assert_bitwise(safetensors_in(straight / folder), safetensors_in(resumed / folder), f"{folder}/")
    assert not (straight / "model").exists() or "model" in outputs

    steps_sampled = [HALF, STEPS] if every else [STEPS]
    for step in steps_sampled:
        image = Image.open(straight / "samples" / f"step-{step:06d}" / "00-00.png")
        assert image.size == (32, 32) and np.asarray(image).std() > 0, "a validation image must be a picture"
    assert (resumed / "samples" / f"step-{STEPS:06d}" / "00-00.png").is_file()

    if lora:
        weights = load_file(str(straight / "lora" / "pytorch_lora_weights.safetensors"))
        assert {t.dtype for t in weights.values()} == {torch.float32}, "LoRA weights are saved in fp32"
        assert any(k.startswith("text_encoder.") for k in weights) == train.get("train_text_encoder", False)
    if (straight / "model").exists():
        scheduler = json.loads((straight / "model" / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["prediction_type"] == "v_prediction", "model/ must sample with the objective it trained"
        unet = load_file(str(straight / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
        assert {t.dtype for t in unet.values()} == {torch.float32}
    if learned:
        rows = load_file(str(straight / "embeddings" / "sks.safetensors"))
        n = train["textual_inversion"].get("num_vectors", 1)
        assert {k: (tuple(v.shape), v.dtype) for k, v in rows.items()} == {
            "clip_l": ((n, 32), torch.float32), "clip_g": ((n, 32), torch.float32)}
    if not lora and not learned:  # frozen parts are saved as the base's own weights, not a bf16 round trip
        for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
            # key names: model/ stores the text encoder under transformers-4 names (models/portable.py)
            base = {portable_key(k) if part.startswith("text_encoder") else k: v
                    for k, v in load_file(str(preset_path("tiny") / part)).items()}
            _assert_bitwise(base, load_file(str(straight / "model" / part)), f"model/{part} vs the base's")
    if "ema" in train:
        from diffusers import UNet2DConditionModel

        ema = torch.load(straight / final / "ema.pt", weights_only=True)["shadow_params"]
        raw = load_file(str(straight / final / "trainable.safetensors"))
        saved = UNet2DConditionModel.from_pretrained(str(straight / "model"), subfolder="unet").named_parameters()
        pairs = [(param, shadow, raw[f"unet.{n}"]) for (n, param), shadow in zip(saved, ema, strict=True)]
        assert all(torch.equal(p, s) for p, s, _ in pairs), "model/unet holds the EMA weights"
        assert not all(torch.equal(p, r) for p, _, r in pairs), "EMA weights must differ from the raw ones here"

    pipe = load_for_inference(str(straight))  # what `sdtune generate RUN` and eval load
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    image = pipe("a photo of sks dog", num_inference_steps=2, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert np.isfinite(image).all()


def test_ema_run_validates_the_ema_weights_it_saves(tmp_path: Path) -> None:
    """The final validation images are the ones ``model/`` (EMA weights) makes, not the raw weights' (fp32: exact)."""
    from sdtune.config import load_config
    from sdtune.models.loading import load_components
    from sdtune.training.validation import run_validation

    data = {"instance_dir": str(make_images(tmp_path / "instance", 3)), "instance_prompt": "a photo of sks dog"}
    run = tmp_path / "run"
    cfg = tiny_config(run, data, {"max_steps": STEPS, "learning_rate": 5e-3, "ema": {"decay": 0.5}},
                      validation={"prompts": ["a photo of sks dog"], "steps": 2})
    run_cli("train", str(write_config(tmp_path / "c.yaml", cfg)))
    cfg = load_config(run / "config.yaml", [])
    sample = np.asarray(Image.open(run / "samples" / f"step-{STEPS:06d}" / "00-00.png"))

    comps = load_components(str(run / "model"))
    again = run_validation(cfg, comps, comps.unet, comps.text_encoder, STEPS, tmp_path / "ema")
    assert np.array_equal(sample, np.asarray(again[0])), "validation must show the weights model/ holds"
    raw = load_file(str(run / "checkpoints" / f"step-{STEPS:06d}" / "trainable.safetensors"))
    with torch.no_grad():
        for name, param in comps.unet.named_parameters():
            param.copy_(raw[f"unet.{name}"])
    raw_image = run_validation(cfg, comps, comps.unet, comps.text_encoder, STEPS, tmp_path / "raw")[0]
    assert not np.array_equal(sample, np.asarray(raw_image)), "raw and EMA weights must draw differently here"
