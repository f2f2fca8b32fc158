"""Pivotal tuning: a new token's embedding and a LoRA trained together in the one loop.

The recipe of the face trainers (diffusers' advanced DreamBooth scripts ``--train_text_encoder_ti`` with
``--train_text_encoder_ti_frac``, OneTrainer's additional embeddings, ai-toolkit's ``embedding_lr``): the token's
rows (``sdtune.models.embeddings``, ``train.textual_inversion.num_vectors`` per encoder) learn with their own
learning rate (``train.textual_inversion.learning_rate``, a group of the run's optimizer) for the first
``ti_fraction`` of the steps and are then frozen, so the LoRA trains its last steps around a fixed "pivot" word.

Freezing drops the rows' gradients before clipping: AdamW skips a parameter without a gradient (no moment update,
no weight decay), the rows keep their value bitwise, and the LoRA's clipping no longer counts them. Whether a step
is frozen depends only on the step number, so a resume across the freeze point is exact.
"""

from __future__ import annotations

import torch

from sdtune.config import RunConfig


def add_pivotal_token(cfg: RunConfig, comps) -> torch.nn.Module:
    """Add the run's token to the tokenizer(s) and wrap the (frozen, LoRA-less) text encoder's token embedding;
    returns the text encoder, whose only trainable parameters are now the token's fp32 rows."""
    from sdtune.models.embeddings import add_learned_token

    learned = cfg.train.textual_inversion
    assert learned is not None
    add_learned_token(comps.tokenizer, comps.text_encoder, learned.token, learned.initializer, learned.norm_limit,
                      learned.num_vectors)
    return comps.text_encoder


def embedding_steps(cfg: RunConfig) -> int | None:
    """How many optimizer steps the token's embedding trains for; None when it trains throughout."""
    learned = cfg.train.textual_inversion
    return None if learned is None else learned.token_steps(cfg.train.max_steps)


def lora_steps_held(cfg: RunConfig) -> int:
    """How many first optimizer steps the LoRA waits for (``train.textual_inversion.lora_start``): 0 for none."""
    learned = cfg.train.textual_inversion
    return 0 if learned is None or cfg.train.lora is None else learned.lora_held_steps(cfg.train.max_steps)


def lora_first_step(cfg: RunConfig) -> int | None:
    """The first step whose update trains the LoRA when ``lora_start`` holds it back (None: it trains from step 1).
    A checkpoint of an earlier step holds the LoRA as initialised (``lora_B`` 0: the identity), the token alone
    learned: ``sdtune pick`` and ``sdtune eval --checkpoints`` label such checkpoints."""
    held = lora_steps_held(cfg)
    return held + 1 if held else None


def hold_phases(cfg: RunConfig, trainables, step: int) -> None:
    """Before the update that makes step ``step + 1``: drop the gradients of what is not training at this step:
    the LoRA's before ``lora_start`` (the token alone learns first: inversion, then tuning around the pivot), the
    token's after ``ti_fraction``. A parameter without a gradient is skipped by AdamW (no moment, no decay): it
    keeps its value bitwise, and the phase depends on the step number alone (an exact resume across it)."""
    if not cfg.is_pivotal:
        return
    freeze_embedding_if_due(cfg, trainables.text_encoder, step)
    if step < lora_steps_held(cfg):
        for p in trainables.unet.parameters():
            if p.requires_grad:
                p.grad = None


def freeze_embedding_if_due(cfg: RunConfig, text_encoder: torch.nn.Module | None, step: int) -> bool:
    """Before the update that makes step ``step + 1``: drop the token rows' gradients once their steps are spent.

    ``text_encoder``: the trainables' text encoder (its trainable parameters are the rows alone in pivotal tuning).
    Returns True when it froze them for this update."""
    last = embedding_steps(cfg)
    if last is None or text_encoder is None or step < last:
        return False
    for p in text_encoder.parameters():
        if p.requires_grad:
            p.grad = None
    return True
