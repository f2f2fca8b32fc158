"""Auto-captioning with a transformers vision-language model: Florence-2 (default), Llava chat models such as
JoyCaption, and BLIP.

The model is a hub id, a short name (``florence-2``, ``joycaption``, ...) or a local folder holding
``config.json``, the weights and the processor files. Its ``config.json`` decides how it is driven: the
``architectures`` entry (or, without one, ``model_type``) picks a row of :data:`CAPTIONERS`, one class per way of
asking a model for a caption:

* Florence-2 (``Florence2ForConditionalGeneration``, the converted ``florence-community/*`` weights that
  transformers runs natively): a task prompt, ``<CAPTION>``, ``<DETAILED_CAPTION>`` (default: fits CLIP's 77
  tokens) or ``<MORE_DETAILED_CAPTION>`` (a paragraph), beam search (3 beams) as Microsoft's examples.
* Chat models (``LlavaForConditionalGeneration``: JoyCaption and other Llava checkpoints): an instruction rendered
  through the processor's chat template with a system line, greedy decoding, the prompt tokens cut off.
* Image-to-text models (BLIP, BLIP-2, GIT): the image alone, or a text the caption continues (``"a photo of"``).

Loading and architecture errors are one :class:`~sdtune.errors.ModelLoadError` line naming the model and the
supported architectures. Captions are returned as the model wrote them (whitespace collapsed); templates, modes and
trigger words are applied by :mod:`sdtune.data.caption_modes`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image
from tqdm.auto import tqdm

from sdtune.errors import ModelLoadError, note_once

DEFAULT_CAPTIONER = "florence-community/Florence-2-base"
SHORT_NAMES = {
    "florence-2": DEFAULT_CAPTIONER,  # 0.23 B parameters, ~0.5 GB in bf16
    "florence-2-large": "florence-community/Florence-2-large",  # 0.77 B, ~1.5 GB
    "joycaption": "fancyfeast/llama-joycaption-beta-one-hf-llava",  # 8 B (Llama 3.1 + SigLIP), ~17 GB in bf16
    "blip": "Salesforce/blip-image-captioning-base",
}
DTYPES = ("auto", "bf16", "fp16", "fp32")


class Captioner:
    """Caption PIL images in batches: ``inputs`` builds the model's inputs, ``decode`` reads its output tokens."""

    kind: ClassVar[str] = "image-to-text"
    example: ClassVar[str] = "blip: Salesforce/blip-image-captioning-base"
    default_prompt: ClassVar[str | None] = None
    default_max_new_tokens: ClassVar[int] = 40
    generate_kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(self, processor: Any, model: Any, *, name: str, device: str, dtype: Any, batch_size: int = 8,
                 max_new_tokens: int | None = None, prompt: str | None = None) -> None:
        self.processor, self.model, self.name = processor, model, name
        self.device, self.dtype = device, dtype
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens
        self.prompt = self.default_prompt if prompt is None else prompt
        self.check_prompt()

    def check_prompt(self) -> None:
        """Refuse a prompt this kind of model cannot take (ModelLoadError), before any image is read."""

    def inputs(self, images: list[Image.Image]) -> Any:
        text = [self.prompt] * len(images) if self.prompt else None
        return self.processor(images=images, text=text, return_tensors="pt")

    def decode(self, tokens: Any, inputs: Any) -> list[str]:
        return self.processor.batch_decode(tokens, skip_special_tokens=True)

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        """The model's caption of each RGB image, whitespace collapsed."""
        import torch

        inputs = self.inputs(list(images)).to(self.device)
        inputs = {k: v.to(self.dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **self.generate_kwargs)
        return [" ".join(text.split()) for text in self.decode(tokens, inputs)]

    def caption_files(self, paths: Iterable[Path], *, progress: bool = True) -> list[str]:
        """Caption image files, a batch at a time (bounded memory), with a progress bar over images."""
        from sdtune.data.images import load_rgb

        paths = list(paths)
        out: list[str] = []
        with tqdm(total=len(paths), desc=f"captioning ({self.kind})", unit="img", disable=not progress) as bar:
            for start in range(0, len(paths), self.batch_size):
                batch = paths[start : start + self.batch_size]
                out += self.caption([load_rgb(p) for p in batch])
                bar.update(len(batch))
        return out


class Florence2Captioner(Captioner):
    """Florence-2: one task token per image; the processor expands it into the task's question."""

    kind = "Florence-2"
    example = f"florence-2: {DEFAULT_CAPTIONER}"
    TASKS: ClassVar[tuple[str, ...]] = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
    default_prompt = "<DETAILED_CAPTION>"
    default_max_new_tokens = 256
    generate_kwargs = {"num_beams": 3}

    def check_prompt(self) -> None:
        if self.prompt not in self.TASKS:
            raise ModelLoadError(f"Florence-2 ({self.name}) captions with a task prompt: {', '.join(self.TASKS)}; "
                                 f"got --prompt {self.prompt!r}")


class ChatCaptioner(Captioner):
    """Llava-style chat models (JoyCaption): the instruction goes through the chat template with the image."""

    kind = "chat"
    example = "joycaption: fancyfeast/llama-joycaption-beta-one-hf-llava"
    SYSTEM: ClassVar[str] = "You are a helpful image captioner."
    default_prompt = "Write a descriptive caption for this image in a formal tone within 50 words."
    default_max_new_tokens = 120

    def check_prompt(self) -> None:
        if not self.prompt:
            raise ModelLoadError(f"chat model {self.name} needs an instruction (--prompt)")
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt in every row
        self.chat_text = self._render()

    def _render(self) -> str:
        """The conversation as text, with the image placeholder where the template puts it.

        JoyCaption's template inserts the image into a plain-text user turn; Llava-hf templates want an image
        part in the content list. The first rendering that carries the processor's image token is used.
        """
        token = getattr(self.processor, "image_token", "<image>")
        for content in (self.prompt, [{"type": "image"}, {"type": "text", "text": self.prompt}]):
            chat = [{"role": "system", "content": self.SYSTEM}, {"role": "user", "content": content}]
            try:
                text = self.processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001  a template that refuses this shape (jinja raises its own errors)
                continue
            if isinstance(text, str) and token in text:
                return text
        raise ModelLoadError(f"chat model {self.name}: its processor has no chat template that places an image "
                             f"({token}); give a Llava checkpoint with chat_template.jinja, such as JoyCaption")

    def inputs(self, images: list[Image.Image]) -> Any:
        return self.processor(images=images, text=[self.chat_text] * len(images), return_tensors="pt")

    def decode(self, tokens: Any, inputs: Any) -> list[str]:
        new = tokens[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)


# config.json's architecture -> how to caption with it. transformers' image-text-to-text auto class loads each.
CAPTIONERS: dict[str, type[Captioner]] = {
    "Florence2ForConditionalGeneration": Florence2Captioner,
    "LlavaForConditionalGeneration": ChatCaptioner,
    "BlipForConditionalGeneration": Captioner,
    "Blip2ForConditionalGeneration": Captioner,
    "GitForCausalLM": Captioner,
}
SUPPORTED = "; ".join(
    f"{', '.join(a for a, c in CAPTIONERS.items() if c is kind)} ({kind.kind}, e.g. {kind.example})"
    for kind in dict.fromkeys(CAPTIONERS.values()))


def load_captioner(model: str | Path, *, device: str | None = None, dtype: str = "auto", batch_size: int = 8,
                   max_new_tokens: int | None = None, prompt: str | None = None) -> Captioner:
    """The captioner for ``model`` (hub id, short name or folder), on ``device`` (default: cuda when present).

    ``dtype`` ``auto``: bf16 on a GPU that supports it, else fp32. Raises ModelLoadError (one line) for a missing
    folder, an unreachable hub id, an architecture outside :data:`CAPTIONERS`, or weights that do not load.
    """
    from transformers import AutoModelForImageTextToText

    source, local = resolve_model(model, SHORT_NAMES)
    config = read_model_config(source, local)
    arch = _architecture(config, source)
    processor, net, device, torch_dtype = load_pretrained(source, local, AutoModelForImageTextToText, device=device,
                                                          dtype=dtype, what="captioning model", note=f" ({arch})")
    return CAPTIONERS[arch](processor, net, name=source, device=device, dtype=torch_dtype, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, prompt=prompt)


def load_pretrained(source: str, local: bool, model_class: Any, *, device: str | None, dtype: str, what: str,
                    note: str = "") -> tuple[Any, Any, str, Any]:
    """(processor, model in eval mode on ``device``, the device, the torch dtype) for a transformers model folder or
    hub id; ``device`` None: cuda when present; ``dtype`` as :func:`torch_dtype_for`. One ModelLoadError line
    naming ``what`` (and ``note`` after the source) when the device is absent or the files do not load."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoProcessor

    from sdtune.models.refs import hub_reachable

    local = local or not hub_reachable()  # a cached hub id, offline: no retries
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"{what.split()[0]} device {device!r}: no CUDA GPU is visible here; use --device cpu")
    torch_dtype = torch_dtype_for(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local)
        net = model_class.from_pretrained(source, local_files_only=local, dtype=torch_dtype)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot load {what} {source!r}{note}: {first_line(exc)}") from None
    net.to(device).eval()
    return processor, net, device, torch_dtype


def resolve_model(model: str | Path, short_names: dict[str, str], what: str = "captioning model"
                  ) -> tuple[str, bool]:
    """(hub id or folder path, whether it is a local folder); short names (``short_names``) become their hub ids.
    ModelLoadError for a path-like name that does not exist (``what``: the model's role, for the message)."""
    source = short_names.get(str(model).lower(), str(model))
    if source != str(model) and Path(str(model)).expanduser().exists():
        note_once(f"note: {model} is the short name of {source}; the folder {model} here is not used (pass "
                  f"./{model} for it)")
    path = Path(source).expanduser()
    if path.exists():
        return str(path), True
    if source.startswith((".", "/", "~", "\\")) or source.count("/") > 1:
        raise ModelLoadError(f"{what} folder {source} does not exist")
    return source, False


def read_model_config(source: str, local: bool, what: str = "captioning model", supported: str = SUPPORTED
                      ) -> dict[str, Any]:
    """The model's config.json as a dict (from the folder, or the hub / its cache); one ModelLoadError line naming
    ``what`` and the ``supported`` architectures otherwise."""
    where = "local folder" if local else "hub id (needs network or the hub cache)"
    try:
        if local:
            path = Path(source) / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            from sdtune.models.refs import hub_reachable

            path = Path(hf_hub_download(source, "config.json", local_files_only=not hub_reachable()))
        config = json.loads(path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001  missing file, offline hub, bad JSON: all one line for the user
        offline = "" if local else (f". Without network here: download it once where the hub is reachable "
                                    f"(huggingface-cli download {source}) and pass that folder")
        raise ModelLoadError(f"cannot load {what} {source!r} as a {where}: {first_line(exc)}{offline}. It needs a "
                             f"config.json, the weights and the processor files; supported architectures: "
                             f"{supported}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"cannot load {what} {source!r}: its config.json is not a JSON object")
    return config


def _architecture(config: dict[str, Any], source: str) -> str:
    """The row of CAPTIONERS: ``architectures`` first, else the class transformers maps ``model_type`` to."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = str(config.get("model_type", ""))
    text = config.get("text_config")
    text_type = text.get("model_type") if isinstance(text, dict) else None
    if model_type == "florence2" and text_type not in (None, "bart"):  # the original's florence2_language text half
        raise ModelLoadError(f"captioning model {source!r} is Microsoft's remote-code Florence-2, which transformers "
                             "5 no longer runs; use the converted weights, e.g. florence-community/Florence-2-base "
                             "(or -large)")
    names = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    names.append(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(model_type, ""))
    for name in names:
        if name in CAPTIONERS:
            return name
    found = ", ".join(n for n in names if n) or "none"
    raise ModelLoadError(f"cannot load captioning model {source!r}: its config.json names architecture {found} "
                         f"(model_type {model_type or 'missing'}); supported architectures: {SUPPORTED}")


def torch_dtype_for(name: str, device: str) -> Any:
    """``auto``: bf16 on a GPU that supports it, else fp32; or the named dtype (ModelLoadError for others)."""
    import torch

    if name not in DTYPES:
        raise ModelLoadError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    if name == "auto":
        gpu = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if gpu else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, without the library's advice about ``local_files_only`` (a keyword
    of its API that no sdtune option sets)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    kept = [sentence for sentence in line.split(". ") if "local_files_only" not in sentence]
    return ". ".join(kept).rstrip(". ") or type(exc).__name__
