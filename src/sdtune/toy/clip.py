"""The toy CLIP: a 128-wide text tower and a 64-wide vision tower trained contrastively on the wide world.

Its text tower is the toy Stable Diffusion's (frozen) text encoder, as OpenAI's CLIP text tower is SD 1.x's;
the whole model is the default evaluation backbone (CLIP score) for the ``toy`` model. Why 128 wide: with a
64-wide text space a rank-4 LoRA on cross-attention moved every prompt at once (measured while planning).

Captions of a batch often describe the same thing ("a red circle" twice), so the contrastive targets are not
the identity: every caption that truly describes an image is a positive for it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sdtune.toy.tokenizer import MAX_LENGTH
from sdtune.toy.vae import autocast, warmup_cosine
from sdtune.toy.world import (
    ALL_SHAPES,
    COLOURS,
    NAMED,
    RESOLUTION,
    Scene,
    background_phrase,
    caption,
    named_scene,
    render_arrays,
    subject_phrase,
)

MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]  # pixels in [-1, 1], like the VAE's input


def build_clip(tokenizer):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, projection_dim=64)
    vision = CLIPVisionConfig(image_size=RESOLUTION, patch_size=4, hidden_size=64, intermediate_size=256,
                              num_hidden_layers=3, num_attention_heads=4, projection_dim=64)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64)
    return CLIPModel(config)


def text_encoder_from(clip):
    """The CLIP text tower as a standalone ``CLIPTextModel`` (what a diffusers pipeline expects)."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(clip.config.text_config)
    target = getattr(encoder, "text_model", encoder)  # transformers 5 flattened CLIPTextModel
    target.load_state_dict(clip.text_model.state_dict())
    return encoder.eval()


def _describes(scenes: list[Scene], texts: list[tuple[str, str | None]]) -> torch.Tensor:
    """M[i, j] = 1 when caption j is a true description of image i (subject or name matches, background if
    named)."""
    rows = []
    for scene in scenes:
        subjects, bg = {subject_phrase(scene), scene.name}, background_phrase(scene)
        rows.append([float(s in subjects and (b is None or b == bg)) for s, b in texts])
    return torch.tensor(rows)


def _caption_parts(scene: Scene, rng: random.Random) -> tuple[str, tuple[str, str | None]]:
    text = caption(scene, rng)
    bg = background_phrase(scene) if " on " in text else None
    called_by_name = scene.name is not None and f" {scene.name}" in text
    return text, (scene.name if called_by_name else subject_phrase(scene), bg)


def named_pool(seed: int, per_name: int = 64) -> tuple[list[Scene], np.ndarray]:
    """Renders of every named instance (:data:`~sdtune.toy.world.NAMED`), mixed into the CLIP's batches."""
    rng = random.Random(seed + 101)
    pool = [named_scene(rng, name) for name in NAMED for _ in range(per_name)]
    return pool, render_arrays(pool)


def train_clip(images: np.ndarray, scenes: list[Scene], tokenizer, steps: int, seed: int = 0,
               batch_size: int = 128, lr: float = 1e-3, bf16: bool = True, named_per_batch: int = 8,
               log: Callable[[str], None] = print):
    """Contrastive training with description-aware targets; returns the CLIP model (eval mode).

    ``named_per_batch`` images of each batch are named instances, so the CLIP learns rare names as words."""
    from sdtune.toy.world import to_model_input

    torch.manual_seed(seed)
    clip = build_clip(tokenizer).train()
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.05)
    sched = warmup_cosine(opt, steps)
    gen, rng = np.random.default_rng(seed), random.Random(seed)
    pool, pool_images = named_pool(seed)
    bar = tqdm(range(steps), desc="clip", unit="step", dynamic_ncols=True)
    for _ in bar:
        idx = gen.integers(0, len(images), batch_size - named_per_batch)
        named_idx = gen.integers(0, len(pool), named_per_batch)
        batch_scenes = [scenes[i] for i in idx] + [pool[i] for i in named_idx]
        batch_images = np.concatenate([images[idx], pool_images[named_idx]])
        texts, parts = zip(*(_caption_parts(s, rng) for s in batch_scenes), strict=True)
        # Padding to the longest caption is exact: causal attention never looks at later pads, and the pooled
        # output is read at the first end-of-text token.
        ids = tokenizer(list(texts), padding="longest", return_tensors="pt").input_ids
        target = _describes(batch_scenes, list(parts))
        with autocast(bf16):
            out = clip(input_ids=ids, pixel_values=to_model_input(batch_images))
        logits = out.logits_per_image.float()
        loss = (-(F.log_softmax(logits, 1) * target / target.sum(1, keepdim=True)).sum(1).mean()
                - (F.log_softmax(logits.t(), 1) * target.t() / target.t().sum(1, keepdim=True)).sum(1).mean()) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return clip.eval()


def features(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def zero_shot(clip, tokenizer, images: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """Zero-shot colour and shape accuracy over all "a {colour} {shape}" prompts (solid scenes only)."""
    from sdtune.toy.world import to_model_input

    pairs = [(c, s) for c in COLOURS for s in ALL_SHAPES]
    ids = tokenizer([f"a {c} {s}" for c, s in pairs], padding="longest", return_tensors="pt").input_ids
    text = F.normalize(features(clip.get_text_features(input_ids=ids)), dim=-1)
    keep = [i for i, s in enumerate(scenes) if s.pattern == "solid"]
    feats = clip.get_image_features(pixel_values=to_model_input(images[keep]))
    feats = F.normalize(features(feats), dim=-1)
    best = (feats @ text.t()).argmax(1).tolist()
    colour = np.mean([pairs[b][0] == scenes[i].colour for b, i in zip(best, keep, strict=True)])
    shape = np.mean([pairs[b][1] == scenes[i].shape for b, i in zip(best, keep, strict=True)])
    return {"colour": float(colour), "shape": float(shape), "images": len(keep), **name_metrics(clip, tokenizer)}


@torch.no_grad()
def name_metrics(clip, tokenizer, seed: int = 12345) -> dict[str, float]:
    """Does the CLIP know the rare names? ``names``: zero-shot accuracy of "a photo of {name}" on fresh renders
    of the named instances; ``sks_text_shift``: how far "sks" moves "a photo of sks blue star" from "a photo of a
    blue star" (text hidden states), relative to changing the colour word (1.0 = as far as a colour change)."""
    from sdtune.toy.world import to_model_input

    pool, images = named_pool(seed, per_name=16)
    names = list(NAMED)
    ids = tokenizer([f"a photo of {n}" for n in names], padding="longest", return_tensors="pt").input_ids
    text = F.normalize(features(clip.get_text_features(input_ids=ids)), dim=-1)
    feats = F.normalize(features(clip.get_image_features(pixel_values=to_model_input(images))), dim=-1)
    best = (feats @ text.t()).argmax(1).tolist()
    accuracy = float(np.mean([names[b] == s.name for b, s in zip(best, pool, strict=True)]))
    prompts = ["a photo of sks blue star", "a photo of a blue star", "a photo of a red star"]
    ids = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
    hidden = clip.text_model(input_ids=ids).last_hidden_state
    shift = (hidden[0] - hidden[1]).norm(dim=-1)[4:].mean() / (hidden[2] - hidden[1]).norm(dim=-1)[4:].mean()
    return {"names": accuracy, "sks_text_shift": float(shift)}


def save_clip(clip, tokenizer_folder: Path, folder: Path) -> Path:
    """Write model + tokenizer + image processor, so ``AutoModel``/``AutoProcessor`` load the folder offline."""
    import shutil

    from transformers import CLIPImageProcessor

    folder.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_folder / name, folder / name)
    CLIPImageProcessor(size={"shortest_edge": RESOLUTION}, crop_size={"height": RESOLUTION, "width": RESOLUTION},
                       image_mean=MEAN, image_std=STD, do_convert_rgb=True).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["processor_class"] = "CLIPProcessor"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder
