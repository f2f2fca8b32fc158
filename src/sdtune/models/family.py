"""Model families: everything that differs between Stable Diffusion 1.x/2.x and SDXL, behind one small interface.

The training loop, checkpoints, exact resume, caches and buckets are shared; a family only answers:

- which text encoders and tokenizers a model has, and how a prompt becomes UNet conditioning. SD: the last
  hidden states of one CLIP text encoder. SDXL (as diffusers' SDXL pipeline, its training scripts, kohya and
  OneTrainer all do it): the *penultimate* hidden states of both encoders (no final layer norm), concatenated
  (768 + 1280 = 2048 on the real model), plus the second encoder's projected pooled output (1280);
- the added conditioning: SDXL's ``time_ids`` = (original height, width, crop top, left, target height, width) per
  image, taken from the image's real resize and crop (``sdtune.data.transforms.Transform.crop_geometry``);
- the pipeline class (validation, class images, generate, saved models, LoRA files);
- the VAE's precision: SDXL's VAE overflows in fp16, so under fp16 it stays fp32 unless the VAE says it is
  fp16-safe (``force_upcast: false`` in its config, as the fp16-fix VAE has; pass one with ``model.vae``).

SDXL's two text encoders are held as ONE module (:class:`DualTextEncoder`, children ``text_encoder`` and
``text_encoder_2``) with one tokenizer object (:class:`DualTokenizer`: ids of shape (2, L) per prompt), so the loop,
LoRA injection (one target list matches both encoders), checkpoints and caches see one text encoder as with SD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch


@dataclass
class TextConditioning:
    """What a prompt gives the UNet: hidden states (B, L, D) and, on SDXL, the pooled embedding (B, P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None


class DualTextEncoder(torch.nn.Module):
    """SDXL's CLIP-L (``text_encoder``) and OpenCLIP-bigG with projection (``text_encoder_2``) as one module.

    ``forward(input_ids)`` takes ids (B, 2, L) (row 0 for the first tokenizer, row 1 for the second) and returns
    ``(hidden (B, L, D1 + D2), pooled (B, P))``: penultimate hidden states of both, concatenated, and the second
    encoder's ``text_embeds``, as ``StableDiffusionXLPipeline.encode_prompt`` computes them (``clip_skip=None``).
    """

    def __init__(self, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(self, input_ids: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ARG002
        first = self.text_encoder(input_ids[:, 0], output_hidden_states=True)
        second = self.text_encoder_2(input_ids[:, 1], output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return hidden, second.text_embeds

    def gradient_checkpointing_enable(self) -> None:
        self.text_encoder.gradient_checkpointing_enable()
        self.text_encoder_2.gradient_checkpointing_enable()

    @property
    def hidden_size(self) -> int:
        return int(self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size)

    @property
    def pooled_size(self) -> int:
        return int(self.text_encoder_2.config.projection_dim)


class DualTokenizer:
    """SDXL's two CLIP tokenizers answering as one: ``tok(prompt, ...).input_ids`` is (1, 2, L)."""

    def __init__(self, tokenizer: Any, tokenizer_2: Any):
        self.tokenizer, self.tokenizer_2 = tokenizer, tokenizer_2
        self.model_max_length = int(tokenizer.model_max_length)

    def __call__(self, text: str, **kwargs: Any) -> SimpleNamespace:
        ids = [tok(text, **kwargs).input_ids for tok in (self.tokenizer, self.tokenizer_2)]
        return SimpleNamespace(input_ids=torch.stack([torch.as_tensor(i) for i in ids], dim=1))

    def __len__(self) -> int:
        return len(self.tokenizer)


def _dtype(kw: dict[str, Any]) -> dict[str, Any]:
    """``dtype=`` (None: fp32) as transformers' keyword."""
    return {**kw, "dtype": kw.get("dtype") or torch.float32}


class Family:
    """Stable Diffusion 1.x / 2.x: one CLIP text encoder, last hidden states, no added conditioning."""

    name = "sd"
    label = "Stable Diffusion 1.x/2.x"
    pipeline_class_name = "StableDiffusionPipeline"
    text_components: tuple[str, ...] = ("text_encoder",)

    def pipeline_class(self) -> Any:
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Extra keywords for ``from_pretrained`` / ``from_single_file`` / the constructor."""
        return {"safety_checker": None, "requires_safety_checker": False}

    def load_text(self, source: str, *, revision: str | None, local_files_only: bool, **kw: Any) -> tuple[Any, Any]:
        """(tokenizer, text encoder) of a diffusers folder or hub id on the CPU (``dtype=``: fp32 unless given)."""
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision,
                                                  local_files_only=local_files_only)
        return tokenizer, CLIPTextModel.from_pretrained(source, subfolder="text_encoder", revision=revision,
                                                        local_files_only=local_files_only, **_dtype(kw))

    def text_of(self, pipe: Any) -> tuple[Any, Any]:
        """(tokenizer, text encoder) of a loaded pipeline."""
        return pipe.tokenizer, pipe.text_encoder

    def text_parts(self, text_encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Pipeline component name -> module, for the (possibly trained) text encoder of a run."""
        return {"text_encoder": text_encoder}

    def assemble(self, *, vae: Any, unet: Any, scheduler: Any, tokenizer: Any, text_encoder: Any) -> Any:
        """A pipeline of this family from live modules (no copy)."""
        return self.pipeline_class()(vae=vae, unet=unet, scheduler=scheduler, **self._text_kwargs(tokenizer,
                                     text_encoder), feature_extractor=None, **self.pipeline_kwargs())

    def _text_kwargs(self, tokenizer: Any, text_encoder: Any) -> dict[str, Any]:
        return {"tokenizer": tokenizer, "text_encoder": text_encoder}

    def encode(self, text_encoder: torch.nn.Module, input_ids: torch.Tensor) -> TextConditioning:
        """Conditioning of token ids (B, L) (SDXL: (B, 2, L)); gradients flow when the encoder trains."""
        return TextConditioning(text_encoder(input_ids, return_dict=False)[0])

    def text_shapes(self, text_encoder: torch.nn.Module, length: int) -> dict[str, tuple[int, ...]]:
        """Shape of one prompt's cached conditioning, per part (``hidden``, and ``pooled`` on SDXL)."""
        return {"hidden": (length, int(text_encoder.config.hidden_size))}

    def unet_kwargs(self, cond: TextConditioning, crop_geometry: torch.Tensor | None) -> dict[str, Any]:
        """Keyword arguments of the UNet's forward besides sample and timestep."""
        return {"encoder_hidden_states": cond.hidden}

    def vae_dtype(self, vae: torch.nn.Module, compute: torch.dtype) -> torch.dtype:
        """The dtype the frozen VAE is kept in under mixed precision ``compute``."""
        return compute

    def lora_components(self, text_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """A text-encoder LoRA state (peft names, relative to the run's text module), per pipeline component."""
        return {"text_encoder": text_state} if text_state else {}


class SDXLFamily(Family):
    """SDXL base: two text encoders (see the module docstring), ``text_time`` added conditioning."""

    name = "sdxl"
    label = "SDXL"
    pipeline_class_name = "StableDiffusionXLPipeline"
    text_components = ("text_encoder", "text_encoder_2")

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"add_watermarker": False}  # the watermarker needs invisible-watermark, and changes pixels

    def load_text(self, source: str, *, revision: str | None, local_files_only: bool, **kw: Any) -> tuple[Any, Any]:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        common = {"revision": revision, "local_files_only": local_files_only}
        toks = [CLIPTokenizer.from_pretrained(source, subfolder=sub, **common) for sub in ("tokenizer", "tokenizer_2")]
        first = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **common, **_dtype(kw))
        second = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **common, **_dtype(kw))
        return DualTokenizer(*toks), DualTextEncoder(first, second)

    def text_of(self, pipe: Any) -> tuple[Any, Any]:
        return (DualTokenizer(pipe.tokenizer, pipe.tokenizer_2), DualTextEncoder(pipe.text_encoder,
                                                                                  pipe.text_encoder_2))

    def text_parts(self, text_encoder: torch.nn.Module) -> dict[str, torch.nn.Module]:
        return {"text_encoder": text_encoder.text_encoder, "text_encoder_2": text_encoder.text_encoder_2}

    def _text_kwargs(self, tokenizer: Any, text_encoder: Any) -> dict[str, Any]:
        return {"tokenizer": tokenizer.tokenizer, "tokenizer_2": tokenizer.tokenizer_2,
                "text_encoder": text_encoder.text_encoder, "text_encoder_2": text_encoder.text_encoder_2}

    def encode(self, text_encoder: torch.nn.Module, input_ids: torch.Tensor) -> TextConditioning:
        hidden, pooled = text_encoder(input_ids)
        return TextConditioning(hidden, pooled)

    def text_shapes(self, text_encoder: torch.nn.Module, length: int) -> dict[str, tuple[int, ...]]:
        return {"hidden": (length, text_encoder.hidden_size), "pooled": (text_encoder.pooled_size,)}

    def unet_kwargs(self, cond: TextConditioning, crop_geometry: torch.Tensor | None) -> dict[str, Any]:
        if cond.pooled is None or crop_geometry is None:
            raise ValueError("SDXL conditioning needs the pooled text embedding and each image's crop geometry")
        time_ids = crop_geometry.to(cond.hidden.device, torch.float32)
        return {"encoder_hidden_states": cond.hidden,
                "added_cond_kwargs": {"text_embeds": cond.pooled, "time_ids": time_ids}}

    def vae_dtype(self, vae: torch.nn.Module, compute: torch.dtype) -> torch.dtype:
        if compute == torch.float16 and bool(vae.config.get("force_upcast", True)):
            return torch.float32  # SDXL's VAE overflows (NaN images) in fp16; an fp16-fix VAE says force_upcast false
        return compute

    def lora_components(self, text_state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        out: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in text_state.items():
            component, _, rest = key.partition(".")
            out.setdefault(component, {})[rest] = value
        return out


SD = Family()
SDXL = SDXLFamily()
FAMILIES = {SD.name: SD, SDXL.name: SDXL}


def family_of_index(index: dict[str, Any]) -> Family:
    """The family a diffusers ``model_index.json`` describes (SDXL: it has ``text_encoder_2``)."""
    return SDXL if "text_encoder_2" in index or "XL" in str(index.get("_class_name", "")) else SD


def family_of_folder(folder: Path) -> Family:
    """The family of a local diffusers folder: ``text_encoder_2/`` or a UNet with ``text_time`` conditioning."""
    import json

    folder = Path(folder)
    if (folder / "text_encoder_2").is_dir():
        return SDXL
    for name in ("model_index.json", "unet/config.json"):
        file = folder / name
        if file.is_file():
            data = json.loads(file.read_text(encoding="utf-8"))
            if data.get("addition_embed_type") == "text_time" or family_of_index(data) is SDXL:
                return SDXL
    return SD


def family_of_checkpoint(file: Path) -> Family:
    """The family of a single-file (original-format) checkpoint, from its tensor names only (no weights read)."""
    from sdtune.models.safetensors_files import open_safetensors

    with open_safetensors(file) as handle:
        keys = list(handle.keys())
    return SDXL if any(k.startswith("conditioner.embedders.1.") for k in keys) else SD


def family_of_source(source: str, revision: str | None = None, local_files_only: bool = True) -> Family:
    """The family of a resolved model reference (folder, single file or hub id), reading configs only."""
    import json

    path = Path(source)
    if path.is_dir():
        return family_of_folder(path)
    if path.is_file():
        return family_of_checkpoint(path) if path.suffix.lower() == ".safetensors" else SD
    from huggingface_hub import hf_hub_download

    try:
        index = hf_hub_download(source, "model_index.json", revision=revision, local_files_only=local_files_only)
    except Exception:  # noqa: BLE001 - unreadable here: the loader reports it with the whole story
        return SD
    return family_of_index(json.loads(Path(index).read_text(encoding="utf-8")))


def base_generation(source: str, revision: str | None = None, local_files_only: bool = True) -> tuple[str, str | None]:
    """``("sd1" | "sd2" | "sdxl", the scheduler's prediction_type or None)`` of a resolved model reference, from
    configs or tensor names only. What other tools call the base's version (kohya's ``--v2``, AUTOMATIC1111's
    ``is_sd2``): SD 2.x has the OpenCLIP ViT-H text encoder, so its UNet's cross-attention is 1024 wide (SD 1.x:
    768; SDXL: 2048, told by its second text encoder). A reference whose configs cannot be read here is "sd1"."""
    import json

    path = Path(source)

    def config(name: str) -> dict:
        try:
            if path.is_dir():
                file = path / name
            else:
                from huggingface_hub import hf_hub_download

                file = Path(hf_hub_download(source, name, revision=revision, local_files_only=local_files_only))
            data = json.loads(file.read_text(encoding="utf-8"))
        except Exception:  # noqa: BLE001 - a config we cannot read says nothing; the defaults stand
            return {}
        return data if isinstance(data, dict) else {}

    if family_of_source(source, revision, local_files_only) is SDXL:
        kind = "sdxl"
    elif path.is_file():
        kind = "sd1"
        if path.suffix.lower() == ".safetensors":
            from sdtune.models.safetensors_files import open_safetensors

            with open_safetensors(path) as handle:  # SD 2.x checkpoints hold OpenCLIP: cond_stage_model.model.*
                kind = "sd2" if any(k.startswith("cond_stage_model.model.") for k in handle.keys()) else "sd1"
    else:
        kind = "sd2" if config("unet/config.json").get("cross_attention_dim") == 1024 else "sd1"
    prediction = None if path.is_file() else config("scheduler/scheduler_config.json").get("prediction_type")
    return kind, prediction
