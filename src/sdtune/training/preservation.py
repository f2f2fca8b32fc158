"""Differential output preservation: a loss term that keeps what the starting model does, with no class images.

Prior preservation keeps a class prompt ("a photo of a person") by training on images the starting model drew
for it. This term asks the same without images (ai-toolkit calls it differential output preservation): on every
micro-step, each training example's noisy latents are also given a preservation prompt (a prompt without the
identifier: the class prompt, the concept's prompts in a two-stage flow), and the trained model's prediction is
pulled towards the frozen starting model's prediction for those very inputs::

    loss += weight * mean_b || f_theta(x_t, t, c_p) - f_start(x_t, t, c_p) ||^2

``f_start`` is the model with the run's own LoRA switched off (its scale set to 0 for one no-grad forward), so
no second copy of the model is kept; adapters it trains on top of (a frozen concept adapter) stay on. Hence
LoRA runs only. With a trained text-encoder LoRA both towers are switched, so the prompt's embedding is pulled
back too. The prompt of each example is drawn from the micro-step's seeded RNG (exact resume holds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from sdtune.models.family import Family

TRAINED_ADAPTER = "default"  # the adapter name peft / diffusers give the LoRA a run trains (models.lora.add_lora)


@contextlib.contextmanager
def trained_adapter_off(*modules: torch.nn.Module | None, adapter: str = TRAINED_ADAPTER) -> Iterator[None]:
    """Within the block, the trained LoRA adds nothing (scale 0): the modules compute the starting model.

    Only the scale changes: no ``requires_grad`` flag, active-adapter list or weight is touched (peft's own
    ``disable_adapters`` toggles ``requires_grad`` and would switch off frozen adapters too)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    saved: list[tuple[dict, float]] = []
    try:
        for module in modules:
            if module is None:
                continue
            for layer in module.modules():
                scaling = getattr(layer, "scaling", None)
                if isinstance(layer, BaseTunerLayer) and isinstance(scaling, dict) and adapter in scaling:
                    saved.append((scaling, scaling[adapter]))
                    scaling[adapter] = 0.0
        if not saved:
            raise RuntimeError(f"no LoRA adapter named {adapter!r} to switch off")
        yield
    finally:
        for scaling, value in saved:
            scaling[adapter] = value


class OutputPreservation:
    """The term for one run: its prompts (tokenized once), its weight, and how to compute it on a micro-batch."""

    def __init__(self, prompts: list[str], weight: float, tokenizer) -> None:
        if not prompts:
            raise ValueError("output preservation needs at least one prompt")
        self.prompts, self.weight = list(prompts), float(weight)
        self.input_ids = tokenizer(self.prompts, padding="max_length", max_length=tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt").input_ids

    def loss(self, unet: torch.nn.Module, text_encoder: torch.nn.Module, train_text_encoder: bool,
             noisy: torch.Tensor, timesteps: torch.Tensor, family: Any = None,
             crop_geometry: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` x MSE between the trained and the starting model on ``noisy`` (B, C, H, W) at
        ``timesteps`` (B,), each example with one preservation prompt drawn from the global (seeded) RNG.

        ``family`` (models.family; default SD) turns a prompt into the UNet's conditioning; SDXL's added
        conditioning takes the training examples' own ``crop_geometry`` (B, 6): the same images, other prompts."""
        family = family or Family()
        pick = torch.randint(0, len(self.prompts), (noisy.shape[0],))
        ids = self.input_ids[pick].to(noisy.device)

        def conditioning(cond) -> dict[str, Any]:
            return family.unet_kwargs(cond, crop_geometry)

        with torch.no_grad(), trained_adapter_off(unet, text_encoder if train_text_encoder else None):
            start = conditioning(family.encode(text_encoder, ids))
            target = unet(noisy, timesteps, **start, return_dict=False)[0]
        now = conditioning(family.encode(text_encoder, ids)) if train_text_encoder else start
        pred = unet(noisy, timesteps, **now, return_dict=False)[0]
        return self.weight * F.mse_loss(pred.float(), target.float())


def build_preservation(cfg, tokenizer) -> OutputPreservation | None:
    """The run's term (``RunConfig.train.preservation``), or None when it is off."""
    settings = cfg.train.preservation
    if settings is None:
        return None
    return OutputPreservation(settings.resolved_prompts(cfg.data), settings.weight, tokenizer)
