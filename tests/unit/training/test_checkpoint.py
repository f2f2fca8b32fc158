"""Checkpoints: atomic (a half-written one is never 'latest'), rotated, and restored in place."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtune.errors import SdtuneError
from sdtune.training import checkpoint as ckpt


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen: must not be saved
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return model, opt, sched


def _step(model, opt, sched) -> None:
    loss = model(torch.ones(3, 4)).pow(2).sum()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_only_trainable_weights_are_saved_and_restored_in_place(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    _step(model, opt, sched)
    path = ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=1, micro_step=1), {"m": model}, opt, sched)
    saved = load_file(str(path / "trainable.safetensors"))
    assert set(saved) == {"m.0.bias", "m.1.weight", "m.1.bias"}

    _step(model, opt, sched)  # the reference continuation
    expected = [p.detach().clone() for p in model.parameters()]

    other, opt2, sched2 = _setup(seed=1)  # different weights; same parameter objects must be updated
    ids = [id(p) for p in other.parameters()]
    state = ckpt.load_checkpoint(path, {"m": other}, opt2, sched2)
    assert state.step == 1 and [id(p) for p in other.parameters()] == ids
    other[0].weight.data.copy_(model[0].weight)  # frozen weight comes from the base model, as in training
    _step(other, opt2, sched2)
    for a, b in zip(expected, other.parameters(), strict=True):
        assert torch.equal(a, b)


def test_partial_checkpoint_is_never_latest_and_rotation_keeps_k(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    for step in (2, 4, 6):
        ckpt.save_checkpoint(tmp_path / "checkpoints", ckpt.TrainerState(step=step), {"m": model}, opt, sched,
                             keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step-000004", "step-000006"]
    # a crash mid-write: a folder with the final name but no state.json, and a temp folder
    (tmp_path / "checkpoints" / "step-000008").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-000010-1").mkdir()
    assert ckpt.resolve_checkpoint(tmp_path, "latest").name == "step-000006"
    ckpt.clean_partial(tmp_path / "checkpoints")
    assert not (tmp_path / "checkpoints" / ".tmp-step-000010-1").exists()
    with pytest.raises(SdtuneError, match="not a complete checkpoint"):
        ckpt.resolve_checkpoint(tmp_path, "step-000008")
    assert ckpt.resolve_checkpoint(tmp_path / "empty", "latest") is None


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=3, last_loss=1.0), {"m": model}, opt, sched)
    ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=3, last_loss=2.0), {"m": model}, opt, sched)
    assert ckpt.read_state(tmp_path / "step-000003").last_loss == 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["step-000003"]


def test_mismatched_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    path = ckpt.save_checkpoint(tmp_path, ckpt.TrainerState(step=1), {"m": model}, opt, sched)
    bigger = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 3))
    bigger[0].weight.requires_grad_(False)
    opt2 = torch.optim.AdamW(bigger.parameters())
    with pytest.raises(SdtuneError, match="shape"):
        ckpt.load_checkpoint(path, {"m": bigger}, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))
    with pytest.raises(SdtuneError, match="lacks trainable weight"):
        ckpt.load_trainable_state_({"x": model}, load_file(str(path / "trainable.safetensors")))
