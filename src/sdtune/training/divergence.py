"""Stop a diverging run before a non-finite loss, gradient or weight reaches a checkpoint; name one that is good.

What "good" means: the loss of step N+1 is the first judgement of the weights written by step N, so a
checkpoint saved at step N is only known good once step N+1 ran with finite gradients and a sane loss. Sane,
not just finite: a run that diverges often still has finite weights for several steps (one Adam step at a huge
learning rate moves every weight by about the rate; the loss jumps from 0.5 to 10^6 before it becomes NaN),
and such weights are useless to resume from. The yardstick needs no history and works for any weighting or
prediction type: the loss of predicting zero on the same batch (about 1, since diffusion targets have unit
variance). A step whose loss exceeds :data:`BLOWUP` times that is diverging, and judges the checkpoint before
it bad.

When the run stops, every checkpoint saved since the newest good one is moved aside
(``RUN/checkpoints/diverged-step-N/``, never deleted), so the message and ``--resume latest`` name the same good
checkpoint; rotation (``checkpoint.keep``) never deletes that one while later ones are unjudged. The weights
are checked before every checkpoint is written.

One host sync per optimizer step. The loss and gradient checks are queued on the device as the step runs
(:meth:`DivergenceGuard.record_loss`, :meth:`~DivergenceGuard.record_gradients`) and read back once, in one small
transfer, by :meth:`~DivergenceGuard.judge` after the optimizer update is queued: on a GPU each read of a value
stops the host from queueing work while the device runs, so reading the loss before ``backward`` and the
gradient norm before ``optimizer.step`` (as a first version did, 3-4 reads a step) left the GPU idle. Why judging
after the update still saves nothing non-finite: the update of a bad step changes only memory (weights,
optimizer moments, the LR schedule, the EMA); nothing reaches disk or a validation image before the step's
checkpoint save or validation, and the loop calls ``judge`` before either, in the same step. A bad verdict
raises there, so the bad update dies with the process; resuming always starts from a saved, judged checkpoint.
The judgement replays on the host, in the old order, exactly the old checks (each micro-step's loss: non-finite
stops, a blow-up warns; then the gradient norm) on the values read, so the decisions, the step named and the
message are the same as checking each one as it came. The loss of the step rides in the same transfer, so
logging it every step costs no further sync.

Under fp16 mixed precision a GradScaler is active: infinite gradients are normal there (the scaler skips that
step and lowers its scale), so gradients are not judged; losses and saved weights still are.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdtune.config import RunConfig, TrainConfig
from sdtune.errors import TrainingStopped
from sdtune.training import checkpoint as ckpt
from sdtune.training.optimizers import spec

BLOWUP = 10.0  # a loss this many times that of predicting zero: the weights before the step are diverging

# The learning rates Stable Diffusion fine-tunes usually use, (low, high), per trained part and method: full
# fine-tuning 1e-6..1e-5 (diffusers' DreamBooth 5e-6, text-to-image 1e-5), LoRA 1e-4..1e-3 (diffusers and kohya
# 1e-4); a text encoder trains lower than the UNet (kohya's text_encoder_lr 5e-5 for LoRA, ~2e-6 full).
USUAL_RATES = {("unet", "full"): (1e-6, 1e-5), ("unet", "lora"): (1e-4, 1e-3),
               ("text_encoder", "full"): (1e-6, 5e-6), ("text_encoder", "lora"): (1e-5, 1e-4),
               # one embedding row: the diffusers script's 5e-4 x batch 8 (its scale_lr) is 4e-3; 2e-2 on the toy world
               ("unet", "textual_inversion"): (5e-4, 2e-2)}


def _rate(value: float) -> str:
    return f"{float(f'{value:.3g}'):g}"  # 1e-05, 0.0005, 10000


def lower_rates(train: TrainConfig, processes: int | None = None) -> tuple[list[str], list[str]]:
    """Overrides that lower a diverging run's rates into the usual range, and why: ``(["train.learning_rate=1e-05",
    ...], [reasons])``.

    Each suggested rate is min(current / 10, top of the usual range for the method), so a run far above the range
    gets back into it in one restart instead of one decade at a time. ``train.scale_lr`` multiplies the UNet rate
    by batch x accumulation x ``processes`` (default: ``WORLD_SIZE``); the suggestion is for the config value.
    """
    method = ("textual_inversion" if train.textual_inversion is not None else "lora" if train.lora is not None
              else "full")
    what = {"lora": "LoRA", "full": "full fine-tuning", "textual_inversion": "textual inversion"}[method]
    factor = 1
    if train.scale_lr:
        factor = train.batch_size * train.gradient_accumulation_steps * (processes or int(os.environ.get(
            "WORLD_SIZE", "1")))
    effective = train.learning_rate * factor
    optimizer = spec(train.optimizer)  # Prodigy's rate scales its own estimate: its usual range is its own
    low, high = optimizer.usual_rates or USUAL_RATES[("unet", method)]
    new_effective = min(effective / 10, high)
    scaled = f" (x{factor} by train.scale_lr: {_rate(effective)})" if factor != 1 else ""
    where = "within" if effective <= high else "above"
    overrides = [f"train.learning_rate={_rate(new_effective / factor)}"]
    reasons = [f"the learning rate {_rate(train.learning_rate)}{scaled} is too high for this run ({where} the "
               f"usual {_rate(low)}..{_rate(high)} for {what} of Stable Diffusion"
               f"{'' if optimizer.usual_rates is None else ' with ' + train.optimizer})"]
    if train.train_text_encoder:
        te_low, te_high = optimizer.usual_rates or USUAL_RATES[("text_encoder", method)]
        te_now = train.text_encoder_lr if train.text_encoder_lr is not None else effective
        te_next = train.text_encoder_lr if train.text_encoder_lr is not None else new_effective  # None follows
        if train.text_encoder_lr is not None or te_next > te_high:
            overrides.append(f"train.text_encoder_lr={_rate(min(te_now / 10, te_high))}")
            reasons.append(f"the text encoder trains at {_rate(te_now)} (usual for {what}: {_rate(te_low)}.."
                           f"{_rate(te_high)})")
    if train.optimizer != "adamw":
        reasons.append(f"with train.optimizer={train.optimizer} the rate that fits is: {optimizer.rate_advice}")
    return overrides, reasons


@dataclass(frozen=True)
class StepVerdict:
    """What :meth:`DivergenceGuard.judge` read of a sane step: its loss, and whether a stop was asked for."""

    loss: float
    stop_requested: bool
    terms: dict[str, float] = field(default_factory=dict)  # loss terms beside the diffusion loss, this process's


class DivergenceGuard:
    """Judges each step, remembers which checkpoints are not yet known good, and builds the stop message."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, main_process: bool, grad_scaler: bool,
                 resumed_step: int | None):
        self.cfg, self.run_dir, self.main = cfg, run_dir, main_process
        self.grad_scaler = grad_scaler
        self.resumed_step = resumed_step
        # checkpoints saved since the last good judgement (the resumed one is judged by the first step)
        self.suspects: list[int] = [] if resumed_step is None else [resumed_step]
        self._diverging = False
        self._warned = False
        self._micro: list[tuple[torch.Tensor, torch.Tensor]] = []  # this step's (losses, zero losses), on device
        self._rows: list[torch.Tensor] = []  # per micro-step: [all finite, loss sum, zero-loss sum, loss mean]
        self._grad_norm: torch.Tensor | float | None = None

    @property
    def root(self) -> Path:
        return self.run_dir / "checkpoints"

    # ------------------------------------------------------------------ judging
    def record_loss(self, losses: torch.Tensor, zero_losses: torch.Tensor) -> None:
        """Queue the checks of one micro-step's loss; nothing is read. ``losses``/``zero_losses``: shape (P,), the
        micro-step's loss and the loss of predicting zero on every process (gathered), fp32, on the device."""
        losses, zero_losses = losses.detach(), zero_losses.detach()
        self._micro.append((losses, zero_losses))
        # the same reductions the checks always made, as fp32 (what they read; MPS has no fp64)
        self._rows.append(torch.stack([torch.isfinite(losses).all().float(), losses.sum().float(),
                                       zero_losses.sum().float(), losses.mean().float()]))

    def record_gradients(self, grad_norm: torch.Tensor | float | None) -> None:
        """The step's total gradient norm (after accumulation, before clipping), or None where none is judged."""
        self._grad_norm = grad_norm

    def judge(self, step: int, stop_requested: torch.Tensor | None = None,
              terms: dict[str, torch.Tensor] | None = None) -> StepVerdict:
        """Read the step's queued checks (one transfer: the host sync of the step) and judge it; call it after the
        optimizer update is queued and before anything of the step is saved or validated (module docstring).

        ``stop_requested``: a device flag (a stop asked for on any process) read in the same transfer, as are
        ``terms`` (the step's loss terms by name, ``StepLoss.take_terms``: logged, not judged). Raises the
        :class:`TrainingStopped` of :meth:`stop` for a non-finite loss or gradient norm, naming ``step``; a sane
        step makes the checkpoints before it good. Returns the step's loss (mean over micro-steps and processes).
        """
        micro, rows, grad_norm = self._micro, self._rows, self._grad_norm
        self._micro, self._rows, self._grad_norm = [], [], None
        if self.grad_scaler:  # fp16: its scaler skips overflowed steps itself
            grad_norm = None
        terms = terms or {}
        extra = [t.reshape(1).to(rows[0].device, torch.float32) for t in (grad_norm, stop_requested, *terms.values())
                 if isinstance(t, torch.Tensor)]
        values = torch.cat(rows + extra).tolist()  # the one read of the step
        per_micro, rest = values[:4 * len(rows)], values[4 * len(rows):]
        grad_value = rest.pop(0) if isinstance(grad_norm, torch.Tensor) else grad_norm
        stop = bool(rest.pop(0)) if stop_requested is not None else False
        read_terms = dict(zip(terms, rest, strict=True))
        means = []
        quads = [per_micro[i:i + 4] for i in range(0, len(per_micro), 4)]
        for (losses, _), (finite, total, zero, mean) in zip(micro, quads, strict=True):
            if not finite:
                bad = next(float(x) for x in losses.flatten().tolist() if not math.isfinite(float(x)))
                raise self.stop(f"the loss became {bad} at step {step}")
            if total > BLOWUP * zero + 1e-12:
                self._diverging = True
                if self.main and not self._warned:
                    self._warned = True
                    ratio = total / max(zero, 1e-12)
                    print(f"warning: the loss at step {step} ({total / losses.numel():.3g}) is {ratio:.3g} times that "
                          "of predicting zero: the run is diverging; checkpoints from here on count as good "
                          "only once the loss is sane again")
            means.append(mean)
        if grad_value is not None and not math.isfinite(float(grad_value)):
            raise self.stop(f"the gradient norm became {float(grad_value)} at step {step} (its update was not "
                            "saved)")
        if not self._diverging:  # a sane loss makes the checkpoints before it good
            self.suspects.clear()
        self._diverging = False
        return StepVerdict(loss=sum(means) / len(means), stop_requested=stop, terms=read_terms)

    def check_weights(self, parameters: list[torch.nn.Parameter], step: int) -> None:
        """Before a checkpoint is written (one read for all of them)."""
        if not ckpt.all_finite(p.detach() for p in parameters):
            raise self.stop(f"the weights became non-finite at step {step} (checkpoint {ckpt.step_dir_name(step)} "
                            "was not written)")

    def saved(self, step: int) -> None:
        self.suspects.append(step)

    def keep_also(self) -> str | None:
        """While the run is diverging, the newest checkpoint known good: rotation must not delete it.

        Call before writing the next checkpoint. None in a healthy run (``checkpoint.keep`` alone decides).
        """
        if not self.suspects:
            return None
        good = self._good()
        return good[-1].name if good else None

    def _good(self) -> list[Path]:
        names = {ckpt.step_dir_name(s) for s in self.suspects}
        return [p for p in ckpt.list_checkpoints(self.root) if p.name not in names]

    # ------------------------------------------------------------------ stopping
    def stop(self, what: str) -> TrainingStopped:
        """Move the checkpoints not known good aside (process 0) and return the error naming the good one."""
        parts = [f"{what}: training stopped, nothing non-finite was saved."]
        good = self._good()
        bad = [self.root / ckpt.step_dir_name(s) for s in sorted(set(self.suspects))]
        bad = [p for p in bad if p.is_dir()]
        if bad:
            folder = self.root / f"diverged-{bad[0].name}"
            if self.main:
                folder = ckpt.move_aside(self.root, bad, folder.name,
                                         {"reason": f"{what}; no sane step followed these checkpoints"})
            resumed = " (the one this run resumed from)" if self.resumed_step in self.suspects else ""
            parts.append(f"{', '.join(p.name for p in bad)}{resumed}: no sane step followed, so not good; moved "
                         f"aside to {folder}.")
        parts.append(self._advice(good[-1] if good else None))
        return TrainingStopped(" ".join(parts))

    def _advice(self, good: Path | None) -> str:
        train = self.cfg.train
        extra, why = lower_rates(train)
        if train.max_grad_norm is None:
            extra.append("train.max_grad_norm=1.0")
            why.append("gradient clipping is off (train.max_grad_norm bounds every step)")
        if train.mixed_precision == "fp16":
            extra.append("train.mixed_precision=bf16")
            why.append("fp16 overflows easily (bf16 has fp32's range, on GPUs that support it)")
        command = f"sdtune train {self.run_dir / 'config.yaml'} {' '.join(extra)}"
        if good is None:
            return (f"No checkpoint of this run is known good. Likely: {'; '.join(why)}. Start again with a lower "
                    f"rate, e.g. {command}")
        return (f"The last good checkpoint is {good} (--resume latest now finds it). Likely: {'; '.join(why)}. "
                f"Continue from it with a lower rate, e.g. {command} --resume {good}")
