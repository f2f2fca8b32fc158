"""Bad input to `sdtune train` gets one clear line (exit 2), never a traceback; the real loaders are exercised."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import make_images, run_cli, tiny_config, write_config


def _config(tmp_path: Path, **data) -> Path:
    data = {"instance_dir": str(make_images(tmp_path / "inst", 2)), "instance_prompt": "a photo of sks dog"} | data
    return write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", data, {"lora": {"rank": 2}}))


def _fails(*args: str, needle: str, cwd: Path | None = None, env: dict | None = None) -> str:
    proc = run_cli(*args, check=False, cwd=cwd, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("override,needle", [
    ("train.learnin_rate=1", "override train.learnin_rate=1: unknown key; did you mean train.learning_rate?"),
    ("train.max_steps=many", "train.max_steps"),
    ("train.optimizer=sgd", "'adamw', 'adamw8bit', 'prodigy', 'adamw_schedulefree' or 'adafactor'"),
    ("data.with_prior_preservation=true", "needs data.class_prompt"),
    ("train.optimizer=prodigy", "train.optimizer=prodigy estimates its own step size"),
    ("train.optimizer_args.d_coef=0.5", "d_coef is not an argument of AdamW"),
    ("nonsense", "must look like key.sub=value"),
])
def test_bad_config_names_the_key(tmp_path: Path, override: str, needle: str) -> None:
    _fails("train", str(_config(tmp_path)), override, needle=needle)


def test_missing_config_file(tmp_path: Path) -> None:
    _fails("train", str(tmp_path / "nope.yaml"), needle="nope.yaml does not exist")


def test_missing_and_empty_data_folders(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    _fails("train", config, f"data.instance_dir={tmp_path / 'missing'}", needle="missing")
    (tmp_path / "empty").mkdir()
    _fails("train", config, f"data.instance_dir={tmp_path / 'empty'}", needle="empty")


def test_uncaptioned_images_for_text_to_image(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "nocaps", 2)
    cfg = tiny_config(tmp_path / "run", {"train_dir": str(folder)})
    _fails("train", str(write_config(tmp_path / "t.yaml", cfg)), needle="caption")


def test_pickle_weights_refused_unless_allowed(tmp_path: Path) -> None:
    from sdtune.models.presets import build_tiny_pipeline

    folder = tmp_path / "pickled"
    build_tiny_pipeline().save_pretrained(folder, safe_serialization=False)
    assert list((folder / "unet").glob("*.bin"))
    config = str(_config(tmp_path))
    err = _fails("train", config, f"model.base={folder}", needle="pickle")
    assert "model.allow_pickle" in err
    done = run_cli("train", config, f"model.base={folder}", "model.allow_pickle=true", "train.max_steps=1")
    assert "done: 1 step," in done.stdout


def test_not_a_model_folder_and_unknown_hub_id_offline(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    _fails("train", config, f"model.base={tmp_path / 'inst'}", needle="not a diffusers model")
    _fails("train", config, "model.base=someone/not-cached", needle="not in the local Hugging Face cache",
           env={"HF_HUB_OFFLINE": "1"})


def test_hub_id_loads_from_the_local_cache_offline(tmp_path: Path) -> None:
    """The real hub path: a model in the Hugging Face cache layout loads by id with HF_HUB_OFFLINE=1."""
    from sdtune.models.presets import preset_path

    cache = tmp_path / "hub"
    repo = cache / "models--sdtune-test--tiny-sd"
    revision = "0" * 40
    shutil.copytree(preset_path("tiny"), repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    done = run_cli("train", str(_config(tmp_path)), "model.base=sdtune-test/tiny-sd", "train.max_steps=1",
                   env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert "done: 1 step," in done.stdout


def test_a_bad_model_key_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    """``model.vae=nope`` loaded the base model, then printed diffusers' "nope does not appear to have a file named
    config.json"; a bad model.adapters path came after the base model too, without its key."""
    config = str(_config(tmp_path))
    err = _fails("train", config, "model.vae=nope", needle="model.vae: VAE 'nope' is not in the local Hugging Face "
                 "cache", env={"HF_HUB_OFFLINE": "1"})
    assert "pass a local VAE folder or .safetensors file" in err and "Loading" not in err, err
    _fails("train", config, f"model.adapters=[{{path: {tmp_path / 'inst'}}}]",
           needle=f"model.adapters[0].path: no LoRA weights at {tmp_path / 'inst'}")


def test_a_vae_hub_id_loads_from_the_local_cache_offline(tmp_path: Path) -> None:
    """A VAE repo holds config.json, not model_index.json: the hub check looks for what a VAE repo has."""
    from sdtune.models.presets import preset_path

    cache = tmp_path / "hub"
    repo = cache / "models--sdtune-test--vae"
    revision = "0" * 40
    shutil.copytree(preset_path("tiny") / "vae", repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    done = run_cli("train", str(_config(tmp_path)), "model.vae=sdtune-test/vae", "train.max_steps=1",
                   env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert "done: 1 step" in done.stdout


@pytest.mark.slow
def test_lora_divergence_without_clipping_never_saves_a_bad_checkpoint(tmp_path: Path) -> None:
    """LoRA at lr 1e4 without clipping: it used to save NaN weights as the 'last good' checkpoint."""
    config = str(_config(tmp_path))
    proc = run_cli("train", config, "train.learning_rate=1e4", "train.max_grad_norm=null", "train.max_steps=20",
                   "checkpoint.every=1", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr[proc.stderr.index("error:"):]
    assert "No checkpoint of this run is known good" in message and "train.max_grad_norm=1.0" in message, message
    from safetensors.torch import load_file

    checkpoints = tmp_path / "run" / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.startswith("step-")], "no checkpoint may stay live"
    saved = list(checkpoints.rglob("trainable.safetensors"))
    assert saved, "the unjudged checkpoint is moved aside, not deleted"
    for path in saved:
        assert all(bool(t.isfinite().all()) for t in load_file(str(path)).values()), f"{path} holds NaN"
    done = run_cli("train", config, "train.learning_rate=1e-3", "train.max_steps=2")  # starting again is allowed
    assert "done: 2 steps" in done.stdout


def test_train_never_writes_over_a_users_folder_or_into_the_data(tmp_path: Path) -> None:
    """Issue #10: `output_dir=` (the current folder) replaced the user's README.md / config.yaml / metrics.json."""
    config = _config(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    for name in ("README.md", "config.yaml", "metrics.json"):
        (user / name).write_text("mine\n")
    _fails("train", str(config), "output_dir=", needle="output_dir=: is empty", cwd=user)
    _fails("train", str(config), "output_dir=.", needle="is not an sdtune run folder", cwd=user)
    assert all((user / n).read_text() == "mine\n" for n in ("README.md", "config.yaml", "metrics.json"))
    _fails("train", str(config), f"output_dir={tmp_path / 'inst'}", needle="is the training data folder itself")
    assert not (tmp_path / "inst" / "config.yaml").exists()
