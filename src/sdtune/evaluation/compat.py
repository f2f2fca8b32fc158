"""Let torchmetrics' ``CLIPScore`` run on any local CLIP folder with transformers 5, to cross-check our numbers.

torchmetrics 1.9 only loads the hub ids it knows and expects ``get_image_features``/``get_text_features`` to
return tensors; transformers 5 returns output objects whose ``pooler_output`` holds the projected features.
``torchmetrics_clip(folder)`` gives the loader callable torchmetrics accepts as ``model_name_or_path``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def as_tensor(features: Any) -> torch.Tensor:
    """Projected features from either a tensor (transformers 4) or an output object (transformers 5)."""
    if isinstance(features, torch.Tensor):
        return features
    pooled = getattr(features, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"cannot find features in {type(features).__name__}")
    return pooled


class TensorFeatures(torch.nn.Module):
    """A CLIP model whose feature methods return plain tensors, as torchmetrics expects."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return as_tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return as_tensor(self.model.get_text_features(*args, **kwargs))


def torchmetrics_clip(ref: str) -> Callable[[], tuple[TensorFeatures, Any]]:
    """A loader for ``torchmetrics...CLIPScore(model_name_or_path=torchmetrics_clip(folder_or_hub_id))``."""

    def load() -> tuple[TensorFeatures, Any]:
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(ref).eval()
        return TensorFeatures(model), AutoProcessor.from_pretrained(ref)

    return load
