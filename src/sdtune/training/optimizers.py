"""The optimizers a run can choose (``train.optimizer``), as one table from the config's name to the library's class.

Each row says where the class comes from (its own package: ``torch``, ``bitsandbytes``, ``prodigyopt``,
``schedulefree``, ``transformers``), how the run's settings map onto its arguments, the learning rates it is
usually run at (used by the divergence advice, ``sdtune.training.divergence``) and what to say about its rate.
``train.optimizer_args`` passes further keyword arguments to the class (``d_coef``, ``safeguard_warmup``,
``beta1`` ...); an argument the class does not take is refused by name before the model loads.

Schedule-free AdamW keeps two sets of weights: the training point ``y`` (what the gradient is taken at) and the
average ``x`` (what should be evaluated and saved). ``sdtune.training.eval_weights`` swaps ``x`` in for
validation, checkpoints' evaluated weights and the final save; the optimizer's own ``train()`` is called once
before training starts (it starts in eval mode).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdtune.errors import ConfigError


@dataclass(frozen=True)
class OptimizerSpec:
    """One choice of ``train.optimizer``."""

    module: str  # the import path of the package that has the class
    cls: str  # the class name in ``module``
    pip: str  # what to install when it is missing
    arguments: Callable[[Any], dict[str, Any]]  # TrainConfig -> the class's keyword arguments (besides params, lr)
    rate_advice: str  # the learning rate that fits it, for the docs and the divergence message
    usual_rates: tuple[float, float] | None = None  # (low, high) for every method; None: the Adam table
    schedule_free: bool = False  # keeps a training point and an average: swap the average in to evaluate/save
    needs_cuda: bool = False


def _adam(train) -> dict[str, Any]:
    return {"betas": (train.adam_beta1, train.adam_beta2), "weight_decay": train.adam_weight_decay,
            "eps": train.adam_epsilon}


def _schedule_free(train) -> dict[str, Any]:
    # its warmup is its own (the LR schedule stays constant): lr_warmup_steps goes to the optimizer
    return _adam(train) | {"warmup_steps": train.lr_warmup_steps}


def _adafactor(train) -> dict[str, Any]:
    # a fixed learning rate (the run's schedule drives it): no relative step, no parameter-scale multiplier
    return {"scale_parameter": False, "relative_step": False, "warmup_init": False,
            "weight_decay": train.adam_weight_decay}


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("torch.optim", "AdamW", "", _adam,
                           "LoRA 1e-4 (1e-4..1e-3), full fine-tuning 1e-6..1e-5"),
    "adamw8bit": OptimizerSpec("bitsandbytes.optim", "AdamW8bit", "pip install 'sdtune[bnb]'", _adam,
                               "as adamw (LoRA 1e-4, full 1e-6..1e-5); CUDA GPUs only", needs_cuda=True),
    "prodigy": OptimizerSpec("prodigyopt", "Prodigy", "pip install prodigyopt", _adam,
                             "train.learning_rate=1.0: Prodigy estimates the step size itself and the rate scales "
                             "that estimate (lower it, e.g. 0.5, or set train.optimizer_args.d_coef, to step less); "
                             "weight decay 0.01; train.optimizer_args.safeguard_warmup=true with a warmup schedule",
                             usual_rates=(0.1, 1.0)),
    "adamw_schedulefree": OptimizerSpec(
        "schedulefree", "AdamWScheduleFree", "pip install schedulefree", _schedule_free,
        "as adamw or up to a few times higher (LoRA 1e-4..1e-3); train.lr_scheduler=constant (the method replaces "
        "the schedule; train.lr_warmup_steps is its own warmup)", schedule_free=True),
    "adafactor": OptimizerSpec("transformers.optimization", "Adafactor", "pip install transformers",
                               _adafactor, "a fixed rate as for adamw (LoRA 1e-4..1e-3, full 1e-6..1e-5); "
                               "train.adam_beta*/adam_epsilon do not apply (train.optimizer_args.beta1 adds momentum)"),
}


def spec(name: str) -> OptimizerSpec:
    return OPTIMIZERS[name]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class of ``train.optimizer=name``; ConfigError naming the pip command when its package is missing."""
    row = OPTIMIZERS[name]
    try:
        module = importlib.import_module(row.module)
    except ImportError:
        raise ConfigError(f"train.optimizer={name} needs the {row.module.split('.')[0]} package: {row.pip}, or use "
                          "train.optimizer=adamw") from None
    if row.needs_cuda and not torch.cuda.is_available():
        raise ConfigError(f"train.optimizer={name} needs a CUDA GPU; on this machine use adamw")
    return getattr(module, row.cls)


def check_optimizer(train) -> None:
    """Refuse, before the model loads, an optimizer that cannot run here or an argument its class does not take."""
    if "lr" in train.optimizer_args or "params" in train.optimizer_args:
        raise ConfigError("train.optimizer_args: set the rate with train.learning_rate (and text_encoder_lr)")
    cls = optimizer_class(train.optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(train.optimizer_args) - set(accepted) - {"self"})
    if unknown:
        known = sorted(p for p in accepted if p not in ("self", "params", "lr"))
        raise ConfigError(f"train.optimizer_args: {', '.join(unknown)} is not an argument of {cls.__name__} "
                          f"(train.optimizer={train.optimizer}); it takes {', '.join(known)}")


def make_optimizer(train, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimizer over ``groups`` (torch param groups with their ``lr``), from the table and optimizer_args.

    Schedule-free AdamW is switched to training mode here (it starts in eval mode and refuses to step there).
    """
    check_optimizer(train)
    row = OPTIMIZERS[train.optimizer]
    optimizer = optimizer_class(train.optimizer)(groups, **(row.arguments(train) | dict(train.optimizer_args)))
    if row.schedule_free:
        optimizer.train()
    return optimizer


def is_schedule_free(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` (or the one an accelerate wrapper holds) keeps a schedule-free average."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return bool(inner.param_groups) and "train_mode" in inner.param_groups[0] and hasattr(inner, "eval")


# param-group keys the config sets (re-applied on resume); everything else in a group is the optimizer's own state
# (Prodigy's d, schedule-free's k / weight_sum / train_mode) and must come from the checkpoint
CONFIG_GROUP_KEYS = ("lr", "initial_lr", "betas", "weight_decay", "eps", "warmup_steps")


def config_settings(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k in CONFIG_GROUP_KEYS}
