"""Masks for the masked loss, made by a text-prompted segmentation model: CLIPSeg ("a person" -> where the person
is), as OneTrainer's mask tool does, so a folder of photos needs no hand-drawn masks before ``data.masked_loss``.

CLIPSeg (Lüddecke & Ecker, CVPR 2022; transformers' ``CLIPSegForImageSegmentation``) scores every pixel of a
352 x 352 view of the image against the prompt. Each image's scores are resized back to the image's own size
(EXIF rotation applied, as training reads it), thresholded (0.3 on the sigmoid, as OneTrainer's mask tool) and grown by
``expand`` pixels (a max filter), so hair and hands at the silhouette's edge stay inside the mask: a mask that cuts
into the person costs more than one that keeps a rim of background. Each mask is a black-and-white PNG named
after its image's stem, the form :func:`sdtune.data.masks.read_mask` reads from ``data.mask_dir``.

The model is a hub id, ``clipseg`` (CIDAS/clipseg-rd64-refined, 150 M parameters, ~0.6 GB in fp32) or a local
folder with ``config.json``, the weights and the processor files. Load errors are one
:class:`~sdtune.errors.ModelLoadError` line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtune.errors import DataError, ModelLoadError

if TYPE_CHECKING:  # imported where used: the CLI imports this module for its help text before it sets tqdm's pace
    import numpy as np
    from PIL import Image

DEFAULT_SEGMENTER = "CIDAS/clipseg-rd64-refined"
SHORT_NAMES = {"clipseg": DEFAULT_SEGMENTER}
ARCHITECTURE = "CLIPSegForImageSegmentation"


@dataclass
class Segmenter:
    """A loaded CLIPSeg: :meth:`probabilities` gives per-pixel scores for a prompt, at each image's size."""

    processor: Any
    model: Any
    name: str
    device: str
    dtype: Any
    batch_size: int = 8

    def probabilities(self, images: Sequence[Image.Image], prompt: str) -> list[np.ndarray]:
        """Per image an (H, W) float32 array in [0, 1]: how much each pixel is ``prompt`` (sigmoid of CLIPSeg's
        logits, bilinearly resized from the model's view to the image's W x H)."""
        import torch
        import torch.nn.functional as F

        images = list(images)
        inputs = self.processor(text=[prompt] * len(images), images=images, padding=True, return_tensors="pt")
        inputs = {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                  for k, v in inputs.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits
        logits = logits.float().reshape(len(images), 1, *logits.shape[-2:])  # CLIPSeg squeezes a batch of one
        out = []
        for image, row in zip(images, logits, strict=True):
            scaled = F.interpolate(row[None], size=(image.height, image.width), mode="bilinear", align_corners=False)
            out.append(torch.sigmoid(scaled)[0, 0].cpu().numpy())
        return out


def load_segmenter(model: str | Path = "clipseg", *, device: str | None = None, dtype: str = "auto",
                   batch_size: int = 8) -> Segmenter:
    """CLIPSeg from a hub id, short name or folder, on ``device`` (default: cuda when present; ``dtype`` auto:
    bf16 on a GPU that has it, else fp32). ModelLoadError (one line) for a missing folder, an unreachable hub id,
    another architecture or weights that do not load."""
    from transformers import CLIPSegForImageSegmentation

    from sdtune.data.captioner import load_pretrained, read_model_config, resolve_model

    source, local = resolve_model(model, SHORT_NAMES, "segmentation model")
    config = read_model_config(source, local, "segmentation model", f"{ARCHITECTURE} (e.g. clipseg: "
                                                                    f"{DEFAULT_SEGMENTER})")
    found = [a for a in config.get("architectures") or [] if isinstance(a, str)] or [config.get("model_type")]
    if ARCHITECTURE not in found and config.get("model_type") != "clipseg":
        raise ModelLoadError(f"segmentation model {source!r} is {', '.join(map(str, found))}, not CLIPSeg: masks "
                             f"are made with {ARCHITECTURE}, e.g. clipseg ({DEFAULT_SEGMENTER})")
    processor, net, device, torch_dtype = load_pretrained(source, local, CLIPSegForImageSegmentation, device=device,
                                                          dtype=dtype, what="segmentation model")
    return Segmenter(processor, net, name=source, device=device, dtype=torch_dtype, batch_size=max(1, batch_size))


def binary_mask(probability: np.ndarray, threshold: float, expand: int) -> Image.Image:
    """White where ``probability`` > ``threshold``, grown by ``expand`` pixels in every direction (a square max
    filter of side 2 * expand + 1), black elsewhere: an L image of the array's W x H."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    inside = torch.from_numpy(probability > threshold).float()[None, None]
    if expand > 0:
        inside = F.max_pool2d(inside, kernel_size=2 * expand + 1, stride=1, padding=expand)
    return Image.fromarray((inside[0, 0].numpy() * 255).astype(np.uint8), mode="L")


@dataclass
class MaskReport:
    """What :func:`write_masks` did: masks written, kept (already there), and images whose mask came out empty."""

    out: Path
    written: int = 0
    kept: int = 0
    empty: list[Path] = field(default_factory=list)


def write_masks(images: Sequence[Path], out: Path, prompt: str, segmenter: Segmenter, *, threshold: float = 0.3,
                expand: int = 10, overwrite: bool = False, progress: bool = True) -> MaskReport:
    """A mask per image in ``out`` (``<stem>.png``), a batch at a time; a mask already there is kept unless
    ``overwrite`` (a hand-drawn one is never lost). Each file is written whole (a temporary name, then renamed).

    DataError when two images share a stem (their masks would share a file: ``data.mask_dir`` matches by stem)."""
    from tqdm.auto import tqdm

    from sdtune.data.images import load_rgb
    from sdtune.data.masks import mask_file

    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise DataError(f"{image} and {by_stem[image.stem]} share the name {image.stem!r}: a mask folder "
                            "matches masks to images by name, so rename one")
        by_stem[image.stem] = image
    out.mkdir(parents=True, exist_ok=True)
    report = MaskReport(out)
    todo = [p for p in images if overwrite or mask_file(p, out) is None]
    report.kept = len(images) - len(todo)
    with tqdm(total=len(todo), desc=f"masks ({prompt!r})", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), segmenter.batch_size):
            batch = todo[start:start + segmenter.batch_size]
            scores = segmenter.probabilities([load_rgb(p) for p in batch], prompt)
            for image, probability in zip(batch, scores, strict=True):
                mask = binary_mask(probability, threshold, expand)
                target = out / f"{image.stem}.png"  # read before a mask of another format with that name
                partial = target.with_name(f".{target.name}.partial")
                mask.save(partial, format="PNG")
                os.replace(partial, target)
                report.written += 1
                if mask.getextrema()[1] == 0:
                    report.empty.append(image)
            bar.update(len(batch))
    return report
