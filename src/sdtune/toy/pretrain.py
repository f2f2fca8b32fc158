"""``sdtune toy pretrain OUT``: build the toy Stable Diffusion from nothing, reproducibly, on a CPU.

Order and why:
1. tokenizer from the world's words;
2. VAE, CLIP and judge on in-memory renders of the *wide* world (patterns and the held-out glyph included);
3. the UNet, text-conditioned latent diffusion from random weights on the *pretrain* world (base shapes, solid and
   two-tone; no glyph, never the person),
   trained by ``sdtune.training.loop.train`` - the very loop users fine-tune with (full fine-tuning of a
   random UNet, frozen CLIP text tower, caption dropout for classifier-free guidance, min-SNR, EMA);
4. the result: ``OUT/pipeline`` (diffusers folder, fp16 safetensors, DPM-Solver++ scheduler), ``OUT/clip``
   (CLIP model + processor), ``OUT/judge`` and ``OUT/pretrain.json`` with every measured number.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdtune.atomic import atomic_write_json, atomic_write_text
from sdtune.models.portable import save_pipeline
from sdtune.toy import world
from sdtune.toy.tokenizer import load_tokenizer, write_tokenizer
from sdtune.words import counted


@dataclass
class PretrainSettings:
    seed: int = 0
    wide_images: int = 8000  # in-memory renders for the VAE, CLIP and judge
    heldout_images: int = 1000
    pretrain_images: int = 16000  # PNG folder the UNet trains on through the training loop
    vae_steps: int = 1500
    clip_steps: int = 1500
    clip_batch: int = 64
    judge_steps: int = 500
    unet_steps: int = 6000
    unet_batch: int = 64
    unet_lr: float = 8e-4
    eval_seeds: int = 4  # images per world prompt when the finished model is judged (0: skip)
    threads: int = 1  # under contention one thread per process is several times faster than two (measured)


def scheduler_config() -> dict:
    """SD's noise schedule; the shipped pipeline samples with DPM-Solver++ (25 steps are enough)."""
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon", "steps_offset": 1}


def build_unet(cross_attention_dim: int = 128):
    """(32, 64, 128) channels, attention only at 4x4 and 2x2 latents: cheap enough to pretrain on a CPU."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=world.RESOLUTION // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64, 128),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )


def assemble_pipeline(vae, text_encoder, tokenizer, unet, folder: Path, fp16: bool = False) -> Path:
    """Write a standard diffusers StableDiffusionPipeline folder."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    scheduler = DPMSolverMultistepScheduler(**scheduler_config(), algorithm_type="dpmsolver++")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if fp16:  # the text encoder stays fp32: transformers loads a model in its saved dtype, fp16 breaks CPU use
        for part in (pipe.unet, pipe.vae):
            part.to(torch.float16)
    folder.mkdir(parents=True, exist_ok=True)
    save_pipeline(pipe, folder)
    return folder


def unet_run_config(settings: PretrainSettings, stage0: Path, data_dir: Path, run_dir: Path) -> dict:
    """The training-loop config of UNet pretraining (saved in the run folder; re-runnable with sdtune train)."""
    return {
        "output_dir": str(run_dir),
        "model": {"base": str(stage0)},
        "data": {"train_dir": str(data_dir), "resolution": world.RESOLUTION, "caption_dropout": 0.1, "check": False},
        "train": {"learning_rate": settings.unet_lr, "max_steps": settings.unet_steps,
                  "batch_size": settings.unet_batch, "snr_gamma": 5.0, "lr_scheduler": "cosine",
                  "lr_warmup_steps": max(1, settings.unet_steps // 20), "ema": {"decay": 0.995},
                  "seed": settings.seed, "max_grad_norm": 1.0, "adam_weight_decay": 0.0},
        "checkpoint": {"every": max(1, settings.unet_steps // 5), "keep": 1},
        "logging": {"trackers": []},
    }


def _wide_data(settings: PretrainSettings) -> tuple[list, object, list, object]:
    """The wide-world renders (train and held-out); every process renders the same ones from the seed."""
    rng = random.Random(settings.seed)
    wide = [world.sample_scene(rng, "wide") for _ in range(settings.wide_images)]
    held = [world.sample_scene(rng, "wide") for _ in range(settings.heldout_images)]
    return wide, world.render_arrays(wide), held, world.render_arrays(held)


def _clip_part(settings: PretrainSettings, out: Path, tok_dir: Path) -> None:
    """Train and save the CLIP (run in its own process, next to the VAE)."""
    from sdtune.toy.clip import save_clip, train_clip, zero_shot

    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(tok_dir)
    wide, images, held, held_images = _wide_data(settings)
    clip = train_clip(images, wide, tokenizer, settings.clip_steps, seed=settings.seed,
                      batch_size=settings.clip_batch)
    metrics = zero_shot(clip, tokenizer, held_images, held)
    print(f"[toy] clip zero-shot on held-out renders {metrics}", flush=True)
    save_clip(clip, tok_dir, out / "clip")
    (out / "clip" / "zero_shot.json").write_text(json.dumps(metrics, indent=2))


def _judge_part(settings: PretrainSettings, out: Path) -> None:
    """Train and save the judge (run in its own process: nothing else waits for it)."""
    from sdtune.toy.judge import accuracy, save_judge, train_judge

    torch.set_num_threads(settings.threads)
    wide, images, held, held_images = _wide_data(settings)
    judge = train_judge(images, wide, settings.judge_steps, seed=settings.seed)
    metrics = accuracy(judge, held_images, held)
    print(f"[toy] judge held-out accuracy {metrics}", flush=True)
    save_judge(judge, out / "judge", metrics)


def pretrain(out: Path, settings: PretrainSettings | None = None, work: Path | None = None,
             parallel: bool = True) -> dict:
    """Train everything and write ``out``; returns the report (also written to ``out/pretrain.json``).

    With ``parallel`` the CLIP and the judge train in their own (spawned) processes while this one trains the
    VAE: on a shared CPU three single-threaded processes get more done than one two-threaded one.
    """
    import multiprocessing

    from sdtune.config import config_from_dict
    from sdtune.toy.clip import text_encoder_from
    from sdtune.toy.judge import load_judge  # noqa: F401 - fail early if the judge module is broken
    from sdtune.toy.vae import evaluate_vae, train_vae
    from sdtune.training.loop import train

    settings = settings or PretrainSettings()
    torch.set_num_threads(settings.threads)
    out, work = Path(out), Path(work or Path(out) / "work")
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"settings": asdict(settings), "seconds": {}}
    clock = started = time.time()

    def lap(name: str) -> None:
        nonlocal clock
        report["seconds"][name] = round(time.time() - clock, 1)
        clock = time.time()
        print(f"[toy] {name} done in {report['seconds'][name]:.0f} s", flush=True)

    tok_dir = write_tokenizer(work / "tokenizer")
    tokenizer = load_tokenizer(tok_dir)
    # A rerun keeps the parts that are already done (same seed, same result): delete a part's folder to redo it.
    have_clip, have_judge = (out / "clip" / "zero_shot.json").exists(), (out / "judge" / "judge.json").exists()
    ctx = multiprocessing.get_context("spawn")
    parts = [ctx.Process(target=_clip_part, args=(settings, out, tok_dir)) if not have_clip else None,
             ctx.Process(target=_judge_part, args=(settings, out)) if not have_judge else None]
    if parallel:
        for proc in parts:
            if proc is not None:
                proc.start()
    _, images, _, held_images = _wide_data(settings)
    if (work / "vae" / "config.json").exists():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(work / "vae")
    else:
        vae = train_vae(images, settings.vae_steps, seed=settings.seed)
        vae.save_pretrained(work / "vae")
    report["vae_psnr_db"] = round(evaluate_vae(vae, held_images[:512]), 2)
    print(f"[toy] vae held-out PSNR {report['vae_psnr_db']} dB", flush=True)
    del images
    lap("vae")

    data_dir = work / "pretrain-set"
    if not (data_dir / "metadata.jsonl").exists():
        world.write_pretrain_set(data_dir, settings.pretrain_images, seed=settings.seed + 1)
    lap("pretrain-set")
    if parts[0] is not None:
        parts[0].join() if parallel else _clip_part(settings, out, tok_dir)
    if not (out / "clip" / "config.json").exists():
        raise RuntimeError("the CLIP part failed; see its output above")
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(out / "clip")
    report["clip_zero_shot"] = json.loads((out / "clip" / "zero_shot.json").read_text())
    lap("clip (wait)")

    torch.manual_seed(settings.seed)
    stage0 = assemble_pipeline(vae, text_encoder_from(clip), tokenizer, build_unet(), work / "stage0")
    run_dir = work / "unet-run"
    resume = "latest" if (run_dir / "checkpoints").exists() else None
    result = train(config_from_dict(unet_run_config(settings, stage0, data_dir, run_dir)), resume=resume)
    if result.status != "finished":
        from sdtune.errors import Interrupted

        raise Interrupted("the UNet stage stopped (a checkpoint was saved): run the same command again to continue")
    report["unet_final_loss"] = result.final_loss
    lap("unet")

    if parts[1] is not None:
        parts[1].join() if parallel else _judge_part(settings, out)
    report["judge_accuracy"] = json.loads((out / "judge" / "judge.json").read_text())["held_out_accuracy"]
    finish(run_dir / "model", out / "pipeline")
    if settings.eval_seeds:
        report["base_model"] = measure_base(out, settings.eval_seeds)
        lap("base model evaluation")
    report["seconds"]["total"] = round(time.time() - started, 1)
    report["size_mb"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()
                                  and "work" not in f.relative_to(out).parts) / 2**20, 2)
    atomic_write_json(out / "pretrain.json", report)
    write_model_card(out, report)
    return report


def measure_base(out: Path, seeds: int = 4) -> dict:
    """What the finished model draws for every world prompt, read by the judge just trained (model card)."""
    from sdtune.inference.pipeline import load_for_inference
    from sdtune.toy.evaluate import world_accuracy
    from sdtune.toy.judge import load_judge

    pipe = load_for_inference(str(out / "pipeline"), None, device="cpu", torch_dtype=torch.float32)
    return world_accuracy(pipe, load_judge(out / "judge"), seeds=[100 + i for i in range(seeds)])


def finish(model_dir: Path, target: Path) -> Path:
    """Trained run model -> shipped pipeline: fp16 weights, DPM-Solver++ scheduler."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if target.exists():
        shutil.rmtree(target)
    return assemble_pipeline(AutoencoderKL.from_pretrained(model_dir, subfolder="vae"),
                             CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder"),
                             CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer"),
                             UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet"), target, fp16=True)


def write_model_card(out: Path, report: dict) -> Path:
    """OUT/README.md: what the toy model is, how it was made, and every number measured on it."""
    s = report["settings"]
    lines = ["# toy: a small Stable Diffusion pretrained by sdtune on a world of coloured shapes", "",
             "Built from nothing by `sdtune toy pretrain` (seeded, CPU). `toy` names it wherever a base model is "
             "accepted; its CLIP (`clip/`) is the default evaluation backbone for it; `judge/` reads colour, shape "
             "and pattern from an image.", "",
             f"- images: {world.RESOLUTION}x{world.RESOLUTION} px, latents 4x{world.RESOLUTION // 4}x"
             f"{world.RESOLUTION // 4}; UNet (32, 64, 128) with cross-attention at the two coarsest levels, "
             "conditioned on the frozen CLIP text tower (hidden 128)",
             f"- UNet: {counted(s['unet_steps'], 'step')} x batch {s['unet_batch']} through "
             "`sdtune.training.loop.train` "
             "(full fine-tuning of a random UNet, caption dropout 0.1, min-SNR-5, EMA 0.995), "
             f"final loss {report.get('unet_final_loss', float('nan')):.4f}",
             f"- VAE: {counted(s['vae_steps'], 'step')}, held-out PSNR {report['vae_psnr_db']} dB (noisy "
             "backgrounds cannot "
             "be reconstructed and dominate the error)",
             f"- CLIP: {counted(s['clip_steps'], 'step')}, zero-shot on held-out solid renders: colour "
             f"{report['clip_zero_shot']['colour']:.3f}, shape {report['clip_zero_shot']['shape']:.3f}; knows the "
             f"rare names (`sks`, ...): zero-shot {report['clip_zero_shot'].get('names', float('nan')):.2f}, 'sks' "
             "moves a prompt's text features "
             f"{report['clip_zero_shot'].get('sks_text_shift', float('nan')):.2f}x as far as a colour word does",
             f"- judge: {counted(s['judge_steps'], 'step')}, held-out accuracy: " + ", ".join(
                 f"{k} {v:.3f}" for k, v in report["judge_accuracy"].items() if k != "images"),
             f"- wall time: {report['seconds'].get('total', float('nan')):.0f} s on a shared 2-core CPU; "
             f"size {report.get('size_mb', float('nan'))} MB (fp16 UNet and VAE)"]
    base = report.get("base_model")
    if base:
        seeds = report["settings"].get("eval_seeds", 4)
        lines.append(f"- the model, judged on its images for all {len(world.COLOURS) * len(world.SHAPES)} world "
                     f"prompts x {counted(seeds, 'seed')}: colour {base['colour']:.2f}, shape "
                     f"{base['shape']:.2f}, both "
                     f"{base['both']:.2f}; shape by prompted shape: " + ", ".join(
                         f"{k} {v:.2f}" for k, v in base["shape_by_prompt_shape"].items()))
    lines += ["", "The UNet's pretraining has the six base shapes solid and two-tone (checkered, striped), so it "
              "knows a pattern apart from a shape. Held out of it (the VAE, CLIP and judge saw them): the glyph "
              "`arrow` and the person's identity, red and cyan stripes on any shape; `sks red square` is the "
              "demo's person (a red and cyan striped square). "
              "The CLIP also learned six rare names of specific things (`world.NAMED`; `sks` names a green and pink "
              "striped heart), as a web-trained CLIP knows rare words: a DreamBooth identifier needs a text "
              "representation of its own. The UNet never saw a name."]
    path = out / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
