"""CLIP score (CLIP-T): how well an image matches its prompt, as ``100 * max(cos(image, text), 0)`` per image.

Scores are only comparable within one CLIP backbone (ViT-B/16 and ViT-L/14 give different numbers for the
same image), so every score carries the backbone's name. The arithmetic matches torchmetrics' ``CLIPScore``
image by image; unlike torchmetrics we clamp each image (not the mean) so the mean over seeds has a spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdtune.errors import SdtuneError
from sdtune.evaluation.compat import as_tensor
from sdtune.words import counted

DEFAULT_CLIP = "openai/clip-vit-base-patch16"  # the backbone the diffusers evaluation docs use
CLIP_T_SCALE = "100*max(cos,0)"
COSINE_SCALE = "cos [-1,1]"


def default_clip_for(model_ref: str) -> str:
    """The CLIP backbone ``sdtune eval`` uses for ``model_ref`` when the user passes no ``--clip``.

    Extend this for built-in models that ship their own small CLIP (the offline ``toy`` preset): the real
    ViT-B/16 needs a download, the toy model's own CLIP does not.
    """
    return str(toy_clip()) if _derives_from_toy(model_ref) else DEFAULT_CLIP


def toy_clip() -> Path:
    from sdtune.models.presets import toy_path

    return toy_path() / "clip"


def _derives_from_toy(ref: str, depth: int = 0) -> bool:
    """``toy`` itself, or a run (or a run's ``model/``) whose chain of bases leads back to it."""
    from sdtune.models.presets import toy_path
    from sdtune.run_folder import is_run_folder, read_run

    if ref == "toy":
        return True
    if depth > 5:
        return False
    path = Path(ref).expanduser()
    try:
        if path.resolve() == (toy_path() / "pipeline").resolve():
            return True
        if path.name == "model" and is_run_folder(path.parent):
            path = path.parent
        if is_run_folder(path):
            return _derives_from_toy(read_run(path).base, depth + 1)
    except (OSError, ValueError, SdtuneError):
        return False
    return False


def load_backbone(ref: str, *, kind: str = "clip", local_files_only: bool | None = None) -> tuple[Any, Any]:
    """Load ``(model, processor)`` from a local folder or a hub id, with an error that says what to pass instead.

    The local cache is tried first so that a cached hub id never touches the network.
    """
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor

    flag = "--clip" if kind == "clip" else "--dino"
    path = Path(ref).expanduser()
    looks_local = path.exists() or ref.startswith((".", "/", "~"))
    if looks_local and not (path / "config.json").is_file():
        raise SdtuneError(f"{ref}: not a model folder (no config.json). Pass {flag} with a folder written by "
                          "save_pretrained, or a hub id.")
    source = str(path) if looks_local else ref
    proc_cls = AutoProcessor if kind == "clip" else AutoImageProcessor
    from sdtune.models.refs import hub_cached, hub_reachable

    attempts = [True] if (looks_local or local_files_only) else ([True, False] if local_files_only is None else [False])
    if not looks_local and not hub_reachable():  # offline: the hub client would retry each file (~30 s) for nothing
        attempts = [True] if hub_cached(ref) else []  # (transformers 5 looks for an adapter online even then)
    error: Exception | None = None
    for offline in attempts:
        try:
            model = AutoModel.from_pretrained(source, local_files_only=offline)
            processor = proc_cls.from_pretrained(source, local_files_only=offline)
            return model.eval(), processor
        except (OSError, ValueError) as exc:
            error = exc
    what = "CLIP" if kind == "clip" else "DINO/ViT"
    raise SdtuneError(
        f"could not load the {what} backbone '{ref}': it is not in the local cache and the hub cannot be reached "
        f"({type(error).__name__ if error else 'offline'}). Pass {flag} PATH with a local folder (model + processor "
        f"saved with save_pretrained), or download it once with `huggingface-cli download {ref}`"
        + ("; offline, --clip toy scores with the built-in toy CLIP (meaningful on toy-model pictures only)."
           if kind == "clip" else ".")
    )


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)


class ClipScorer:
    """CLIP image and text embeddings (L2-normalised) and the per-image CLIP score."""

    def __init__(self, ref: str, device: str = "cpu", local_files_only: bool | None = None) -> None:
        self.name = ref
        self.device = device
        self.model, self.processor = load_backbone(ref, kind="clip", local_files_only=local_files_only)
        if not hasattr(self.model, "get_text_features"):
            raise SdtuneError(f"{ref} is not a CLIP-like model (it has no text tower); pass a CLIP model to --clip")
        self.model.to(device)
        text_config = getattr(self.model.config, "text_config", None)
        self.max_tokens = int(getattr(text_config, "max_position_embeddings", 77))

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """One normalised row per image (any size: the processor resizes and centre-crops like CLIP training)."""
        out = []
        image_processor = getattr(self.processor, "image_processor", self.processor)
        for i in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[i:i + batch_size]]
            pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            out.append(as_tensor(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        return _normalize(torch.cat(out)) if out else torch.empty(0)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """One normalised row per text; prompts longer than the text tower's context are truncated."""
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.processor(text=list(texts[i:i + batch_size]), return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_tokens)
            feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                 attention_mask=tok["attention_mask"].to(self.device))
            out.append(as_tensor(feats).float().cpu())
        return _normalize(torch.cat(out)) if out else torch.empty(0)

    def scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        """CLIP score of each image against its own prompt."""
        if len(images) != len(prompts):
            raise ValueError(f"{counted(len(images), 'image')} but {counted(len(prompts), 'prompt')}")
        return clip_t(self.image_embeddings(images), self.text_embeddings(prompts)).tolist()


def clip_t(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Row-wise ``100 * max(cos, 0)`` of normalised embeddings (the CLIP score of each image)."""
    return (100 * (image_emb * text_emb).sum(-1)).clamp(min=0)
