"""Which config keys may change when a run resumes, as data next to the schema (one table, no scattered ifs).

Resuming is "the saved state + what the user changes now". A key either **may change** (it is applied from the
resume step on and recorded) or is **refused** (the checkpoint cannot mean the same run with another value: the
shapes of the trained weights, the data stream, the random streams). Every config key must be covered by a rule
(a unit test checks this), so a new key cannot slip in undecided: add it here with the reason.

Rules match dotted keys by the longest prefix: ``train.lora.dropout`` overrides ``train.lora``.
What a changed key means mid-run is documented in docs/resume.md.

Values are compared as the run uses them: a key whose default is derived from another (``train.lora.alpha``
None = the rank, ``train.text_encoder_lr`` None = the learning rate, ``model.prediction_type`` None = the
model's own) is no change when the written value equals the derived one, and a key the config does not use
(class-image settings without prior preservation, text-encoder settings when it is frozen) is no change at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    may_change: bool
    why: str


def _change(why: str) -> Rule:
    return Rule(True, why)


def _refuse(why: str) -> Rule:
    return Rule(False, why)


RESUME_RULES: dict[str, Rule] = {
    "output_dir": _change("where outputs go; a checkpoint copied to another run folder still resumes"),
    # the model: other weights or another parameterisation are another run
    "model": _refuse("the base model the trained weights belong to"),
    "model.allow_pickle": _change("a loading permission, not a weight"),
    # the data: what the stream of examples is (the saved position counts examples of this stream)
    "data": _refuse("the training data and its order (the saved data position refers to it)"),
    "data.check": _change("a pre-flight check only"),
    "data.class_generation_steps": _change("only used to generate missing class images"),
    "data.caption_dropout": _change("a per-example regularisation; positions stay the same"),
    "data.random_flip": _change("a per-example augmentation; positions stay the same"),
    "data.prior_loss_weight": _change("a loss weight"),
    "data.buckets": _refuse("the shape each image trains at and the order of batches (the saved data position "
                            "refers to it)"),
    "data.cache_latents": _change("a cached run trains bitwise like an uncached one"),
    "data.cache_text": _change("a cached run trains bitwise like an uncached one"),
    "data.cache_dir": _change("where cached encodings are kept; entries are verified, never trusted"),
    "data.masked_loss": _refuse("whether each example carries a mask (read and cached with its latents)"),
    "data.mask_dir": _refuse("which masks the examples carry (read and cached with their latents)"),
    "data.mask_outside_weight": _change("a loss weight, from the resume step on"),
    "data.mask_start": _change("the step where the masks start, by step number: it may move only where the run "
                               "has not been yet (checked against the resume step)"),
    # train: every key is listed (no section default), so a new one must be decided here
    "train.lora": _refuse("the shape and scale of the trained LoRA weights"),
    "train.lora.dropout": _change("LoRA dropout has no weights; it applies from the resume step on"),
    "train.train_text_encoder": _refuse("which weights are trained"),
    "train.textual_inversion": _refuse("the token and the embedding rows trained for it"),
    "train.textual_inversion.learning_rate": _change("re-applied to the optimizer after loading"),
    "train.textual_inversion.ti_fraction": _change("the step where the token freezes, by step number: it may move "
                                                   "only where the run has not been yet (checked against the "
                                                   "resume step)"),
    "train.textual_inversion.lora_start": _change("the step where the LoRA starts, by step number: it may move "
                                                  "only where the run has not been yet (checked against the resume "
                                                  "step)"),
    "train.learning_rate": _change("re-applied to the optimizer after loading; the schedule continues"),
    "train.text_encoder_lr": _change("re-applied to the optimizer after loading"),
    "train.scale_lr": _change("re-applied to the optimizer after loading"),
    "train.optimizer": _refuse("the optimizer state (Adam moments) belongs to the optimizer"),
    "train.optimizer_args": _refuse("the optimizer's own settings, restored with its state"),
    "train.adam_beta1": _change("re-applied to the optimizer after loading"),
    "train.adam_beta2": _change("re-applied to the optimizer after loading"),
    "train.adam_weight_decay": _change("re-applied to the optimizer after loading"),
    "train.adam_epsilon": _change("re-applied to the optimizer after loading"),
    "train.lr_scheduler": _change("the schedule is rebuilt and continues from the current step"),
    "train.lr_warmup_steps": _change("the schedule is rebuilt and continues from the current step"),
    "train.max_steps": _change("the schedule is rebuilt for the new total; must not be below the checkpoint's step"),
    "train.batch_size": _refuse("batch x processes define the data position of every step"),
    "train.gradient_accumulation_steps": _change("micro-batches per step; the data position stays exact"),
    "train.max_grad_norm": _change("gradient clipping applies from the resume step on"),
    "train.gradient_checkpointing": _change("memory only; the numbers are the same"),
    "train.mixed_precision": _change("compute precision; trainable weights and optimizer state stay fp32"),
    "train.snr_gamma": _change("a loss weighting"),
    "train.noise_offset": _change("a noise hyperparameter"),
    "train.min_timestep": _change("which timesteps are drawn from the step's reseeded RNG, from the resume step on"),
    "train.max_timestep": _change("which timesteps are drawn from the step's reseeded RNG, from the resume step on"),
    "train.ema": _refuse("whether an EMA of the weights exists (its average starts with the run)"),
    "train.ema.decay": _change("re-applied to the EMA after loading"),
    "train.ema.update_after_step": _change("re-applied to the EMA after loading"),
    "train.seed": _refuse("the data order and every random draw of the run"),
    "train.preservation": _change("a loss term: no weights of its own, its prompt draws come after the step's own "
                                  "draws from the step's reseeded RNG"),
    "train.attention_loss": _change("a loss term: no weights or random draws of its own, from the resume step on"),
    "train.num_workers": _change("data loading only; examples are position-addressed"),
    "checkpoint": _change("when and how many checkpoints are kept"),
    "validation": _change("what is sampled during training"),
    "validation.loss.split": _refuse("which images are held out of training (the data position counts the rest)"),
    "validation.loss.seed": _refuse("which images validation.loss.split holds out of training"),
    "logging": _change("where metrics go"),
    "save": _change("which outputs are written at the end"),
}


# key -> its value when the config leaves it None (derived from other keys; model-dependent ones come as `known`)
DERIVED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "train.lora.alpha": lambda c: value_at(c, "train.lora.rank"),
    # with train.scale_lr the learning rate is multiplied by the batch and processes; text_encoder_lr is not
    "train.text_encoder_lr": lambda c: None if value_at(c, "train.scale_lr") else value_at(c, "train.learning_rate"),
}
# key (or section) -> the switches without any of which the run does not use it (a section counts as on when set)
USED_ONLY_WITH: dict[str, str | tuple[str, ...]] = {
    "train.text_encoder_lr": "train.train_text_encoder",
    "train.lora.text_encoder_targets": "train.train_text_encoder",
    "data.class_dir": "data.with_prior_preservation",
    # also output preservation's prompt when train.preservation.prompts is empty (PreservationConfig)
    "data.class_prompt": ("data.with_prior_preservation", "train.preservation"),
    "data.num_class_images": "data.with_prior_preservation",
    "data.class_generation_steps": "data.with_prior_preservation",
    "data.prior_loss_weight": "data.with_prior_preservation",
}


def resolved_value(config: dict[str, Any], key: str, known: dict[str, Any] | None = None) -> Any:
    """What the run uses for ``key``: the written value, or the derived one when it is None."""
    value = value_at(config, key)
    if value is None and known and key in known:
        return known[key]
    if value is None and key in DERIVED:
        value = DERIVED[key](config)
    return float(value) if key == "train.lora.alpha" and value is not None else value


def rule_for(key: str) -> Rule | None:
    """The rule of a dotted key (longest matching prefix), or None when no rule covers it."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        rule = RESUME_RULES.get(".".join(parts[:end]))
        if rule is not None:
            return rule
    return None


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (sections compared key by key, lists whole)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def value_at(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _switches(key: str) -> tuple[str, ...]:
    switch = USED_ONLY_WITH.get(key, ())
    return (switch,) if isinstance(switch, str) else switch


def _unused(config: dict[str, Any], key: str) -> bool:
    """Whether the run leaves ``key`` unused: it has switches and none is on (true, or a section that is set)."""
    switches = _switches(key)
    return bool(switches) and not any(value_at(config, s) not in (None, False) for s in switches)


def unused_overrides(overrides: list[str], config: dict[str, Any]) -> list[str]:
    """One note per ``key=value`` override the run will not use because its switch is off (e.g.
    ``train.text_encoder_lr`` while ``train.train_text_encoder`` is false): a setting never silently ignored."""
    notes = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if _unused(config, key):
            switch = _switches(key)[0]  # the main one (prior preservation, for the class keys)
            notes.append(f"note: {key} has no effect: {switch} is off (set {switch}=true to use it)")
    return notes


def split_changes(old: dict[str, Any], new: dict[str, Any],
                  known: dict[str, Any] | None = None) -> tuple[dict[str, list], dict[str, list]]:
    """``(allowed, refused)``: each maps a changed dotted key to ``[old value, new value]`` (as written).

    A key counts as changed only when the value the run uses differs (see the module doc). ``known``: the value of
    derived keys that need the model to tell (``{"model.prediction_type": "epsilon"}``), for both configs.
    """
    allowed: dict[str, list] = {}
    refused: dict[str, list] = {}
    for key in config_changes(old, new):
        if (_unused(old, key) and _unused(new, key)) or \
                resolved_value(old, key, known) == resolved_value(new, key, known):
            continue
        rule = rule_for(key)
        pair = [value_at(old, key), value_at(new, key)]
        (allowed if rule is not None and rule.may_change else refused)[key] = pair
    return allowed, refused
