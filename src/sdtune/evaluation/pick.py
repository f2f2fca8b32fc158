"""Which checkpoint to keep, decided by the numbers ``sdtune eval --checkpoints`` measured.

The rule, the same on every model family (only the metrics behind it differ):

1. **Forgetting** first: a checkpoint that forgot more than ``max_forgetting`` is not a candidate (toy: the
   old-prompt accuracy lost against the run's base, default 0.05; real models: CLIP-T points lost on the
   ``--generic-prompts`` against the base, default 1.0). When every checkpoint forgot more, the one that forgot
   least is kept, and the report says so.
2. Among the candidates, the best **subject score**: the mean of person fidelity and the composite, each divided
   by its best value among the candidates (so two metrics on different scales weigh the same). Toy: the judge's
   person and composite rates; real models: DINO (else CLIP-I) against the reference photos, and CLIP-T on the
   evaluation prompts (write the composite there: "a photo of sks person giving a thumbs up").
3. Ties go to the earlier checkpoint: fewer steps, less drift.

A pivotal run with ``train.textual_inversion.lora_start`` saves checkpoints before its LoRA trains: their LoRA is
as initialised (the identity) and only the token's embedding learned. Keeping one is legitimate (the embedding alone
may draw the subject best), but it is said wherever the checkpoint shows (:func:`mark_token_only`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.errors import SdtuneError

TOKEN_ONLY = " (token only)"  # appended to the label of a checkpoint saved before its LoRA started
TOY_FORGETTING = 0.05  # old-prompt accuracy (fraction of images)
CLIP_FORGETTING = 1.0  # CLIP-T points on the generic prompts


@dataclass
class Choice:
    """The kept checkpoint, every candidate's numbers, and the rule in words."""

    model: dict[str, Any]  # the chosen entry of results["models"]
    rows: list[dict[str, Any]] = field(default_factory=list)  # per checkpoint: label, step, values, score, kept
    subject: list[str] = field(default_factory=list)  # metric names behind the subject score
    forgetting: str | None = None  # metric name of the forgetting filter
    limit: float | None = None
    note: str = ""
    learned: bool = True  # False: every subject score of every checkpoint is 0 (nothing of the subject was drawn)


def _value(model: dict[str, Any], name: str) -> float | None:
    metric = model["metrics"].get(name) or {}
    return metric.get("mean")


def rule_metrics(results: dict[str, Any]) -> tuple[list[str], str | None, str]:
    """(subject metrics, forgetting metric or None, 'toy'|'clip') for what ``results`` measured."""
    names = set(results["metrics"])
    if "toy_person" in names:
        return ["toy_person", "toy_composite"], ("toy_forgetting" if "toy_forgetting" in names else None), "toy"
    fidelity = "dino" if "dino" in names else ("clip_i" if "clip_i" in names else None)
    subject = [m for m in (fidelity, "clip_t") if m is not None]
    return subject, ("generic_clip_delta" if "generic_clip_delta" in names else None), "clip"


def forgot(model: dict[str, Any], metric: str | None, kind: str) -> float | None:
    """How much a model forgot, as a positive number (None when not measured)."""
    if metric is None:
        return None
    value = _value(model, metric)
    if value is None:
        return None
    return value if kind == "toy" else -value  # ΔCLIP-T is negative when the model forgot


def choose(results: dict[str, Any], max_forgetting: float | None = None) -> Choice:
    """Apply the module's rule to the checkpoints in ``results`` (models with a ``checkpoint`` entry)."""
    checkpoints = [m for m in results["models"] if m.get("checkpoint")]
    if not checkpoints:
        raise SdtuneError("no checkpoints were evaluated: pass a LoRA or textual-inversion run folder that has "
                          "checkpoints")
    subject, forgetting, kind = rule_metrics(results)
    limit = max_forgetting if max_forgetting is not None else (TOY_FORGETTING if kind == "toy" else CLIP_FORGETTING)
    lost = {m["label"]: forgot(m, forgetting, kind) for m in checkpoints}
    candidates = [m for m in checkpoints if lost[m["label"]] is None or lost[m["label"]] <= limit]
    note = ""
    if not candidates:
        least = min(checkpoints, key=lambda m: lost[m["label"]])
        candidates = [least]
        note = (f"every checkpoint forgot more than {limit:g}; kept the one that forgot least "
                f"({lost[least['label']]:.3f})")
    scales = {name: _scale([_value(m, name) or 0.0 for m in candidates]) for name in subject}
    shifted = [name for name in subject if scales[name][0] < 0.0]
    if shifted:
        note = "; ".join(filter(None, [note, _below_zero_note(results, shifted)]))
    rows = []
    for m in checkpoints:
        parts = [_relative(_value(m, n) or 0.0, *scales[n]) for n in subject]
        score = sum(parts) / len(parts) if parts and m in candidates else None
        rows.append({"label": m["label"], "step": m["checkpoint"]["step"], "ref": m["ref"],
                     "values": {n: _value(m, n) for n in [*subject, *([forgetting] if forgetting else [])]},
                     "forgot": lost[m["label"]], "candidate": m in candidates, "score": score})
    learned = any(v for r in rows for n, v in r["values"].items() if n in subject)
    if not learned:
        note = "; ".join(filter(None, [note, f"no checkpoint scored above 0 on {' or '.join(subject)}: none learned "
                                             "the subject, so the earliest is kept; check the data, the prompts' "
                                             "token and the training settings before using it"]))
    ranked = [r for r in rows if r["score"] is not None]
    kept = max(ranked, key=lambda r: (round(r["score"], 9), -r["step"]))
    kept["kept"] = True
    model = next(m for m in checkpoints if m["label"] == kept["label"])
    if (before := token_only_line(model["checkpoint"])) is not None:  # legitimate, but it must be said
        note = "; ".join(filter(None, [note, f"the kept {before}"]))
    return Choice(model, rows, subject, forgetting, limit, note, learned)


def lora_start_of(run: str | Path) -> tuple[int, float] | None:
    """``(the LoRA's first step, train.textual_inversion.lora_start)`` of a pivotal run that holds its LoRA back
    (``sdtune.training.pivotal.lora_first_step``); None for every other run."""
    from sdtune.config import config_from_dict
    from sdtune.run_folder import read_run_config
    from sdtune.training.pivotal import lora_first_step

    cfg = config_from_dict(read_run_config(run), source=str(Path(run) / "config.yaml"))
    first = lora_first_step(cfg)
    if first is None or cfg.train.textual_inversion is None:
        return None
    return first, cfg.train.textual_inversion.lora_start


def before_lora_line(steps: list[int], first: int, lora_start: float) -> str:
    """"step 2 is before the LoRA starts (step 3, ...): ... its LoRA is the identity" for checkpoints ``steps``."""
    which = f"step {steps[0]} is" if len(steps) == 1 else \
        f"steps {', '.join(map(str, steps[:-1]))} and {steps[-1]} are"
    return (f"{which} before the LoRA starts (step {first}, train.textual_inversion.lora_start {lora_start:g}): only "
            f"the token's embedding has learned; {'its' if len(steps) == 1 else 'their'} LoRA is the identity")


def token_only_line(checkpoint: dict[str, Any] | None) -> str | None:
    """:func:`before_lora_line` for one checkpoint entry that :func:`mark_token_only` marked; None otherwise."""
    if not checkpoint or checkpoint.get("lora_from") is None:
        return None
    return before_lora_line([checkpoint["step"]], checkpoint["lora_from"], checkpoint["lora_start"])


def mark_token_only(results: dict[str, Any]) -> list[str]:
    """Mark the checkpoints that pivotal runs saved before their LoRA started (``lora_start``): ``"lora_from"`` and
    ``"lora_start"`` in the entry's ``checkpoint``, and " (token only)" in its label, so that every table, chart,
    results.json and pick.json shows it. Returns one note per such run, to print (idempotent)."""
    starts: dict[str, tuple[int, float] | None] = {}
    marked: dict[str, tuple[list[int], tuple[int, float]]] = {}
    for m in results["models"]:
        checkpoint = m.get("checkpoint")
        if not checkpoint:
            continue
        run = checkpoint["run"]
        if run not in starts:
            try:
                starts[run] = lora_start_of(run)
            except SdtuneError:  # its config no longer reads: no label (the numbers stand; train/eval say why)
                starts[run] = None
        start = starts[run]
        if start is None or checkpoint["step"] >= start[0]:
            continue
        checkpoint["lora_from"], checkpoint["lora_start"] = start
        if not m["label"].endswith(TOKEN_ONLY):
            m["label"] += TOKEN_ONLY
        marked.setdefault(run, ([], start))[0].append(checkpoint["step"])
    return [f"note: {Path(run).name}: {before_lora_line(sorted(steps), *start)}"
            for run, (steps, start) in marked.items()]


def choose_by_val_loss(run) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every live checkpoint of ``run`` with the validation loss measured at its step (``validation.loss``), and
    the kept one: the lowest loss, ties to the earlier step. SdtuneError when no checkpoint has one. A checkpoint
    saved before a pivotal run's LoRA started carries ``lora_from`` and ``lora_start`` (:func:`token_only_line`)."""
    from sdtune.training.checkpoint import list_checkpoints, read_state
    from sdtune.training.val_loss import STATE_KEY

    rows = []
    start = lora_start_of(run)
    for path in list_checkpoints(Path(run) / "checkpoints"):
        state = read_state(path)
        rows.append({"step": state.step, "checkpoint": str(path),
                     "val_loss": (state.extra.get(STATE_KEY) or {}).get(str(state.step))})
        if start is not None and state.step < start[0]:
            rows[-1]["lora_from"], rows[-1]["lora_start"] = start
    measured = [r for r in rows if r["val_loss"] is not None]
    if not measured:
        raise SdtuneError(f"{run}: no checkpoint carries a validation loss; train with validation.loss (split: 0.1 "
                          "or data_dir: FOLDER) and keep several checkpoints, or pick by the generated images "
                          "(--by subject)")
    return rows, min(measured, key=lambda r: (r["val_loss"], r["step"]))


def _scale(values: list[float]) -> tuple[float, float]:
    """(zero, best) that map a metric to its part of the score: ``(value - zero) / (best - zero)``.

    Relative to the best (zero 0) while no value is below 0. A cosine similarity (CLIP-I, DINO) may be negative:
    relative to a negative best the order reverses (and a best at or below 0 used to drop the metric without a
    word), so the worst candidate becomes the zero instead: best 1, worst 0.
    """
    best = max(values, default=0.0)
    return (min(values), best) if min(values, default=0.0) < 0 else (0.0, best)


def _relative(value: float, zero: float, best: float) -> float:
    if best > zero:
        return (value - zero) / (best - zero)
    return 1.0 if zero < 0 else 0.0  # all equal: all best (shifted), or all 0 (nothing to tell them apart)


def _below_zero_note(results: dict[str, Any], names: list[str]) -> str:
    """Why some subject metric is negative, and how the score then reads it (one sentence)."""
    from sdtune.models.presets import toy_path

    labels = " and ".join(results["metrics"][n]["label"] for n in names)
    backbones = {str(results["metrics"][n].get("backbone")) for n in names}
    why = ("the toy's CLIP (a 64-wide vision tower trained on 32 px renders of the toy world) places unlike "
           "pictures below 0, so only the order of its values means something"
           if any(b != "None" and Path(b).resolve() == (toy_path() / "clip").resolve() for b in backbones) else
           "cosine similarities below 0: the backbone sees the images as unlike the reference photos, so only "
           "the order of the values means something")
    return (f"{labels} is below 0 for some checkpoints ({why}); it enters the score from worst (0) to best (1) "
            "among them, not relative to its best")


def describe(choice: Choice, results: dict[str, Any]) -> list[str]:
    """The choice as lines of text: a table of every checkpoint (the kept one marked) and the rule."""
    labels = {n: results["metrics"][n]["label"] for n in choice.rows[0]["values"]}
    head = ["checkpoint", *labels.values(), "score", ""]
    lines = [" | ".join(head)]
    for r in choice.rows:
        cells = [r["label"], *(f"{v:.3f}" if v is not None else "n/a" for v in r["values"].values()),
                 f"{r['score']:.3f}" if r["score"] is not None else "forgot too much",
                 "<- keep" if r.get("kept") else ""]
        lines.append(" | ".join(cells))
    subject = " and ".join(labels[n] for n in choice.subject)
    rule = f"kept: the best mean of {subject} (each relative to its best)"
    if choice.forgetting:
        rule += f" among checkpoints whose {labels[choice.forgetting]} is within {choice.limit:g}"
    lines.append(rule + ("; " + choice.note if choice.note else ""))
    return lines
