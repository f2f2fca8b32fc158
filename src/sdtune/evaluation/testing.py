"""Tiny random CLIP and ViT (DINO-style) backbones built in code, for offline tests and demos of ``sdtune eval``.

They are saved with ``save_pretrained`` so that evaluation loads them through exactly the path a user's
``--clip FOLDER`` takes. Their scores mean nothing; the arithmetic around them is what tests check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def _image_processor(size: int):
    from transformers import CLIPImageProcessorPil  # the PIL backend: torchvision is not a dependency

    return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def build_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a random ``CLIPModel`` with tokenizer and image processor into ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    from sdtune.models.presets import build_tiny_tokenizer

    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="sdtune-tok-") as tmp:
        tokenizer = build_tiny_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)  # loaded fully: the temp files can go
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": image_size, "patch_size": 8},
        projection_dim=16,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_vit(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write a random ``ViTModel`` + image processor (stands in for DINO ViT-S/16) into ``folder``."""
    import torch
    from transformers import ViTConfig, ViTModel

    folder = Path(folder)
    config = ViTConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                       image_size=image_size, patch_size=8)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ViTModel(config)  # the pooler is unused (DINO's CLS token is), but hub DINO checkpoints have one
    model.save_pretrained(folder)
    _image_processor(image_size).save_pretrained(folder)
    return folder
