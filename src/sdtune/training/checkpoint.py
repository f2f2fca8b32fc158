"""Resume checkpoints: atomic, rotated, small, and exact.

A checkpoint folder ``RUN/checkpoints/step-000300/`` holds only what training changes: the trainable weights
(LoRA matrices for a LoRA run — never the whole UNet), optimizer, LR scheduler, grad scaler and EMA state, RNG
states and the position in the data stream. It is written under a temporary name and renamed when complete,
and ``state.json`` is written last, so a crash mid-write never leaves a folder that looks complete and
``latest`` always resolves to a whole checkpoint. A full disk removes the half-written folder and says so in one
line. Every checkpoint carries the config it was made with (``config.yaml``), so a resume compares the user's
config with the saved one instead of trusting ``RUN/config.yaml``.

Only the checkpoints directly in ``RUN/checkpoints/`` are live: ``latest`` and rotation see nothing else.
Checkpoints of an abandoned branch (a resume from an older step) or of a diverged step are moved aside into
sub-folders (:func:`move_aside`), never deleted.

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
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from sdtune.atomic import atomic_write_json, disk_full_as_error, replace_folder
from sdtune.errors import DamagedFileError, SdtuneError
from sdtune.models.safetensors_files import damaged_error, load_safetensors
from sdtune.run_folder import STATE_FILE, STEP_DIR, list_checkpoints, step_dir_name, step_of  # noqa: F401

CONFIG_FILE = "config.yaml"  # the run config this checkpoint was made with
DATA_FILE = "data.json"  # what its data stream was built from (sdtune.data.stream_record)
EVALUATED_FILE = "evaluated.safetensors"  # the EMA / schedule-free average, when it is not the trained weights


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches consumed per process (the data-stream position)
    world_size: int = 1
    batch_size: int = 1
    last_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # resumes of this trajectory and their changes
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """``latest`` -> newest complete checkpoint (None if there is none); otherwise the checkpoint ``resume`` names:
    a path (absolute, or holding a ``/``, or existing from here) or a name in ``RUN/checkpoints`` (``step-000004``,
    or its short forms ``step-4`` and ``4``). A value that names nothing, or an incomplete folder, is an error that
    lists the checkpoints the run has: a typo must not read as damage."""
    if resume == "latest":
        found = list_checkpoints(run_dir / "checkpoints")
        return found[-1] if found else None
    path = _named_checkpoint(run_dir, resume)
    if not path.exists():
        raise SdtuneError(f"--resume {resume}: {path} does not exist; {_checkpoints_line(run_dir)}")
    if not (path / STATE_FILE).exists():
        raise SdtuneError(f"--resume {resume}: {path} is not a complete checkpoint folder (no {STATE_FILE}: a save "
                          f"was interrupted, or it is another folder); {_checkpoints_line(run_dir)}")
    return path


def _named_checkpoint(run_dir: Path, resume: str) -> Path:
    """Where ``resume`` points: a path as given, else ``RUN/checkpoints/<name>`` (a step number written out as the
    folder name ``step-000004``, as checkpoints are named)."""
    path = Path(resume).expanduser()
    if path.is_absolute() or path.exists() or len(path.parts) > 1:
        return path
    short = re.fullmatch(r"(?:step-)?(\d+)", resume)
    return run_dir / "checkpoints" / (step_dir_name(int(short.group(1))) if short else resume)


def _checkpoints_line(run_dir: Path) -> str:
    """The run's live checkpoints as ``--resume`` takes them, for an error about one that is not there."""
    names = [p.name for p in list_checkpoints(run_dir / "checkpoints")]
    if not names:
        return (f"{run_dir} has no complete checkpoint yet (--resume latest starts it from step 0, or resumes "
                "once one is saved)")
    shown = ", ".join(names) if len(names) <= 8 else ", ".join([*names[:3], "...", *names[-4:]])
    return f"this run has: {shown} (or: --resume latest)"


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


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when no tensor holds a NaN or an infinity (checked before anything is saved).

    One read of one flag per device, not one per tensor: on a GPU each read is a host sync."""
    flags: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        flags.setdefault(t.device, []).append(torch.isfinite(t).all())
    return all(bool(torch.stack(found).all()) for found in flags.values())


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _torch_save(obj: Any, path: Path) -> None:
    with open(path, "wb") as fh:  # a file object: a full disk then surfaces as an OSError (errno) in the chain
        torch.save(obj, fh)


def save_checkpoint(root: Path, state: TrainerState, modules: dict[str, torch.nn.Module], optimizer,
                    lr_scheduler, scaler=None, ema=None, keep: int = 3, config_text: str | None = None,
                    keep_also: str | None = None, evaluated: dict[str, torch.Tensor] | None = None,
                    data_record: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically and keep only the newest ``keep`` live ones (and ``keep_also``, by name).

    ``evaluated``: the weights to evaluate at this step when they are not the trained ones (an EMA, schedule-free's
    average; ``sdtune.training.eval_weights``), keyed as ``trainable.safetensors``: written as
    ``evaluated.safetensors``, which checkpoint evaluation reads; resume reads the trained ones.

    ``config_text``: the run config (YAML) stored with it; ``data_record``: what the data stream was built from
    (``sdtune.data.stream_record``), compared on resume. Raises :class:`DiskFullError` (after removing the
    half-written folder) when the disk, a quota or a file size limit is full.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(state.step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    weights = trainable_state(modules)
    optimizer_state = optimizer.state_dict()
    needed = _tensor_bytes(weights) + _tensor_bytes(optimizer_state) + (_tensor_bytes(ema.state_dict()) if ema else 0) \
        + _tensor_bytes(evaluated or {})
    newest = list_checkpoints(root)
    then = (f"continue with --resume latest (the newest complete checkpoint is {newest[-1].name})" if newest
            else "start the run again")
    try:
        with disk_full_as_error(f"checkpoint {final.name}", final, needed, then):
            tmp.mkdir()
            save_file(weights, str(tmp / "trainable.safetensors"))
            if evaluated is not None:
                save_file(evaluated, str(tmp / EVALUATED_FILE))
            _torch_save(optimizer_state, tmp / "optimizer.pt")
            _torch_save(lr_scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None:
                _torch_save(scaler.state_dict(), tmp / "scaler.pt")
            if ema is not None:
                _torch_save(ema.state_dict(), tmp / "ema.pt")
            rng = {"torch_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                for i, s in enumerate(torch.cuda.get_rng_state_all()):
                    rng[f"torch_cuda_{i}"] = s
            save_file(rng, str(tmp / "rng.safetensors"))
            if config_text is not None:
                (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
            if data_record is not None:
                (tmp / DATA_FILE).write_text(json.dumps(data_record, ensure_ascii=False), encoding="utf-8")
            payload = asdict(state) | {"python_random": _python_rng_state()}
            (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")  # written last: the marker
            _fsync_tree(tmp)
            replace_folder(tmp, final)  # re-saving a step (after resume) swaps without a gap
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in list_checkpoints(root)[:-keep]:
        if stale.name != keep_also:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def read_config(path: Path) -> dict[str, Any] | None:
    """The run config a checkpoint was made with (None for checkpoints written before configs were stored)."""
    try:
        data = yaml.safe_load((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_data_record(path: Path) -> dict[str, Any] | None:
    """What a checkpoint's data stream was built from (None for checkpoints made before it was recorded)."""
    try:
        data = json.loads((path / DATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("subsets"), list) else None


def move_aside(root: Path, checkpoints: list[Path], folder: str, note: dict[str, Any]) -> Path:
    """Move ``checkpoints`` (and nothing else) into ``root/<folder>/``, never deleting; returns that folder.

    A sub-folder is invisible to ``latest`` and to rotation. ``note`` is written as ``moved.json`` (why, when).
    """
    target = root / folder
    if target.exists():
        target = root / f"{folder}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    target.mkdir(parents=True)
    for path in checkpoints:
        path.rename(target / path.name)
    atomic_write_json(target / "moved.json", {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **note,
                                              "checkpoints": [p.name for p in checkpoints]})
    return target


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def read_state(path: Path) -> TrainerState:
    data = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    data.pop("python_random", None)
    return TrainerState(**data)


def _set_aside_fix(path: Path) -> str:
    """What to do about a damaged checkpoint outside a resume: go on without it."""
    path = Path(path)
    return (f"this checkpoint cannot be used: move {path} out of {path.parent} (into a sub-folder, which sdtune "
            "ignores) to go on without it")


def _resume_fix(path: Path) -> str:
    """What to do about a damaged checkpoint when resuming: the complete one before it, if there is one."""
    path = Path(path)
    before = [p for p in list_checkpoints(path.parent) if step_of(p) < step_of(path)] \
        if STEP_DIR.match(path.name) else []
    if before:
        return f"resume from the checkpoint before it instead: --resume {before[-1].name}"
    return (f"there is no checkpoint before it to resume from: move {path} out of {path.parent} and train again "
            "without --resume, or train into another output_dir")


def read_trainable_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's trainable weights, keyed ``<module>.<param name>`` (``unet.``, ``text_encoder.``), as saved
    by :func:`save_checkpoint`. The one reader of them: resume and checkpoint evaluation both come here. A damaged
    file is one DamagedFileError line that says to set the checkpoint aside."""
    return load_safetensors(Path(path) / "trainable.safetensors", fix=_set_aside_fix(path))


def read_evaluated_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights to evaluate at a checkpoint: ``evaluated.safetensors`` when the run kept an EMA or schedule-free's
    average (what its outputs would hold at that step), else the trained ones. Same keys as
    :func:`read_trainable_weights`."""
    file = Path(path) / EVALUATED_FILE
    return load_safetensors(file, fix=_set_aside_fix(path)) if file.is_file() else read_trainable_weights(path)


def _load_pt(file: Path, map_location: str | None = None) -> Any:
    """``torch.load`` of a checkpoint's state file; one cut short (torch: "failed finding central directory", or
    an empty file) is a DamagedFileError."""
    try:
        return torch.load(file, weights_only=True, map_location=map_location)
    except (RuntimeError, EOFError) as exc:
        if isinstance(exc, RuntimeError) and "PytorchStreamReader failed" not in str(exc):
            raise
        raise damaged_error(file, f"torch: {str(exc).split('.')[0] or 'empty file'}", _set_aside_fix(file.parent)) \
            from None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler, scaler=None,
                    ema=None) -> TrainerState:
    """Restore everything a checkpoint holds into the live objects (in place). A damaged file of it is one
    DamagedFileError line naming the file and the checkpoint to resume from instead."""
    try:
        return _load_checkpoint(path, modules, optimizer, lr_scheduler, scaler, ema)
    except DamagedFileError as exc:
        raise damaged_error(exc.file or path, exc.detail, _resume_fix(path)) from None


def _load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler, scaler=None,
                     ema=None) -> TrainerState:
    load_trainable_state_(modules, read_trainable_weights(path))
    optimizer.load_state_dict(_load_pt(path / "optimizer.pt", map_location="cpu"))
    lr_scheduler.load_state_dict(_load_pt(path / "scheduler.pt"))
    if scaler is not None and (path / "scaler.pt").exists():
        scaler.load_state_dict(_load_pt(path / "scaler.pt"))
    if ema is not None:
        if not (path / "ema.pt").exists():
            raise SdtuneError(f"{path} has no EMA state but this run uses train.ema")
        ema.load_state_dict(_load_pt(path / "ema.pt"))
    rng = load_safetensors(path / "rng.safetensors")
    torch.set_rng_state(rng["torch_cpu"])
    data = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    version, internal, gauss = data.pop("python_random")
    random.setstate((version, tuple(internal), gauss))
    return TrainerState(**data)
