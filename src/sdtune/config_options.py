"""Combinations of the training options that cannot mean what they say, refused at config load in one line.

Kept beside the schema (``sdtune.config`` calls :func:`check_train_options` from ``TrainConfig``'s validator) as
one list of rules, so the options table of the docs (docs/training-options.md) and the refusals stay together.
Each rule names the keys and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PRODIGY_LOWEST_RATE = 0.01  # Prodigy multiplies its own step-size estimate by the rate: below this it barely trains


def check_train_options(train: Any) -> None:
    """Raise ValueError (one line naming the keys and the fix) for a combination the options cannot run."""
    if train.optimizer == "adamw_schedulefree":
        if train.lr_scheduler != "constant":
            raise ValueError(f"train.optimizer=adamw_schedulefree replaces the learning-rate schedule (its average "
                             f"is the schedule): set train.lr_scheduler=constant instead of {train.lr_scheduler} "
                             "(train.lr_warmup_steps is then its own warmup)")
        if train.ema is not None:
            raise ValueError("train.optimizer=adamw_schedulefree already evaluates and saves an average of its "
                             "iterates: remove train.ema (or use train.optimizer=adamw with train.ema)")
    if train.optimizer == "prodigy" and train.learning_rate < PRODIGY_LOWEST_RATE:
        raise ValueError(f"train.optimizer=prodigy estimates its own step size and train.learning_rate scales it: "
                         f"{train.learning_rate:g} would barely train; use train.learning_rate=1.0 (0.5 to step less)")


def check_run_options(cfg: Any) -> None:
    """Rules across sections of a run config (``RunConfig``); ValueError in one line."""
    check_nested_folders(cfg)
    lora = cfg.train.lora
    if lora is None:
        return
    if lora.kind in ("loha", "lokr") and cfg.model.adapters:
        raise ValueError(f"train.lora.kind={lora.kind} cannot train on top of model.adapters (frozen LoRAs: peft "
                         "stacks one adapter type per layer); fuse them into the base first, or use kind lora/dora")
    if lora.kind != "lokr" and lora.lokr_factor != -1:
        raise ValueError(f"train.lora.lokr_factor is for train.lora.kind=lokr (this run's kind is {lora.kind})")


def _folders(cfg: Any) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """(the folders whose images are trained, the other image folders of the run's data)."""
    data = cfg.data
    trained = [(key, value) for key, value in (("data.train_dir", data.train_dir),
                                                ("data.instance_dir", data.instance_dir)) if value is not None]
    trained += [(f"data.subsets[{i}].path", sub.path) for i, sub in enumerate(data.subsets)]
    held_out = cfg.validation.loss.data_dir if cfg.validation.loss is not None else None
    others = [(key, value) for key, value in (("data.mask_dir", data.mask_dir), ("data.class_dir", data.class_dir),
                                              ("validation.loss.data_dir", held_out)) if value is not None]
    return trained, others


def check_nested_folders(cfg: Any) -> None:
    """A folder of masks, class images or held-out images inside a folder of training images is trained as photos:
    the image folders are read with their subfolders (``sdtune.data.folders.list_images``), and a mask found as a
    photo is even its own mask. Refused by path, before anything is read (relative paths against the working
    folder, as the run resolves them). The output folder is checked against the data folders when a run starts
    (``sdtune.output_folders.check_run_output``: it may not exist yet, and it may not contain them either)."""
    trained, others = _folders(cfg)
    for key, folder in trained:
        inside = _absolute(folder)
        for other_key, other in others:
            there = _absolute(other)
            if there == inside or inside in there.parents:
                where = "is" if there == inside else "is inside"
                raise ValueError(f"{other_key} {other} {where} {key} {folder}, whose images are all trained (with "
                                 f"its subfolders): its {_HOLDS[other_key]} would be trained as training images; "
                                 f"move it out, e.g. {_beside(inside, other_key)}")


_HOLDS = {"data.mask_dir": "masks", "data.class_dir": "class images", "validation.loss.data_dir": "held-out images"}


def _beside(folder: Path, key: str) -> Path:
    """Where the folder of ``key`` could go instead: next to the training folder."""
    suffix = {"data.mask_dir": "-masks", "data.class_dir": "-class", "validation.loss.data_dir": "-held-out"}
    return folder.parent / f"{folder.name}{suffix[key]}"


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))
