"""Resume = the saved state + what the user changes now.

A checkpoint stores the config it was made with. On resume the user's config is compared with it, key by key,
against the rules in :mod:`sdtune.config_resume`: a refused change stops before any model is loaded, with the key
named; an allowed change is applied after the checkpoint is loaded (``optimizer.load_state_dict`` and
``lr_scheduler.load_state_dict`` bring back the saved learning rate, betas and ``base_lrs``, so they are set
again from the new config) and recorded: in the trajectory's ``history`` (carried by every later checkpoint and
written to ``metrics.json`` at the end), in a comment block of ``RUN/config.yaml`` and in the trackers.

A resume from an older checkpoint starts a branch: the live checkpoints after it belong to the abandoned
trajectory and are moved aside (never deleted), so ``latest`` and rotation see only the live branch.

A resume without changes touches nothing: it stays bitwise identical to an uninterrupted run.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdtune.atomic import atomic_write_text
from sdtune.config import RunConfig, dump_config
from sdtune.config_errors import as_written
from sdtune.config_resume import resolved_value, rule_for, split_changes
from sdtune.errors import ConfigError, listing
from sdtune.training import checkpoint as ckpt

# changes that mean the optimizer's hyperparameters and the LR schedule must be set again after loading
OPTIMIZER_KEYS = frozenset({
    "train.learning_rate", "train.text_encoder_lr", "train.scale_lr", "train.adam_beta1", "train.adam_beta2",
    "train.adam_weight_decay", "train.adam_epsilon", "train.lr_scheduler", "train.lr_warmup_steps",
    "train.max_steps", "train.gradient_accumulation_steps", "train.textual_inversion.learning_rate",
})


@dataclass
class ResumePlan:
    """What a resume will do, decided before any model is loaded."""

    checkpoint: Path
    step: int
    changes: dict[str, list] = field(default_factory=dict)  # allowed key -> [checkpoint value, new value]
    config_known: bool = True  # False for checkpoints written before configs were stored in them
    data: dict[str, Any] = field(default_factory=dict)  # the data folders vs the checkpoint's (data_resume)


def _config_dict(cfg: RunConfig) -> dict[str, Any]:
    return yaml.safe_load(dump_config(cfg))


def plan_resume(checkpoint: Path, cfg: RunConfig) -> ResumePlan:
    """Compare ``cfg`` with the config ``checkpoint`` was made with; refuse what cannot change (one message).

    Raises ConfigError naming every refused key with both values, or when ``train.max_steps`` is below the
    checkpoint's step.
    """
    state = ckpt.read_state(checkpoint)
    saved = ckpt.read_config(checkpoint)
    known = saved is not None
    if saved is None:  # older checkpoint: the run folder's config is the best record there is
        saved = ckpt.read_config(Path(cfg.output_dir)) or _config_dict(cfg)
    derived: dict[str, Any] = {}
    if saved.get("model", {}).get("prediction_type") is None or cfg.model.prediction_type is None:
        from sdtune.models.loading import base_prediction_type

        derived["model.prediction_type"] = base_prediction_type(cfg.model.base, cfg.model.revision)
    new = _config_dict(cfg)
    allowed, refused = split_changes(saved, new, derived)
    if refused:
        changes = [f"{key} {_shown(saved, key, old, derived)} -> {_shown(new, key, value, derived)} - {_why(key)}"
                   for key, (old, value) in refused.items()]
        head = f"cannot resume {checkpoint} with {'this change' if len(changes) == 1 else 'these changes'}:"
        raise ConfigError(listing(head, changes, f"Resume with the checkpoint's values (its config: "
                                  f"{checkpoint / ckpt.CONFIG_FILE}), or start a new run in another output_dir"))
    if cfg.train.max_steps < state.step:
        raise ConfigError(f"train.max_steps={cfg.train.max_steps} is below the step of {checkpoint} "
                          f"({state.step}): resume from an earlier checkpoint or raise train.max_steps")
    if PHASE_KEYS & set(allowed):
        _check_phases_stay(cfg, saved, state.step, checkpoint)
    return ResumePlan(checkpoint, state.step, allowed, known)


# the keys that place a phase of the run by step number (a share of train.max_steps)
PHASE_KEYS = frozenset({"train.max_steps", "train.textual_inversion.ti_fraction",
                        "train.textual_inversion.lora_start", "data.mask_start"})


def _phases(config: RunConfig) -> list[tuple[str, str, int]]:
    """Each phase boundary of ``config`` as (what, its key, the last step before it): the token's last trained step,
    the LoRA's last held step, the last step on whole images before the masks (only the ones the run has)."""
    learned, steps = config.train.textual_inversion, config.train.max_steps
    out = []
    if learned is not None and config.train.lora is not None:
        out.append(("the token trains through step", "train.textual_inversion.ti_fraction",
                    learned.token_steps(steps) or steps))
        out.append(("the LoRA is held through step", "train.textual_inversion.lora_start",
                    learned.lora_held_steps(steps)))
    if config.data.masked_loss:
        out.append(("whole images (no masks, data.mask_start) through step", "data.mask_start",
                    config.data.unmasked_steps(steps)))
    return out


def _share(boundary: int, steps: int) -> str:
    """The shortest share of ``steps`` that rounds back to ``boundary`` steps (as the phases round them)."""
    for digits in range(2, 9):
        share = f"{boundary / steps:.{digits}g}"
        if round(float(share) * steps) == boundary:
            return share
    return repr(boundary / steps)


def _check_phases_stay(cfg: RunConfig, saved: dict[str, Any], step: int, checkpoint: Path) -> None:
    """Pivotal tuning's phases and the masks' start are shares of ``train.max_steps`` (``ti_fraction``,
    ``lora_start``, ``data.mask_start``): a new total or share moves them. A boundary may move only where the run has
    not been yet: the steps done (1..``step``) must fall in the same phases under the new config, or a LoRA that had
    trained would be held again, a frozen token trained again, masked steps counted as unmasked. Refused, with the
    steps and the shares that keep them (to paste), otherwise."""
    from sdtune.config import config_from_dict

    try:
        old = config_from_dict(saved)
    except ConfigError:
        return  # a saved config this version no longer reads: the key rules above already compared it
    before = {what: (key, at) for what, key, at in _phases(old)}
    after = {what: at for what, _, at in _phases(cfg)}
    moved = [(what, key, before[what][1], after[what]) for what, (key, _) in before.items()
             if what in after and min(before[what][1], step) != min(after[what], step)]
    if not moved:
        return
    steps = cfg.train.max_steps
    keep = " ".join(f"{key}={_share(then, steps)}" for _, key, then, _ in moved if then < steps)
    raise ConfigError(f"cannot resume {checkpoint} (step {step}) with these phases: the steps done would fall in "
                      f"other ones ({', '.join(f'{what} {then} -> {now}' for what, _, then, now in moved)}); keep "
                      f"them where they were" + (f" with train.max_steps={steps}: {keep}" if keep else "")
                      + ", or start a new run in another output_dir")


def _shown(config: dict[str, Any], key: str, value: Any, known: dict[str, Any]) -> str:
    """``None (= 4)`` for a derived default, else the value as written."""
    used = resolved_value(config, key, known)
    return f"{as_written(value)} (= {as_written(used)})" if value is None and used is not None else as_written(value)


def _why(key: str) -> str:
    rule = rule_for(key)
    return rule.why if rule is not None else "no resume rule covers this key"


def optimizer_hyperparameters(optimizer) -> list[dict[str, Any]]:
    """Each param group's settings without its parameters: taken from a freshly built optimizer + schedule."""
    from sdtune.training.optimizers import config_settings

    # only what the config sets: an optimizer's own state in its groups (Prodigy's d, schedule-free's step count
    # and train/eval mode) comes from the checkpoint and must not be reset by a changed learning rate
    return [config_settings(group) for group in optimizer.param_groups]


def apply_changes(plan: ResumePlan, cfg: RunConfig, optimizer, lr_scheduler, ema,
                  fresh: list[dict[str, Any]]) -> None:
    """Set again, after loading, what the user changed and loading brought back from the checkpoint.

    ``fresh``: :func:`optimizer_hyperparameters` of the optimizer and schedule built from the new config, taken
    before the checkpoint was loaded. The schedule object was built from the new config too (its ``lr_lambdas``
    are not in a checkpoint), so only its base rates and the current rate need setting: from the resume step on
    the run follows the new schedule as if it had always had these settings (a changed cosine or linear schedule
    therefore changes the rate at once, e.g. doubling max_steps of a cosine at its midpoint raises the rate from
    50 % to 85 % of the peak).
    """
    if any(key in OPTIMIZER_KEYS for key in plan.changes):
        groups = optimizer.param_groups
        for group, settings in zip(groups, fresh, strict=True):
            group.update(settings)
        lr_scheduler.base_lrs = [settings["initial_lr"] for settings in fresh]
        step = lr_scheduler.last_epoch
        for group, base, factor in zip(groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas, strict=True):
            group["lr"] = base * factor(step)
        lr_scheduler._last_lr = [group["lr"] for group in groups]
    if ema is not None and cfg.train.ema is not None:
        if "train.ema.decay" in plan.changes:
            ema.decay = cfg.train.ema.decay
        if "train.ema.update_after_step" in plan.changes:
            ema.update_after_step = cfg.train.ema.update_after_step


def start_branch(run_dir: Path, plan: ResumePlan) -> dict[str, Any] | None:
    """Move the live checkpoints that are not on the resumed trajectory aside; None when there are none.

    Resuming from ``step-S`` of this run abandons every live checkpoint after S; resuming from a checkpoint of
    another folder abandons all of this run's live checkpoints. A ``metrics.json`` of the abandoned end moves too.
    """
    root = run_dir / "checkpoints"
    inside = plan.checkpoint.resolve().parent == root.resolve()
    abandoned = [p for p in ckpt.list_checkpoints(root)
                 if p.resolve() != plan.checkpoint.resolve() and (not inside or ckpt.step_of(p) > plan.step)]
    if not abandoned:
        return None
    folder = ckpt.move_aside(root, abandoned, f"abandoned-after-{ckpt.step_dir_name(plan.step)}",
                             {"reason": f"resumed from {plan.checkpoint}: these belong to the abandoned trajectory"})
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        metrics.rename(folder / "metrics.json")
    return {"moved": [p.name for p in abandoned], "to": str(folder.relative_to(run_dir))}


def history_entry(plan: ResumePlan, branch: dict[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": plan.step,
                             "resumed_from": plan.checkpoint.name, "changes": plan.changes}
    if branch is not None:
        entry["branch"] = branch
    if not plan.config_known:
        entry["note"] = "checkpoint without a stored config: compared with RUN/config.yaml"
    if plan.data:
        entry["data"] = plan.data
    return entry


def resumed_line(checkpoint: Path | str, step: int) -> str:
    """What a resumed run prints first (``resumed from CKPT (step K)``), read back by :func:`resumed_step`."""
    return f"resumed from {checkpoint} (step {step})"


_RESUMED = re.compile(r"^resumed from .* \(step (\d+)\)$", re.M)


def resumed_step(log_text: str, start: int = 0) -> int | None:
    """The step of the first :func:`resumed_line` in ``log_text`` from ``start`` on; None when there is none."""
    found = _RESUMED.search(log_text, start)
    return None if found is None else int(found.group(1))


def describe(entry: dict[str, Any]) -> str:
    """One line for people: ``step 10 (step-000010): train.learning_rate 0.001 -> 1e-05``."""
    changes = ", ".join(f"{key} {as_written(old)} -> {as_written(new)}"
                        for key, (old, new) in entry.get("changes", {}).items())
    text = f"resumed at step {entry['step']} from {entry['resumed_from']}: {changes or 'no changes'}"
    if entry.get("data", {}).get("new_data_epoch"):
        text += f"; the data changed, a new data epoch started ({'; '.join(entry['data']['changed'])})"
    if entry.get("branch"):
        text += f"; moved {', '.join(entry['branch']['moved'])} to {entry['branch']['to']}"
    return text


def nothing_to_train(plan: ResumePlan, cfg: RunConfig) -> list[str]:
    """A note when a resume with changes has no step left: the checkpoint is at ``train.max_steps``, so the changes
    reach no weight (the outputs are written again); without it the run looked as if it had trained with them."""
    if not plan.changes or plan.step < cfg.train.max_steps:
        return []
    return [f"note: {Path(plan.checkpoint).name} is at train.max_steps ({cfg.train.max_steps}): no step is left to "
            "train, so the changes above reach no weight (the outputs are written again); raise train.max_steps to "
            "train on with them"]


def write_run_config(cfg: RunConfig, path: Path, history: list[dict[str, Any]]) -> None:
    """RUN/config.yaml: the config now in force (re-runnable as is), with the resume history as comments."""
    header = "".join(f"# {describe(entry)}\n" for entry in history
                     if entry.get("changes") or entry.get("branch") or entry.get("data", {}).get("new_data_epoch"))
    if header:
        header = "# sdtune resume history (newest last; also in metrics.json and every checkpoint):\n" + header
    atomic_write_text(path, header + dump_config(cfg))


def fresh_start_line(run_dir: Path, existed: bool) -> str:
    """What ``--resume`` prints when the run has no checkpoint yet (a queued job's first attempt resumes "latest"
    too, so it is no error); when the folder did not even exist, that a relative output_dir was read from the
    working folder: a newcomer ran a config from another folder and trained a new run from step 0 unawares."""
    line = f"no checkpoint in {run_dir / 'checkpoints'} yet: starting from step 0"
    if existed:
        return line
    return (f"{line} (a new run folder: a relative output_dir is read from the working folder; to continue a run "
            "from anywhere, pass its folder: sdtune train RUN --resume latest)")


__all__ = ["OPTIMIZER_KEYS", "ResumePlan", "apply_changes", "describe", "fresh_start_line", "history_entry",
           "nothing_to_train", "optimizer_hyperparameters", "plan_resume", "start_branch", "write_run_config"]

