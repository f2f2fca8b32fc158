"""A tiny random CLIPSeg built offline and saved as a hub folder is laid out (config.json, weights, processor
files), for ``sdtune dataset masks``: its scores are noise; the point is the real load-and-segment path. The
tokenizer is the toy CLIP's (shipped with sdtune); the image processor transformers' PIL ViT one (no torchvision
here), 32 px where the real CIDAS/clipseg-rd64-refined reads 352."""

from __future__ import annotations

from pathlib import Path

TOY_CLIP = Path(__file__).resolve().parents[1] / "src" / "sdtune" / "assets" / "toy" / "clip"


def build_tiny_clipseg(folder: Path) -> Path:
    """A random CLIPSegForImageSegmentation (seed 0, ~100 KB) and its processor, saved in ``folder``."""
    import torch
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer
    from transformers.models.vit import ViTImageProcessorPil

    tokenizer = CLIPTokenizer.from_pretrained(TOY_CLIP)
    text = {"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, extract_layers=[1, 2],
                           reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=16)
    processor = CLIPSegProcessor(image_processor=ViTImageProcessorPil(size={"height": 32, "width": 32}),
                                 tokenizer=tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CLIPSegForImageSegmentation(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
