"""Auto-captioning with a transformers image-to-text model (BLIP and its kin), for images that have no caption.

The model is a hub id or a local folder holding a processor and a generative vision-to-text model
(``AutoProcessor`` + ``AutoModelForImageTextToText``: BLIP, BLIP-2, GIT, ...). A template wraps each caption
so the trigger word stays in front: ``"a photo of sks person, {caption}"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from sdtune.errors import ModelLoadError

DEFAULT_TEMPLATE = "{caption}"


def apply_template(template: str, caption: str) -> str:
    """Fill ``{caption}``; a template without the placeholder is a prefix (``"sks person, "`` + caption)."""
    if "{caption}" in template:
        return template.replace("{caption}", caption).strip()
    return f"{template}{caption}".strip()


class Captioner:
    """Caption PIL images in batches on CPU or GPU; loading errors become one clear ModelLoadError."""

    def __init__(self, model: str | Path, *, device: str | None = None, batch_size: int = 8,
                 max_new_tokens: int = 30, template: str = DEFAULT_TEMPLATE) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.template = template
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        source = str(model)
        local = Path(source).expanduser().exists()
        if not local and source.startswith((".", "/", "~", "\\")):
            raise ModelLoadError(f"captioning model folder {source} does not exist")
        if local:
            source = str(Path(source).expanduser())
        try:
            self.processor = AutoProcessor.from_pretrained(source, local_files_only=local)
            self.model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError, KeyError) as exc:
            where = "local folder" if local else "hub id (needs network or the hub cache)"
            raise ModelLoadError(
                f"cannot load captioning model {source!r} as a {where}: {str(exc).splitlines()[0].rstrip('.')}. "
                "Give a BLIP-style image-to-text model, e.g. Salesforce/blip-image-captioning-base, or its folder"
            ) from None
        self.model.to(self.device).eval()

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """Captions for a batch of RGB images, template applied."""
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        texts = self.processor.batch_decode(tokens, skip_special_tokens=True)
        return [apply_template(self.template, " ".join(text.split())) for text in texts]

    def caption_files(self, paths: Iterable[Path], *, progress: bool = True) -> list[str]:
        """Caption image files, a batch at a time (bounded memory), with a progress bar."""
        from sdtune.data.images import load_rgb

        paths = list(paths)
        out: list[str] = []
        with tqdm(total=len(paths), desc="captioning", unit="img", disable=not progress) as bar:
            for start in range(0, len(paths), self.batch_size):
                batch = paths[start : start + self.batch_size]
                out += self.caption([load_rgb(p) for p in batch])
                bar.update(len(batch))
        return out
