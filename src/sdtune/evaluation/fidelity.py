"""Subject fidelity: do the generated images look like the reference photos of the subject?

As in the DreamBooth paper: CLIP-I is the mean cosine similarity between CLIP image embeddings of generated and
real images, over all (generated, reference) pairs; DINO is the same with a self-supervised ViT's CLS
embedding, which tells apart two people of the same kind better than CLIP does. Per generated image we keep
its mean similarity to all references, so the spread over seeds can be reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from sdtune.data.images import is_image_file, load_rgb
from sdtune.errors import DataError
from sdtune.evaluation.clip_score import load_backbone


def load_reference_images(folder: Path) -> list[tuple[Path, Image.Image]]:
    """All images in ``folder`` (not recursive), sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"reference folder {folder} does not exist")
    paths = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not paths:
        raise DataError(f"no images in reference folder {folder}")
    return [(p, load_rgb(p)) for p in paths]


def mean_similarity_to_references(generated: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """For each normalised generated embedding, its mean cosine similarity to all reference embeddings."""
    return (generated @ references.T).mean(dim=1)


class DinoEmbedder:
    """CLS-token embeddings of a ViT (DINO ViT-S/16 in the DreamBooth paper; any ViT-like hub id or folder)."""

    def __init__(self, ref: str, device: str = "cpu", local_files_only: bool | None = None) -> None:
        self.name = ref
        self.device = device
        self.model, self.processor = load_backbone(ref, kind="dino", local_files_only=local_files_only)
        self.model.to(device)

    @torch.inference_mode()
    def embeddings(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[i:i + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            hidden = self.model(pixel_values=pixels).last_hidden_state
            out.append(hidden[:, 0].float().cpu())  # the CLS token, as DINO's own evaluation uses
        emb = torch.cat(out)
        return emb / emb.norm(p=2, dim=-1, keepdim=True)
