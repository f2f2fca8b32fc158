"""Training speed, memory and checkpoint size, side by side, printed as ratios in one run.

Compares sdtune's loop against a reference loop written the way the diffusers example scripts do it
(plain accelerate loop, ``accelerator.save_state`` checkpoints), on the same SD-shaped model, data and
settings. Each variant runs in its own process so that peak memory (max RSS) is its own.

    python benchmarks/train_bench.py                 # CPU-sized SD-shaped UNet, 64 px, 12 steps
    python benchmarks/train_bench.py --steps 30 --resolution 128

Numbers depend on the machine; the ratios are the point. On a shared machine, run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_bench_model(folder: Path) -> Path:
    """An SD-2-shaped pipeline (4 UNet levels, cross-attention at 3, 2 layers per block), small enough for a CPU."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdtune.models.presets import build_tiny_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=128, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=16, sample_size=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=16)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=128, intermediate_size=256, num_attention_heads=4,
                                      num_hidden_layers=4, vocab_size=len(tok), max_position_embeddings=77,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


def make_data(folder: Path, n: int = 8) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (96, 96), (30 * i % 255, 120, 200))
        ImageDraw.Draw(img).ellipse((10 + i, 20, 60 + i, 70), fill=(240, 200, 20))
        img.save(folder / f"{i}.png")
    return folder


SDTUNE_RUNNER = textwrap.dedent("""
    import json, resource, sys, time
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train
    cfg = config_from_dict(json.loads(sys.argv[1]))
    result = train(cfg)
    metrics = json.load(open(f"{cfg.output_dir}/metrics.json"))
    print("RESULT", json.dumps({"step_seconds": metrics["median_step_seconds"],
          "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")

# The diffusers example scripts' shape: one accelerate loop, accelerator.save_state() checkpoints.
REFERENCE_RUNNER = textwrap.dedent("""
    import json, resource, sys, time, torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from sdtune.data.folders import list_images
    from sdtune.data.images import load_rgb
    from sdtune.data.transforms import prepare_image
    from sdtune.models.loading import load_components
    import random
    args = json.loads(sys.argv[1])
    torch.manual_seed(0)
    acc = Accelerator(project_dir=args["out"])
    c = load_components(args["model"])
    c.vae.requires_grad_(False); c.text_encoder.requires_grad_(False); c.unet.requires_grad_(False)
    if args["lora"]:
        c.unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                      target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    else:
        c.unet.requires_grad_(True)
    params = [p for p in c.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    unet, opt = acc.prepare(c.unet, opt)
    images = list_images(__import__("pathlib").Path(args["data"]))
    ids = c.tokenizer("a photo of sks dog", padding="max_length", max_length=77, return_tensors="pt").input_ids
    sched = c.noise_scheduler
    times = []
    for step in range(args["steps"]):
        start = time.time()
        px = torch.stack([prepare_image(load_rgb(images[step % len(images)]), args["resolution"], True, False,
                                        random.Random(step))])
        with torch.no_grad():
            lat = c.vae.encode(px).latent_dist.sample() * c.vae.config.scaling_factor
            emb = c.text_encoder(ids)[0]
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (1,))
        pred = unet(sched.add_noise(lat, noise, t), t, emb).sample
        loss = F.mse_loss(pred, noise)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad()
        times.append(time.time() - start)
        if (step + 1) % args["every"] == 0:
            acc.save_state(f"{args['out']}/checkpoint-{step + 1}")
    import statistics
    print("RESULT", json.dumps({"step_seconds": statistics.median(times[1:]),
          "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def _run(code: str, payload: dict) -> dict:
    env = os.environ | {"PYTHONPATH": str(ROOT / "src"), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all variants, interleaved; step time "
                        "is the median over rounds and the spread of its ratio is printed (a shared CPU is noisy: "
                        "single 12-step rounds gave ratios from 0.88 to 1.22 for the same code)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sdtune-bench-"))
    model = build_bench_model(work / "model")
    data = make_data(work / "data")
    every = args.steps  # one checkpoint at the end, as a size sample
    rows = []

    def sdtune_variant(name: str, train: dict) -> None:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = {"output_dir": str(out), "model": {"base": str(model)},
               "data": {"instance_dir": str(data), "instance_prompt": "a photo of sks dog",
                        "resolution": args.resolution, "check": False},
               "train": {"max_steps": args.steps, **train}, "checkpoint": {"every": every, "keep": 1},
               "logging": {"trackers": []}}
        res = _run(SDTUNE_RUNNER, cfg)
        ckpt = out / "checkpoints" / f"step-{args.steps:06d}"
        rows.append((name, res["step_seconds"], res["maxrss_kb"] / 1024, _dir_mb(ckpt)))

    def reference_variant(name: str, lora: bool) -> None:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        res = _run(REFERENCE_RUNNER, {"out": str(out), "model": str(model), "data": str(data), "lora": lora,
                                      "steps": args.steps, "every": every, "resolution": args.resolution})
        rows.append((name, res["step_seconds"], res["maxrss_kb"] / 1024,
                     _dir_mb(out / f"checkpoint-{args.steps}")))

    rounds = []
    for _ in range(args.repeats):
        rows.clear()
        reference_variant("reference LoRA (diffusers-script style)", lora=True)
        sdtune_variant("sdtune LoRA", {"lora": {"rank": 8}})
        reference_variant("reference full (diffusers-script style)", lora=False)
        sdtune_variant("sdtune full", {})
        sdtune_variant("sdtune full + gradient checkpointing", {"gradient_checkpointing": True})
        rounds.append(list(rows))

    def ratios(i: int) -> list[float]:
        ref = 0 if "LoRA" in rounds[0][i][0] else 2
        return [r[i][1] / r[ref][1] for r in rounds]

    print(f"\nSD-shaped UNet, {args.resolution} px, batch 1, {args.steps} steps, CPU x{os.cpu_count()}, "
          f"{args.repeats} interleaved rounds (median; ratio range over rounds)\n")
    print(f"{'variant':44s} {'median s/step':>13s} {'x ref':>6s} {'range':>11s} {'peak RSS MB':>12s} {'x ref':>6s} "
          f"{'ckpt MB':>9s} {'x ref':>7s}")
    for i, (name, _, rss, ckpt) in enumerate(rounds[-1]):
        ref = rounds[-1][0 if "LoRA" in name else 2]
        sps = statistics.median(r[i][1] for r in rounds)
        spread = ratios(i)
        print(f"{name:44s} {sps:13.3f} {statistics.median(spread):6.2f} {min(spread):5.2f}-{max(spread):<5.2f} "
              f"{rss:12.0f} {rss / ref[2]:6.2f} {ckpt:9.2f} {ckpt / ref[3]:7.3f}")
    print(f"\nwork folder: {work}")


if __name__ == "__main__":
    main()
