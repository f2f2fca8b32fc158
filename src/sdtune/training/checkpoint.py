"""Resume checkpoints: atomic, rotated, small, and exact.

A checkpoint folder ``RUN/checkpoints/step-000300/`` holds only what training changes: the trainable weights
(LoRA matrices for a LoRA run — never the whole UNet), optimizer, LR scheduler, grad scaler and EMA state, RNG
states and the position in the data stream. It is written under a temporary name and renamed when complete,
and ``state.json`` is written last, so a crash mid-write never leaves a folder that looks complete and
``latest`` always resolves to a whole checkpoint.

Loading puts the saved tensors IN PLACE into the modules and optimizer that already exist: building new
LoRA modules on resume (which the optimizer never sees) is the bug that made the diffusers DreamBooth-LoRA
script silently stop learning.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sdtune.atomic import replace_folder
from sdtune.errors import SdtuneError

STEP_DIR = re.compile(r"^step-(\d{6,})$")
STATE_FILE = "state.json"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed per process (the data-stream position)
    world_size: int = 1
    batch_size: int = 1
    last_loss: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """``latest`` -> newest complete checkpoint (None if there is none); otherwise a checkpoint path."""
    if resume == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = run_dir / "checkpoints" / resume
    if not (path / STATE_FILE).exists():
        raise SdtuneError(f"{resume} is not a complete checkpoint folder (no {STATE_FILE}); "
                          f"use --resume latest or a folder under {run_dir / 'checkpoints'}")
    return path


def clean_partial(root: Path) -> None:
    """Remove folders a crash left half-written (they never had their final name)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".step-")):
                shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for p in folder.iterdir():
        with open(p, "rb") as fh:
            os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def trainable_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Trainable parameters of each module, keyed ``<module>.<param name>``, as contiguous CPU fp32 copies."""
    state = {}
    for prefix, module in modules.items():
        for name, param in module.named_parameters():
            if param.requires_grad:
                state[f"{prefix}.{name}"] = param.detach().to("cpu", copy=True).contiguous()
    return state


def load_trainable_state_(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    """Copy saved tensors into the existing trainable parameters, in place; every key must match."""
    expected = set()
    with torch.no_grad():
        for prefix, module in modules.items():
            for name, param in module.named_parameters():
                if not param.requires_grad:
                    continue
                key = f"{prefix}.{name}"
                expected.add(key)
                if key not in state:
                    raise SdtuneError(f"checkpoint lacks trainable weight {key}: was it made with another config "
                                      "(LoRA rank/targets, text-encoder training)?")
                if state[key].shape != param.shape:
                    raise SdtuneError(f"checkpoint weight {key} has shape {tuple(state[key].shape)}, the model "
                                      f"expects {tuple(param.shape)}: the LoRA rank or model differs")
                param.copy_(state[key].to(param.device, param.dtype))
    unknown = set(state) - expected
    if unknown:
        raise SdtuneError(f"checkpoint has weights this run does not train ({sorted(unknown)[:3]} ...): "
                          "resume with the config that made it")


def save_checkpoint(root: Path, state: TrainerState, modules: dict[str, torch.nn.Module], optimizer,
                    lr_scheduler, scaler=None, ema=None, keep: int = 3) -> Path:
    """Write a checkpoint atomically and keep only the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(state.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(trainable_state(modules), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    if ema is not None:
        torch.save(ema.state_dict(), tmp / "ema.pt")
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    payload = asdict(state) | {"python_random": _python_rng_state()}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")  # written last: the marker
    _fsync_tree(tmp)
    replace_folder(tmp, final)  # re-saving a step (after resume) swaps without a gap
    for stale in list_checkpoints(root)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def read_state(path: Path) -> TrainerState:
    data = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    data.pop("python_random", None)
    return TrainerState(**data)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler, scaler=None,
                    ema=None) -> TrainerState:
    """Restore everything a checkpoint holds into the live objects (in place)."""
    load_trainable_state_(modules, load_file(str(path / "trainable.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    lr_scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    if ema is not None:
        if not (path / "ema.pt").exists():
            raise SdtuneError(f"{path} has no EMA state but this run uses train.ema")
        ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True))
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    data = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    version, internal, gauss = data.pop("python_random")
    random.setstate((version, tuple(internal), gauss))
    return TrainerState(**data)
