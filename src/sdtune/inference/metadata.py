"""Generation parameters stored inside each PNG, the way AUTOMATIC1111 does it.

A PNG that carries its own prompt, seed and sampler can be reproduced later and read by other tools (A1111's
"PNG Info" tab, ComfyUI, civitai). We write the A1111 ``parameters`` text chunk and, beside it, an ``sdtune``
chunk with the same values as JSON so that our own tools never have to parse free text.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdtune.models.samplers import SAMPLER_NAMES


@dataclass
class GenerationParams:
    """All that is needed to regenerate one image (given the same model)."""

    prompt: str
    seed: int
    steps: int
    guidance: float
    scheduler: str
    width: int
    height: int
    negative_prompt: str = ""
    model: str = ""
    adapters: list[tuple[str, float]] = field(default_factory=list)

    def a1111_text(self) -> str:
        """The A1111 ``parameters`` text: prompt, optional negative prompt line, then ``Key: value`` pairs."""
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {self.negative_prompt}")
        pairs = [
            ("Steps", self.steps),
            ("Sampler", SAMPLER_NAMES.get(self.scheduler, self.scheduler)),
            ("CFG scale", _num(self.guidance)),
            ("Seed", self.seed),
            ("Size", f"{self.width}x{self.height}"),
            ("Model", self.model),
        ]
        if self.adapters:
            pairs.append(("Lora", ", ".join(f"{Path(p).name}: {_num(w)}" for p, w in self.adapters)))
        pairs.append(("Version", "sdtune"))
        lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs if v != ""))
        return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:g}"


def _quote(value: Any) -> str:
    text = str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text)
    return text


def save_png(image: Image.Image, path: Path, params: GenerationParams) -> Path:
    """Save atomically (a crash never leaves a half PNG that a cache would trust) with parameters embedded."""
    info = PngInfo()
    info.add_text("parameters", params.a1111_text())
    info.add_text("sdtune", json.dumps(asdict(params)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)
    return path


_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_a1111(text: str) -> dict[str, Any]:
    """Parse an A1111 ``parameters`` text into ``{"prompt", "negative_prompt", <Key>: <value>...}``."""
    lines = text.strip().split("\n")
    last = lines[-1] if len(_PAIR.findall(lines[-1])) >= 3 else None
    body = lines[:-1] if last is not None else lines
    prompt, negative, in_negative = [], [], False
    for line in body:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in _PAIR.findall(last or ""):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = json.loads(value)
        out[key.strip()] = value
    return out


def read_png_parameters(path: Path) -> dict[str, Any]:
    """Read the generation parameters back: the sdtune JSON when present, else the parsed A1111 text."""
    with Image.open(path) as img:
        text = dict(getattr(img, "text", {}) or img.info)
    if "sdtune" in text:
        data = json.loads(text["sdtune"])
        data["parameters"] = text.get("parameters", "")
        return data
    if "parameters" in text:
        return parse_a1111(text["parameters"])
    return {}
