"""Set up what a run trains: LoRA or full, UNet and optionally the text encoder, with optimizer and LR schedule."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdtune.config import RunConfig
from sdtune.errors import SdtuneError
from sdtune.models.loading import SDComponents, compute_dtype
from sdtune.models.lora import add_lora, apply_model_adapters
from sdtune.training.optimizers import check_optimizer, make_optimizer


@dataclass
class Trainables:
    """The modules a run trains. Their trainable parameters are collected once (:meth:`parameters`): the loop needs
    them every step (clipping) and walking every UNet parameter took 19 ms a call at 1/8 of SD 2's width."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module | None  # None when the text encoder is frozen
    _trained: list[torch.nn.Parameter] | None = field(default=None, init=False, repr=False, compare=False)

    def modules(self) -> dict[str, torch.nn.Module]:
        out = {"unet": self.unet}
        if self.text_encoder is not None:
            out["text_encoder"] = self.text_encoder
        return out

    def parameters(self) -> list[torch.nn.Parameter]:
        """The parameters with ``requires_grad``, as collected at the first call (a new list each call).

        Loading a checkpoint, the EMA and validation copy values into these same tensors, so the list stays right;
        code that changes which parameters train (freezing some, adding a module) calls :meth:`refresh`."""
        if self._trained is None:
            self.refresh()
        assert self._trained is not None
        return list(self._trained)

    def refresh(self) -> None:
        """Collect the trainable parameters again (after ``requires_grad`` changed)."""
        self._trained = [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    return compute_dtype(mixed_precision)


def frozen_dtypes(cfg: RunConfig) -> dict[str, torch.dtype | None]:
    """The dtypes to load the UNet and text encoder(s) in: the compute dtype where their base weights stay frozen
    (LoRA, or a frozen text encoder), as :func:`configure_trainables` would cast them; None (fp32) where they train."""
    dtype = weight_dtype_for(cfg.train.mixed_precision)
    if dtype == torch.float32:
        return {"unet_dtype": None, "text_encoder_dtype": None}
    frozen_unet = cfg.train.lora is not None or cfg.train.textual_inversion is not None
    return {"unet_dtype": dtype if frozen_unet else None,
            "text_encoder_dtype": dtype if frozen_unet or not cfg.train.train_text_encoder else None}


def configure_trainables(cfg: RunConfig, comps: SDComponents, device: torch.device) -> Trainables:
    """Freeze what is not trained, add LoRA adapters, cast frozen weights to the mixed-precision dtype.

    Trainable weights stay fp32 (LoRA on fp16 weights diverges); frozen ones take the compute dtype to save
    memory, as a 16 GB GPU needs.
    """
    train = cfg.train
    dtype = weight_dtype_for(train.mixed_precision)
    comps.vae.requires_grad_(False)
    comps.text_encoder.requires_grad_(False)
    comps.vae.to(device, dtype=comps.family.vae_dtype(comps.vae, dtype))  # SDXL's VAE stays fp32 under fp16
    unet, text_encoder = comps.unet, comps.text_encoder
    if train.textual_inversion is not None and train.lora is None:
        return _textual_inversion(cfg, comps, device, dtype)
    if train.lora is not None:
        apply_model_adapters(cfg, unet, text_encoder)  # frozen LoRAs below the trained one (model.adapters)
        unet.to(device, dtype=dtype)
        add_lora(unet, train.lora, train.lora.targets)
        if train.train_text_encoder:
            text_encoder.to(device, dtype=dtype)
            add_lora(text_encoder, train.lora, train.lora.text_encoder_targets, "train.lora.text_encoder_targets")
        else:
            text_encoder.to(device, dtype=dtype)
        for module in (unet, text_encoder):
            for p in module.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
    else:
        unet.to(device)
        unet.requires_grad_(True)
        if train.train_text_encoder:
            text_encoder.to(device)
            text_encoder.requires_grad_(True)
        else:
            text_encoder.to(device, dtype=dtype)
    if train.textual_inversion is not None:  # pivotal tuning: the token's rows train beside the LoRA
        from sdtune.training.pivotal import add_pivotal_token

        text_encoder = add_pivotal_token(cfg, comps)
    if train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    unet.train()
    if train.train_text_encoder:
        text_encoder.train()
    else:
        text_encoder.eval()
    comps.vae.eval()
    return Trainables(unet, text_encoder if train.train_text_encoder or train.textual_inversion else None)


def _textual_inversion(cfg: RunConfig, comps: SDComponents, device: torch.device, dtype: torch.dtype) -> Trainables:
    """The UNet and the text encoder frozen in the compute dtype; the new token's fp32 row(s) the one trainable
    parameter (``sdtune.models.embeddings``). The tokenizer learns the token here, before the data is tokenized."""
    from sdtune.models.embeddings import add_learned_token

    learned = cfg.train.textual_inversion
    assert learned is not None
    unet, text_encoder = comps.unet, comps.text_encoder
    apply_model_adapters(cfg, unet, text_encoder)
    unet.requires_grad_(False)
    unet.to(device, dtype=dtype)
    text_encoder.to(device, dtype=dtype)
    add_learned_token(comps.tokenizer, text_encoder, learned.token, learned.initializer, learned.norm_limit,
                      learned.num_vectors)
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # activations through the frozen UNet still flow back to the text
    unet.eval()  # nothing of them trains; no dropout in the frozen parts
    text_encoder.eval()
    comps.vae.eval()
    return Trainables(unet, text_encoder)


def prepare_models(accelerator, trainables: Trainables, optimizer):
    """``accelerator.prepare`` of the modules that train (data-parallel wrapping refuses a module with no trainable
    parameter: the frozen UNet of textual inversion). Returns (unet, optimizer, the wrapped text encoder or None)."""
    def trains(module: torch.nn.Module | None) -> bool:
        return module is not None and any(p.requires_grad for p in module.parameters())

    unet = accelerator.prepare(trainables.unet) if trains(trainables.unet) else trainables.unet
    optimizer = accelerator.prepare(optimizer)
    text_encoder = accelerator.prepare(trainables.text_encoder) if trains(trainables.text_encoder) else None
    return unet, optimizer, text_encoder


def build_optimizer(cfg: RunConfig, trainables: Trainables, world_size: int) -> torch.optim.Optimizer:
    train = cfg.train
    lr = train.learning_rate
    if train.scale_lr:
        lr = lr * train.batch_size * train.gradient_accumulation_steps * world_size
    groups = [{"params": [p for p in trainables.unet.parameters() if p.requires_grad], "lr": lr}]
    if trainables.text_encoder is not None:
        learned = train.textual_inversion  # a learned token: its own lr, else the run's
        te_lr = (train.text_encoder_lr or lr) if train.train_text_encoder else (learned.learning_rate or lr
                                                                                  if learned else lr)
        groups.append({"params": [p for p in trainables.text_encoder.parameters() if p.requires_grad], "lr": te_lr})
    groups = [group for group in groups if group["params"]]  # textual inversion: the frozen UNet has none
    return make_optimizer(train, groups)


def check_machine(cfg: RunConfig) -> None:
    """Settings this machine cannot run (fp16, 8-bit Adam without CUDA, an optimizer's package missing), refused
    before the data check and the model load rather than minutes later. Not in the schema: a config is valid on
    any machine."""
    check_mixed_precision(cfg.train.mixed_precision)
    check_optimizer(cfg.train)


def build_lr_scheduler(cfg: RunConfig, optimizer: torch.optim.Optimizer):
    from diffusers.optimization import get_scheduler

    return get_scheduler(cfg.train.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.train.lr_warmup_steps,
                         num_training_steps=cfg.train.max_steps)


def check_mixed_precision(mode: str) -> None:
    if mode == "fp16" and not torch.cuda.is_available():
        raise SdtuneError("train.mixed_precision=fp16 needs a CUDA GPU; use 'no' (or 'bf16') on this machine")
