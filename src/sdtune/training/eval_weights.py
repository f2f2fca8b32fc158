"""The weights a run evaluates and saves, when they are not the ones it trains: an EMA, or schedule-free's average.

Two things keep a second set of weights next to the trained ones:

- an EMA (``train.ema``): of the whole UNet for full fine-tuning, of the trained matrices for a LoRA (UNet and
  text-encoder LoRA) or of the learned token's rows for textual inversion;
- schedule-free AdamW (``train.optimizer=adamw_schedulefree``): the parameters hold its training point ``y``; its
  ``eval()`` moves them to the average ``x``, the weights to use.

:class:`EvalWeights` swaps those weights in for validation, for each checkpoint's ``evaluated.safetensors`` (what
``sdtune pick`` / checkpoint evaluation reads) and, for good, before the final outputs are written. Inside
:meth:`EvalWeights.swapped` the parameters hold the evaluated weights; after it they hold the trained ones again,
bitwise (restored from a copy, not recomputed: schedule-free's ``train()`` after ``eval()`` is not an exact
inverse, and a trajectory must not depend on how often it was validated). Checkpoints keep the trained weights
(``trainable.safetensors``) and the optimizer / EMA state, so a resume is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sdtune.config import RunConfig
from sdtune.training.optimizers import is_schedule_free


def ema_parameters(cfg: RunConfig, trainables) -> list[torch.nn.Parameter]:
    """What an EMA averages: the whole UNet in full fine-tuning (as before: its checkpoints' ``ema.pt``), else the
    trainable weights in ``Trainables.parameters()`` order (LoRA matrices of UNet and text encoder, a token's rows)."""
    if cfg.is_full:
        return list(trainables.unet.parameters())
    return trainables.parameters()


def build_ema(cfg: RunConfig, trainables):
    """A diffusers ``EMAModel`` over :func:`ema_parameters`, or None without ``train.ema``."""
    if cfg.train.ema is None:
        return None
    from diffusers.training_utils import EMAModel

    unet = trainables.unet
    model = {"model_cls": type(unet), "model_config": unet.config} if cfg.is_full else {}
    return EMAModel(ema_parameters(cfg, trainables), decay=cfg.train.ema.decay,
                    update_after_step=cfg.train.ema.update_after_step, **model)


class EvalWeights:
    """Swaps the evaluated weights (EMA or schedule-free average) into the live parameters; a no-op without them."""

    def __init__(self, cfg: RunConfig, trainables, optimizer, ema) -> None:
        self.ema = ema
        self.ema_parameters = ema_parameters(cfg, trainables) if ema is not None else []
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the real one
        self.schedule_free = is_schedule_free(self.optimizer)
        self.parameters = self.ema_parameters if ema is not None else trainables.parameters()
        self.applied = False  # after apply(): the parameters hold the evaluated weights for good

    @property
    def differs(self) -> bool:
        """Whether the evaluated weights are other than the trained ones."""
        return self.ema is not None or self.schedule_free

    def _to_evaluated(self) -> None:
        if self.schedule_free:
            self.optimizer.eval()  # y -> x, and the groups say eval mode
        if self.ema is not None:
            self.ema.copy_to(self.ema_parameters)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside: the parameters hold the evaluated weights. After: the trained ones, bitwise, in training mode."""
        if not self.differs or self.applied:
            yield
            return
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.parameters]
        self._to_evaluated()
        try:
            yield
        finally:
            with torch.no_grad():
                for param, kept in zip(self.parameters, saved, strict=True):
                    param.copy_(kept)
            if self.schedule_free:
                for group in self.optimizer.param_groups:
                    group["train_mode"] = True

    def apply(self) -> None:
        """Swap the evaluated weights in for good (training is over: the final outputs are written from them)."""
        if self.differs and not self.applied:
            self._to_evaluated()
        self.applied = True
