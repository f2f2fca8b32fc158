"""What a fresh user hits first: paths, devices, dtypes, model references, config typos. One clear line, exit 2.

Run in-process through the console entry point (``sdtune.cli.main``), as a user's shell would run it.
"""

from __future__ import annotations

import warnings

import pytest
import yaml

from sdtune.cli import main
from sdtune.config import ConfigError, list_keys, load_config
from sdtune.models.presets import PRESETS


def _fails(capsys, *argv: str) -> str:
    """Run ``sdtune ARGV``; it must exit 2 with one ``error:`` line on stderr (no traceback)."""
    with pytest.raises(SystemExit) as stopped:
        main(list(argv))
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def _one_line(err: str) -> str:
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_train_takes_a_run_folder_and_path_mistakes_are_one_line(tmp_path, capsys):
    run = tmp_path / "runs" / "r20"
    run.mkdir(parents=True)
    assert "without config.yaml" in _one_line(_fails(capsys, "train", str(run), "--resume", "latest"))
    (run / "config.yaml").write_text("data:\n  train_dir: photos\ntrain:\n  max_stepz: 3\n", encoding="utf-8")
    err = _fails(capsys, "train", str(run), "--resume", "latest")  # the folder's config.yaml is read
    assert f"{run / 'config.yaml'}: train.max_stepz" in err or "train.max_stepz: unknown key" in err, err
    some_file = tmp_path / "notes.txt"
    some_file.write_text("x", encoding="utf-8")
    cases = [
        (["dataset", "check", str(some_file)], "is a file"),
        (["dataset", "check", str(tmp_path / "nope")], "does not exist"),
        (["dataset", "build", str(run), str(some_file)], "is a file"),
        (["dataset", "build", str(some_file), str(tmp_path / "out")], "is a file"),
        (["run", str(run)], "is a folder"),
        (["personalize", str(tmp_path / "people.csv"), "--concept", str(run)], "does not exist"),
        (["personalize", str(some_file), "--concept", str(some_file)], "is a file"),
        (["eval", "tiny", "-p", "x", "--reference", str(some_file)], "is a file"),
        (["generate", "tiny", "-p", "x", "--out", str(some_file)], "is a file"),
        (["export", str(tmp_path / "runs" / "gone")], "does not exist"),
        (["toy", "world", str(some_file)], "is a file"),
    ]
    for argv, needle in cases:
        assert needle in _one_line(_fails(capsys, *argv)), argv


def test_devices_are_checked_before_anything_loads(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    err = _one_line(_fails(capsys, "generate", "tiny", "-p", "x", "--device", "cdua"))
    assert "did you mean cuda?" in err and "Available here: cpu" in err
    for command in (["generate", "tiny", "-p", "x"], ["eval", "tiny", "-p", "x"]):
        err = _one_line(_fails(capsys, *command, "--device", "cuda"))
        assert "no CUDA GPU here" in err and "Available here: cpu" in err


def test_dtypes_take_both_spellings():
    import torch

    from sdtune.config import config_from_dict
    from sdtune.inference.generate import pick_dtype

    assert pick_dtype("cpu", "fp16") == pick_dtype("cpu", "float16") == torch.float16
    assert pick_dtype("cpu", "bf16") == torch.bfloat16 and pick_dtype("cpu", "fp32") == torch.float32
    cfg = config_from_dict({"data": {"train_dir": "d"}, "train": {"mixed_precision": "bfloat16"}})
    assert cfg.train.mixed_precision == "bf16"


def test_a_path_like_model_reference_that_is_missing_says_so(tmp_path, monkeypatch):
    from sdtune.errors import ModelLoadError
    from sdtune.models.loading import resolve_model_ref

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r20").mkdir(parents=True)
    for ref in ("runs/nothere", "./nothere", "a/b/c", "model.safetensors"):
        with pytest.raises(ModelLoadError, match="does not exist") as failure:
            resolve_model_ref(ref)
        assert "cache" not in str(failure.value)
    with pytest.raises(ModelLoadError, match=r"did you mean runs/r20\?"):
        resolve_model_ref("runs/r2")
    with pytest.raises(ModelLoadError) as offline:  # a hub id, not cached (HF_HUB_OFFLINE in tests)
        resolve_model_ref("someone/some-model")
    assert all(name in str(offline.value) for name in PRESETS)
    base = next(row for row in list_keys() if row[0] == "model.base")
    assert all(name in base[2] for name in PRESETS)


def test_config_errors_say_where_the_key_came_from_and_what_is_allowed(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text(yaml.safe_dump({"data": {"train_dir": "d"}, "train": {"max_stepz": 3}}), encoding="utf-8")
    with pytest.raises(ConfigError) as failure:
        load_config(config, ["train.learning_rat=1", "train.mixed_precision=false"])
    text = str(failure.value)
    assert "override train.learning_rat=1: unknown key; did you mean train.learning_rate?" in text
    assert "override train.mixed_precision=false: 'false' is not allowed; use 'no', 'fp16' or 'bf16'" in text
    assert f"{config}: train.max_stepz: unknown key; did you mean train.max_steps?" in text
    # a typo in an override's section name is the override's, not the file's
    with pytest.raises(ConfigError, match=r"\n  override train\.atention_loss\.weight=0\.1: unknown key; did you mean "
                                          r"train\.attention_loss\?"):
        load_config(config, ["train.atention_loss.weight=0.1"])
    with pytest.raises(ConfigError, match=r"learning_rate.*did you mean train\.learning_rate\?"):
        load_config(None, ["data.train_dir=d", "learning_rate=1"])  # a key in the wrong section
    # a single value where a section belongs: how to turn it on (pydantic named an internal class, EMAConfig)
    with pytest.raises(ConfigError) as failure:
        load_config(None, ["data.train_dir=d", "train.ema=true", "train.preservation=1"])
    text = str(failure.value)
    assert "train.ema = true: a section of keys (decay, update_after_step)" in text and "Config" not in text
    assert "write train.ema={} for its defaults, train.ema.decay=... to set one, or train.ema=null for none" in text
    assert "train.preservation = 1: a section of keys (weight, prompts)" in text
    assert "train.preservation.weight=1 to set its weight" in text  # a number: the section's first number key
    with pytest.raises(ConfigError, match=r"train\.lora\.rank=4 to set its rank"):
        load_config(None, ["data.train_dir=d", "train.lora=4"])
    # a check across sections names its keys itself: no "(top level):" before it
    with pytest.raises(ConfigError) as failure:
        load_config(None, ["data.instance_dir=d", "data.instance_prompt=a photo", "train.textual_inversion.token=<s>"])
    assert str(failure.value).startswith("invalid config: data.instance_prompt 'a photo' does not contain"), failure
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as failure:
        load_config(empty)
    assert all(key in str(failure.value) for key in ("data.train_dir", "data.instance_dir", "configs/"))


def test_resume_refusals_list_one_change_per_line(tmp_path):
    import torch

    from sdtune.config import RunConfig, dump_config
    from sdtune.training import checkpoint as ckpt
    from sdtune.training.resume import plan_resume

    old = RunConfig.model_validate({"data": {"train_dir": "d"}, "train": {"lora": {"rank": 4}}})
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    path = ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=2), {"m": model}, opt, sched,
                                config_text=dump_config(old))
    new = RunConfig.model_validate({"data": {"train_dir": "d2"}, "train": {"lora": {"rank": 8}},
                                    "model": {"base": "tiny-v"}})
    with pytest.raises(ConfigError) as failure:
        plan_resume(path, new)
    lines = str(failure.value).splitlines()
    assert len(lines) >= 5 and all(len(line) <= 200 for line in lines), lines
    assert any(line.startswith("  train.lora.rank 4 -> 8") for line in lines)


def test_a_copied_run_folder_is_not_trained_into_its_original_unless_asked(tmp_path):
    """`sdtune train COPY --resume latest` used to print a note and resume the original folder."""
    from sdtune.commands.train import foreign_output_dir
    from sdtune.errors import SdtuneError

    original, copy = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    (copy / "checkpoints").mkdir(parents=True)
    (copy / "config.yaml").write_text(f"output_dir: {original}\n", encoding="utf-8")
    with pytest.raises(SdtuneError) as err:
        foreign_output_dir(copy / "config.yaml", original, [])
    line = str(err.value)
    assert str(original) in line and f"output_dir={copy}" in line and f"output_dir={original}" in line
    assert "\n" not in line
    assert foreign_output_dir(copy / "config.yaml", copy, []) is None
    assert foreign_output_dir(copy / "config.yaml", original, [f"output_dir={original}"]) is None


def test_library_deprecation_notices_are_quiet_and_ours_are_not(tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline

    from sdtune.cli import quiet_libraries

    def load() -> None:  # diffusers 0.42 says "`torch_dtype` is deprecated" on every pipeline load sdtune does
        with pytest.raises((OSError, ValueError)):  # no such model: only the notice matters
            StableDiffusionPipeline.from_pretrained(str(tmp_path / "none"), torch_dtype=torch.float32,
                                                    local_files_only=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load()
    assert any("torch_dtype" in str(w.message) for w in caught)  # the notice is real
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()
        load()
        warnings.warn_explicit("sdtune's own", FutureWarning, "x.py", 1, module="sdtune.data.check")
    assert [str(w.message) for w in caught] == ["sdtune's own"]


def test_progress_bars_in_a_log_file_keep_their_first_and_last_state_only(tmp_path) -> None:
    """A run's stderr in a file (nohup, Slurm) was one line of a redraw per step; now at most one per 30 s."""
    import subprocess
    import sys

    from tests.helpers import make_images

    data = make_images(tmp_path / "data", 2, captions=["a red ball"])
    env = {k: v for k, v in __import__("os").environ.items() if k != "TQDM_MININTERVAL"}
    with open(tmp_path / "log.txt", "w") as log:
        (tmp_path / "c.yaml").write_text("model:\n  base: tiny\n")
        proc = subprocess.run([sys.executable, "-m", "sdtune", "train", str(tmp_path / "c.yaml"),
                               f"data.train_dir={data}", "data.resolution=32", "train.max_steps=12",
                               f"output_dir={tmp_path / 'run'}",
                               "logging.trackers=[]", "checkpoint.every=12", "save.verify=false"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert proc.returncode == 0, (tmp_path / "log.txt").read_text()
    draws = [d for d in (tmp_path / "log.txt").read_text().replace("\r", "\n").splitlines() if d.startswith("train:")]
    assert len(draws) <= 3, draws  # first, last (and a close redraw), not one per step
    assert "12/12" in draws[-1] and "loss=" in draws[-1]


def test_loading_the_cli_imports_no_tqdm() -> None:
    """The CLI sets tqdm's log-file pace before tqdm is first imported (above); a command module that imports tqdm
    (or a module that does) at registration would silently undo it for every command."""
    import subprocess
    import sys

    code = "import sys, sdtune.cli; print('tqdm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
