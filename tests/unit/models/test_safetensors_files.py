"""Every reader of a ``.safetensors`` file turns a damaged one (cut short by a copy or a full disk) into one
DamagedFileError line naming the file and what to do; other failures pass through unchanged.

The commands themselves are checked end to end in tests/integration/test_damaged_files.py.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdtune.errors import DamagedFileError, ModelLoadError
from sdtune.models.safetensors_files import (
    check_safetensors,
    damaged_message,
    first_damaged,
    load_safetensors,
    open_safetensors,
    reading_safetensors,
)
from sdtune.training import checkpoint as ckpt

# half a small file ends inside its header ("invalid header length"), of a larger one in its tensors ("incomplete
# metadata, file not fully covered"): both are a file cut short
CUT_SHORT = "is damaged or incomplete (a copy cut short, or a disk that filled; safetensors: "


def write(file: Path, tensors: dict[str, torch.Tensor] | None = None, metadata: dict | None = None) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors = tensors or {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": torch.ones(2, 8),
                          "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": torch.ones(8, 2)}
    save_file(tensors, str(file), metadata=metadata or {"format": "pt"})
    return file


def cut(file: Path) -> Path:
    """``truncate -s 50% FILE``."""
    os.truncate(file, file.stat().st_size // 2)
    return file


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    return cut(write(tmp_path / "half.safetensors"))


def assert_names(exc: pytest.ExceptionInfo, file: Path, fix: str = "copy it again from where it came from") -> str:
    line = str(exc.value)
    assert "\n" not in line and line.startswith(f"{file} {CUT_SHORT}") and fix in line, line
    assert exc.value.file == str(file) and exc.value.detail.startswith("safetensors: ")
    return line


# --- the helper ---------------------------------------------------------------------------------------------------

def test_a_damaged_file_is_one_line_with_the_file_and_the_fix(damaged: Path) -> None:
    for read in (load_safetensors, check_safetensors, lambda f: open_safetensors(f).__enter__()):
        with pytest.raises(DamagedFileError) as exc:
            read(damaged)
        assert_names(exc, damaged)
    with pytest.raises(DamagedFileError, match="half.safetensors .*: sdtune wrote it"):
        load_safetensors(damaged, fix="sdtune wrote it")
    assert issubclass(DamagedFileError, ModelLoadError)  # the CLI prints it as one line, exit 2


def test_a_file_of_another_kind_is_named_as_such(tmp_path: Path) -> None:
    text = tmp_path / "notes.safetensors"
    text.write_text("these are not weights\n" * 20)
    with pytest.raises(DamagedFileError, match=r"notes.safetensors is damaged or not a safetensors file \(another "
                                               r"kind of file renamed, or garbled; safetensors: header too large\)"):
        load_safetensors(text)
    assert "cut short" in damaged_message("f", "safetensors: header too small")


def test_other_failures_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_safetensors(tmp_path / "missing.safetensors")
    with open_safetensors(write(tmp_path / "ok.safetensors")) as handle, pytest.raises(SafetensorError):
        handle.get_tensor("no such tensor")  # not a damaged file: safetensors' own error
    with pytest.raises(ValueError, match="mine"), reading_safetensors(tmp_path / "ok.safetensors"):
        raise ValueError("mine")


def test_a_loader_s_wrapped_error_names_the_damaged_file_in_the_folder(tmp_path: Path) -> None:
    write(tmp_path / "model" / "a" / "fine.safetensors")
    bad = cut(write(tmp_path / "model" / "b" / "weights.safetensors"))
    assert first_damaged(tmp_path / "model") == (bad, "safetensors: invalid header length")
    with pytest.raises(DamagedFileError) as exc, reading_safetensors(tmp_path / "model"):
        try:
            load_file(str(bad))
        except SafetensorError as inner:  # as diffusers does: its own error, raised while handling safetensors'
            raise OSError(f"Unable to load weights from checkpoint file {bad}") from inner
    assert_names(exc, bad)
    with pytest.raises(OSError, match="no weights"), reading_safetensors(tmp_path / "model" / "a"):
        raise OSError("no weights") from SafetensorError("Error while deserializing header: header too small")


# --- each reader --------------------------------------------------------------------------------------------------

def _lora_readers() -> dict[str, Callable[[Path, Path], object]]:
    from sdtune.models.comfyui import apply_kohya_comfyui
    from sdtune.models.family import base_generation, family_of_checkpoint
    from sdtune.models.fit import check_lora_fits
    from sdtune.models.kohya import export_kohya, read_diffusers_lora
    from sdtune.models.lora import load_frozen_adapters, rewrite_lora_file
    from sdtune.models.lycoris import merge_comfyui
    from sdtune.models.verify import file_dtype

    linear = torch.nn.Linear(2, 2)
    return {
        "read_diffusers_lora": lambda file, tmp: read_diffusers_lora(file),
        "export_kohya": lambda file, tmp: export_kohya(file, tmp / "out.safetensors"),
        "rewrite_lora_file": lambda file, tmp: rewrite_lora_file(file, tmp / "out.safetensors"),
        "check_lora_fits": lambda file, tmp: check_lora_fits(file, SimpleNamespace(unet=None, text_encoder=None), "x"),
        "load_frozen_adapters": lambda file, tmp: load_frozen_adapters(linear, linear, [(file, 1.0, "a")]),
        "apply_kohya_comfyui": lambda file, tmp: apply_kohya_comfyui(linear, linear, file),
        "merge_comfyui": lambda file, tmp: merge_comfyui(linear, linear, file),
        "file_dtype": lambda file, tmp: file_dtype(file),
        "family_of_checkpoint": lambda file, tmp: family_of_checkpoint(file),
        "base_generation": lambda file, tmp: base_generation(str(file)),
    }


@pytest.mark.parametrize("reader", list(_lora_readers()))
def test_each_reader_of_a_weights_file_names_it(damaged: Path, tmp_path: Path, reader: str) -> None:
    with pytest.raises(DamagedFileError) as exc:
        _lora_readers()[reader](damaged, tmp_path)
    assert_names(exc, damaged, fix="")
    assert not (tmp_path / "out.safetensors").exists()


def test_an_embedding_file(tmp_path: Path) -> None:
    from sdtune.models.embeddings import bundle_state, read_embedding

    file = cut(write(tmp_path / "sks.safetensors", {"sks": torch.ones(1, 32)}, {"token": "sks"}))
    for read in (read_embedding, bundle_state):
        with pytest.raises(DamagedFileError) as exc:
            read(file)
        assert_names(exc, file)
    with pytest.raises(ModelLoadError, match="not a readable embedding file"):  # missing: as before
        read_embedding(tmp_path / "missing.safetensors")


def test_a_peft_folder_is_read_before_the_model_changes(tmp_path: Path) -> None:
    from sdtune.models.lycoris import apply_peft_folder

    folder = tmp_path / "peft" / "unet"
    bad = cut(write(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LOHA", "r": 2, "target_modules": ["0"]}))
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(DamagedFileError) as exc:
        apply_peft_folder(model, None, tmp_path)
    assert_names(exc, bad)
    assert not hasattr(model, "peft_config") and type(model[0]) is torch.nn.Linear


def test_a_saved_text_encoder_that_does_not_read_back(tmp_path: Path) -> None:
    from sdtune.models.portable import portable_text_encoder

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModel"]}))
    bad = cut(write(tmp_path / "model.safetensors"))
    with pytest.raises(DamagedFileError) as exc:
        portable_text_encoder(tmp_path)
    assert_names(exc, bad, fix="sdtune wrote it just now and it does not read back: check the disk")


# --- base models: a single file, a folder, a VAE ------------------------------------------------------------------

def test_a_damaged_single_file_base_model_or_vae(damaged: Path) -> None:
    from sdtune.models.loading import load_pipeline
    from sdtune.models.vae import load_vae

    for load in (load_pipeline, load_vae):
        with pytest.raises(DamagedFileError) as exc:
            load(str(damaged))
        assert_names(exc, damaged)


@pytest.mark.parametrize("part", ["vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                                  "text_encoder/model.safetensors"])
def test_a_model_folder_with_a_damaged_file(tmp_path: Path, part: str) -> None:
    from sdtune.models.loading import load_components, load_pipeline
    from sdtune.models.presets import preset_path

    folder = Path(shutil.copytree(preset_path("tiny"), tmp_path / "model"))
    bad = cut(folder / part)
    for load in (load_components, load_pipeline):
        with pytest.raises(DamagedFileError) as exc:
            load(str(folder))
        assert_names(exc, bad)


# --- checkpoints: evaluation says to set one aside, resume names the one before --------------------------------------

def _checkpoints(root: Path, steps: tuple[int, ...] = (2, 4)):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    paths = [ckpt.save_checkpoint(root, ckpt.TrainerState(step=s), {"m": model}, opt, sched) for s in steps]
    return paths, model, opt, sched


@pytest.mark.parametrize("name", ["trainable.safetensors", "rng.safetensors", "optimizer.pt", "scheduler.pt"])
def test_resume_from_a_damaged_checkpoint_names_the_one_before(tmp_path: Path, name: str) -> None:
    (before, newest), model, opt, sched = _checkpoints(tmp_path / "checkpoints")
    bad = cut(newest / name)
    with pytest.raises(DamagedFileError) as exc:
        ckpt.load_checkpoint(newest, {"m": model}, opt, sched)
    line = str(exc.value)
    assert line.startswith(f"{bad} is damaged or incomplete (a copy cut short") and "\n" not in line, line
    assert line.endswith(f"resume from the checkpoint before it instead: --resume {before.name}"), line
    ckpt.load_checkpoint(before, {"m": model}, opt, sched)  # which loads


def test_resume_from_the_only_checkpoint_damaged_says_there_is_none_before(tmp_path: Path) -> None:
    (only,), model, opt, sched = _checkpoints(tmp_path / "checkpoints", (2,))
    cut(only / "trainable.safetensors")
    with pytest.raises(DamagedFileError, match=f"there is no checkpoint before it to resume from: move {only} out"):
        ckpt.load_checkpoint(only, {"m": model}, opt, sched)


def test_evaluating_a_damaged_checkpoint_says_to_set_it_aside(tmp_path: Path) -> None:
    (_, newest), *_ = _checkpoints(tmp_path / "checkpoints")
    bad = cut(newest / "trainable.safetensors")
    for read in (ckpt.read_trainable_weights, ckpt.read_evaluated_weights):
        with pytest.raises(DamagedFileError) as exc:
            read(newest)
        assert_names(exc, bad, fix=f"move {newest} out of {newest.parent} (into a sub-folder, which sdtune ignores)")
    evaluated = cut(write(newest / ckpt.EVALUATED_FILE))
    with pytest.raises(DamagedFileError, match="evaluated.safetensors is damaged"):
        ckpt.read_evaluated_weights(newest)
    assert evaluated.is_file()
