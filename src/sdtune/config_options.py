"""Combinations of the training options that cannot mean what they say, refused at config load in one line.

Kept beside the schema (``sdtune.config`` calls :func:`check_train_options` from ``TrainConfig``'s validator) as
one list of rules, so the options table of the docs (docs/training-options.md) and the refusals stay together.
Each rule names the keys and the fix.
"""

from __future__ import annotations

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
    lora = cfg.train.lora
    if lora is None:
        return
    if lora.kind in ("loha", "lokr") and cfg.model.adapters:
        raise ValueError(f"train.lora.kind={lora.kind} cannot train on top of model.adapters (frozen LoRAs: peft "
                         "stacks one adapter type per layer); fuse them into the base first, or use kind lora/dora")
    if lora.kind != "lokr" and lora.lokr_factor != -1:
        raise ValueError(f"train.lora.lokr_factor is for train.lora.kind=lokr (this run's kind is {lora.kind})")
