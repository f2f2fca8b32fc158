"""Forgetting: what fine-tuning did to prompts that are not about the new concept.

A model that learned "sks person" should still draw "a red bicycle" as its base did. Two numbers, both on
generic prompts and compared with the base model at the same prompt and seed (same starting noise):

- generic CLIP delta: model's CLIP score minus the base's (CLIP points; near 0 is good, negative = worse
  prompt following);
- base similarity: cosine between the CLIP image embeddings of the model's and the base's image (1 = same
  picture; lower = the model drifted, e.g. every image now shows the subject).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Key = tuple[str, int]


def score_deltas(model_scores: Mapping[Key, float], base_scores: Mapping[Key, float]) -> dict[Key, float]:
    """Per (prompt, seed): model score minus base score, for the keys both have."""
    return {k: model_scores[k] - base_scores[k] for k in model_scores if k in base_scores}


def paired_similarity(model_emb: Mapping[Key, torch.Tensor], base_emb: Mapping[Key, torch.Tensor]) -> dict[Key, float]:
    """Per (prompt, seed): cosine of the model's and base's normalised image embeddings."""
    return {k: float((model_emb[k] * base_emb[k]).sum()) for k in model_emb if k in base_emb}
