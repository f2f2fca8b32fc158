"""What a finished run leaves behind (DESIGN.md layout): RUN/lora, RUN/model, RUN/README.md, RUN/metrics.json.

Each output folder is written under a temporary name and renamed into place, so a crash while saving never
leaves a folder that loads half a model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdtune.atomic import atomic_write_json, write_folder
from sdtune.config import RunConfig
from sdtune.models.lora import LORA_WEIGHTS, save_lora


def inference_scheduler(source: str):
    """The base model's own inference scheduler (class and config from its folder)."""
    import diffusers
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(source)
    class_name = index.get("scheduler", [None, "DDIMScheduler"])[1]
    return getattr(diffusers, class_name).from_pretrained(source, subfolder="scheduler")


def save_lora_output(run_dir: Path, cfg: RunConfig, unet, text_encoder) -> Path:
    assert cfg.train.lora is not None
    write_folder(run_dir / "lora", lambda tmp: save_lora(tmp, unet, text_encoder, cfg.train.lora))
    return run_dir / "lora" / LORA_WEIGHTS


def save_full_model(run_dir: Path, comps, unet, text_encoder) -> Path:
    """Save a diffusers pipeline folder with the trained UNet / text encoder."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=comps.vae.to(torch.float32), text_encoder=text_encoder.to(torch.float32),
                                   tokenizer=comps.tokenizer, unet=unet.to(torch.float32),
                                   scheduler=inference_scheduler(comps.source), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return write_folder(run_dir / "model", lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))


def save_fused_model(run_dir: Path, cfg: RunConfig) -> Path:
    """A full pipeline with the run's LoRA fused into the base weights (for tools that take no LoRA)."""
    from sdtune.models.loading import load_pipeline

    pipe = load_pipeline(cfg.model.base, allow_pickle=cfg.model.allow_pickle)
    pipe.load_lora_weights(str(run_dir / "lora"), weight_name=LORA_WEIGHTS)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return write_folder(run_dir / "model", lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True))


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_json(run_dir / "metrics.json", metrics)


def write_model_card(run_dir: Path, cfg: RunConfig, metrics: dict, num_images: int) -> None:
    data = cfg.data
    prompt = data.instance_prompt or (cfg.validation.prompts[0] if cfg.validation.prompts else "")
    lines = [
        f"# {run_dir.name}",
        "",
        f"Trained with [sdtune](https://pypi.org/project/sdtune/): **{cfg.method}** on base model `{cfg.model.base}`.",
        "",
        "| | |",
        "|---|---|",
        f"| method | {cfg.method} |",
        f"| training images | {num_images} |",
        f"| steps | {metrics.get('steps')} |",
        f"| final loss | {metrics.get('final_loss')} |",
        f"| resolution | {data.resolution} |",
        f"| learning rate | {cfg.train.learning_rate} |",
    ]
    if cfg.train.lora is not None:
        lines.append(f"| LoRA rank / alpha | {cfg.train.lora.rank} / {cfg.train.lora.alpha or cfg.train.lora.rank} |")
    if data.instance_prompt:
        lines.append(f"| instance prompt | `{data.instance_prompt}` |")
    if data.with_prior_preservation:
        lines.append(f"| class prompt | `{data.class_prompt}` (prior loss weight {data.prior_loss_weight}) |")
    lines += ["", "## Use it", "", "```python", "from diffusers import StableDiffusionPipeline", "",
              f'pipe = StableDiffusionPipeline.from_pretrained("{cfg.model.base}")']
    if cfg.train.lora is not None:
        lines.append(f'pipe.load_lora_weights("{run_dir / "lora"}")')
    else:
        lines[-1] = f'pipe = StableDiffusionPipeline.from_pretrained("{run_dir / "model"}")'
    lines += [f'image = pipe("{prompt}").images[0]', "```", "",
              f"Or: `sdtune generate {run_dir} --prompt \"{prompt}\"`. Resume state is in `checkpoints/`, the exact "
              "config in `config.yaml`.", ""]
    (run_dir / "README.md").write_text("\n".join(lines), encoding="utf-8")
