"""The judge: a small CNN that says what a toy image shows (colours, shape, pattern), with a known accuracy.

Why not the toy CLIP: its image-image similarity saturates and its shape zero-shot is weaker; a classifier
trained on the wide world (patterns and the held-out glyph included) reads attributes directly. Colours are
multi-label (a checkered star has two), shape and pattern single-label.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from sdtune.toy.vae import autocast, warmup_cosine
from sdtune.toy.world import ALL_SHAPES, COLOURS, PATTERNS, RESOLUTION, Scene, to_model_input

COLOUR_NAMES = list(COLOURS)


class Judge(torch.nn.Module):
    """Four stride-2 conv stages (32 -> 2 px), global pooling, three heads."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 3, width * 4]
        layers: list[torch.nn.Module] = []
        for cin, cout in zip(chans, chans[1:], strict=False):
            layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.GroupNorm(8, cout), torch.nn.SiLU(),
                       torch.nn.Conv2d(cout, cout, 3, stride=2, padding=1), torch.nn.SiLU()]
        self.features = torch.nn.Sequential(*layers)
        self.colour = torch.nn.Linear(chans[-1], len(COLOUR_NAMES))
        self.shape = torch.nn.Linear(chans[-1], len(ALL_SHAPES))
        self.pattern = torch.nn.Linear(chans[-1], len(PATTERNS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(x).mean((2, 3))
        return self.colour(h), self.shape(h), self.pattern(h)


@dataclass(frozen=True)
class Verdict:
    """What the judge reads in one image."""

    colours: tuple[str, ...]  # colours with probability > 0.5, most likely first (at least one)
    shape: str
    pattern: str
    colour_probs: dict[str, float]
    shape_probs: dict[str, float]

    @property
    def colour(self) -> str:
        return self.colours[0]


def _targets(scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    colours = torch.zeros(len(scenes), len(COLOUR_NAMES))
    for i, s in enumerate(scenes):
        for c in s.colours():
            colours[i, COLOUR_NAMES.index(c)] = 1.0
    shapes = torch.tensor([ALL_SHAPES.index(s.shape) for s in scenes])
    patterns = torch.tensor([PATTERNS.index(s.pattern) for s in scenes])
    return colours, shapes, patterns


def train_judge(images: np.ndarray, scenes: list[Scene], steps: int, seed: int = 0, batch_size: int = 128,
                lr: float = 2e-3, bf16: bool = True, log: Callable[[str], None] = print) -> Judge:
    torch.manual_seed(seed)
    judge = Judge().train()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = warmup_cosine(opt, steps)
    gen = np.random.default_rng(seed)
    bar = tqdm(range(steps), desc="judge", unit="step", dynamic_ncols=True)
    for _ in bar:
        idx = gen.integers(0, len(images), batch_size)
        x = to_model_input(images[idx])
        x = x + 0.05 * torch.randn_like(x)  # generated images are a little noisy: do not depend on clean pixels
        colours, shapes, patterns = _targets([scenes[i] for i in idx])
        with autocast(bf16):
            c, s, p = judge(x)
        loss = (F.binary_cross_entropy_with_logits(c.float(), colours) * 4 + F.cross_entropy(s.float(), shapes)
                + F.cross_entropy(p.float(), patterns))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return judge.eval()


@torch.no_grad()
def judge_arrays(judge: Judge, images: np.ndarray, batch_size: int = 256) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for i in range(0, len(images), batch_size):
        c, s, p = judge(to_model_input(images[i:i + batch_size]))
        probs, shape_probs = torch.sigmoid(c), torch.softmax(s, 1)
        for row, sp, sh, pa in zip(probs, shape_probs, s.argmax(1).tolist(), p.argmax(1).tolist(), strict=True):
            order = row.argsort(descending=True).tolist()
            chosen = [COLOUR_NAMES[j] for j in order if row[j] > 0.5] or [COLOUR_NAMES[order[0]]]
            verdicts.append(Verdict(tuple(chosen), ALL_SHAPES[sh], PATTERNS[pa],
                                    {n: round(float(v), 3) for n, v in zip(COLOUR_NAMES, row, strict=True)},
                                    {n: round(float(v), 3) for n, v in zip(ALL_SHAPES, sp, strict=True)}))
    return verdicts


def judge_images(judge: Judge, images: Sequence[Image.Image]) -> list[Verdict]:
    """Judge PIL images of any size (resized to the world's resolution)."""
    arrays = np.stack([np.asarray(im.convert("RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.BOX))
                       for im in images]) if images else np.zeros((0, RESOLUTION, RESOLUTION, 3), np.uint8)
    return judge_arrays(judge, arrays)


def accuracy(judge: Judge, images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """Held-out accuracy: colour = primary colour is the top colour (solid) or both colours found (two-tone)."""
    verdicts = judge_arrays(judge, images)
    colour = [set(v.colours[:len(s.colours())]) == set(s.colours()) for v, s in zip(verdicts, scenes, strict=True)]
    shape = [v.shape == s.shape for v, s in zip(verdicts, scenes, strict=True)]
    pattern = [v.pattern == s.pattern for v, s in zip(verdicts, scenes, strict=True)]
    glyph = [v.shape == s.shape for v, s in zip(verdicts, scenes, strict=True) if s.shape == ALL_SHAPES[-1]]
    return {"colour": float(np.mean(colour)), "shape": float(np.mean(shape)), "pattern": float(np.mean(pattern)),
            "glyph_shape": float(np.mean(glyph)) if glyph else float("nan"), "images": len(scenes)}


def save_judge(judge: Judge, folder: Path, metrics: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    from sdtune.atomic import umask_mode

    save_file({k: v.half().contiguous() for k, v in judge.state_dict().items()}, str(folder / "judge.safetensors"))
    umask_mode(folder / "judge.safetensors")
    (folder / "judge.json").write_text(json.dumps({"colours": COLOUR_NAMES, "shapes": list(ALL_SHAPES),
                                                   "patterns": list(PATTERNS), "resolution": RESOLUTION,
                                                   "held_out_accuracy": metrics or {}}, indent=2))
    return folder


def load_judge(folder: Path) -> Judge:
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict({k: v.float() for k, v in load_file(str(folder / "judge.safetensors")).items()})
    return judge.eval()
