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


WORK_SIDE = 1024  # masks are thresholded and grown at most this many pixels on a side, then resized to the photo


def working_size(width: int, height: int) -> tuple[int, int]:
    """(W, H) a mask is computed at: the photo's, shrunk so the longer side is at most WORK_SIDE. CLIPSeg sees 352
    px, so no detail is lost, and growing a 12-megapixel mask at full size took minutes per photo."""
    scale = min(1.0, WORK_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class Segmenter:
    """A loaded CLIPSeg: :meth:`probabilities` gives per-pixel scores for a prompt."""

    processor: Any
    model: Any
    name: str
    device: str
    dtype: Any
    batch_size: int = 8

    def check_prompt(self, prompt: str) -> None:
        """DataError when ``prompt`` is longer than CLIPSeg's text encoder reads (77 tokens for CLIPSeg's CLIP)."""
        limit = int(getattr(self.model.config.text_config, "max_position_embeddings", 77))
        tokens = len(self.processor.tokenizer(prompt)["input_ids"])
        if tokens > limit:
            raise DataError(f"--prompt is {tokens} tokens and CLIPSeg reads at most {limit}: name what to keep in a "
                            "few words ('a person', 'a dog')")

    def probabilities(self, images: Sequence[Image.Image], prompt: str) -> list[np.ndarray]:
        """Per image an (h, w) float32 array in [0, 1] at :func:`working_size` (the image's own size up to 1024 px):
        how much each pixel is ``prompt`` (sigmoid of CLIPSeg's logits, bilinearly resized from its view)."""
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
            width, height = working_size(image.width, image.height)
            scaled = F.interpolate(row[None], size=(height, width), mode="bilinear", align_corners=False)
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


def binary_mask(probability: np.ndarray, threshold: float, expand: int, size: tuple[int, int] | None = None
                ) -> Image.Image:
    """White where ``probability`` > ``threshold``, grown by ``expand`` pixels (of the array) in every direction
    (a square of side 2 * expand + 1, as two 1-D max filters: the cost grows with expand, not its square), black
    elsewhere; an L image of ``size`` (W, H; default the array's), resized from the array by nearest neighbour."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    inside = torch.from_numpy(probability > threshold).float()[None, None]
    if expand > 0:
        inside = F.max_pool2d(inside, kernel_size=(1, 2 * expand + 1), stride=1, padding=(0, expand))
        inside = F.max_pool2d(inside, kernel_size=(2 * expand + 1, 1), stride=1, padding=(expand, 0))
    mask = Image.fromarray((inside[0, 0].numpy() * 255).astype(np.uint8), mode="L")
    return mask if size is None or mask.size == tuple(size) else mask.resize(size, Image.Resampling.NEAREST)


def empty_mask(path: Path) -> bool:
    """Whether the mask file at ``path`` is empty (:func:`sdtune.data.masks.is_empty`), read as training reads it
    (a transparent cut-out by its alpha); unreadable counts as not."""
    from sdtune.data.masks import is_empty, read_mask_file

    try:
        return is_empty(read_mask_file(path))
    except DataError:
        return False


@dataclass
class MaskReport:
    """What :func:`write_masks` did: masks written, kept (already there), images whose mask came out empty, and
    images that could not be read (skipped)."""

    out: Path
    written: int = 0
    kept: int = 0
    empty: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    # masks of another format with a new mask's name (me1.jpg beside the new me1.png): kept, never read again
    # (the PNG is read first), so the command names them
    shadowed: list[Path] = field(default_factory=list)


def masks_to_make(images: Sequence[Path], out: Path, overwrite: bool = False) -> list[Path]:
    """The images that need a mask in ``out``: all with ``overwrite``; else those without one, or whose mask there
    is empty (an all-black mask teaches nothing and training refuses it: made again, e.g. at a lower threshold).

    DataError when two images share a stem (their masks would share a file: ``data.mask_dir`` matches by stem)."""
    from sdtune.data.masks import mask_file

    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            raise DataError(f"{image} and {by_stem[image.stem]} share the name {image.stem!r}: a mask folder "
                            "matches masks to images by name, so rename one")
        by_stem[image.stem] = image
    if overwrite or not out.is_dir():
        return list(images)
    todo = []
    for image in images:
        found = mask_file(image, out)
        if found is None or empty_mask(found):
            todo.append(image)
    return todo


def write_masks(images: Sequence[Path], out: Path, prompt: str, segmenter: Segmenter, *, threshold: float = 0.3,
                expand: int = 10, overwrite: bool = False, progress: bool = True,
                todo: Sequence[Path] | None = None) -> MaskReport:
    """A mask per image of :func:`masks_to_make` in ``out`` (``<stem>.png``), a batch at a time through CLIPSeg;
    others are kept (a hand-drawn one is never lost). ``expand``: pixels of the photo. Each file is written whole
    (a temporary name, then renamed); an image that cannot be read is skipped and named in the report. ``todo``:
    :func:`masks_to_make`'s answer when the caller has it already (the command asks before loading the model)."""
    from tqdm.auto import tqdm

    from sdtune.data.images import load_rgb
    from sdtune.data.masks import is_empty, mask_files

    segmenter.check_prompt(prompt)
    todo = list(masks_to_make(images, out, overwrite) if todo is None else todo)
    report = MaskReport(out, kept=len(images) - len(todo))
    with tqdm(total=len(todo), desc=f"masks ({prompt!r})", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), segmenter.batch_size):
            loaded = []
            for path in todo[start:start + segmenter.batch_size]:
                try:
                    loaded.append((path, load_rgb(path)))
                except DataError as exc:
                    report.unreadable.append((path, str(exc)))
                    bar.update(1)
            if not loaded:
                continue
            scores = segmenter.probabilities([image for _, image in loaded], prompt)
            for (path, image), probability in zip(loaded, scores, strict=True):
                scale = probability.shape[1] / image.width
                grow = max(1, round(expand * scale)) if expand > 0 else 0
                mask = binary_mask(probability, threshold, grow, image.size)
                out.mkdir(parents=True, exist_ok=True)
                target = out / f"{path.stem}.png"  # read before a mask of another format with that name
                partial = target.with_name(f".{target.name}.partial")
                mask.save(partial, format="PNG")
                os.replace(partial, target)
                report.written += 1
                report.shadowed += [other for other in mask_files(path, out)  # samefile: x.PNG is x.png on macOS
                                    if not other.samefile(target)]
                if is_empty(mask):
                    report.empty.append(path)
                bar.update(1)
    return report
