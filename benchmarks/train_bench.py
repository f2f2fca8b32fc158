"""sdtune against the real peer, side by side: the diffusers DreamBooth-LoRA example script.

Both train the same DreamBooth LoRA (same photos, steps, rank, learning rate, seed, resolution, batch 1) on the
same model, each with its default behaviour otherwise, in interleaved rounds (peer, sdtune, peer, ...), each
command in its own process. Reported as ratios sdtune / peer, median and range over rounds:

- steady-state steps/s: from the tensorboard ``loss`` events both write every step (their wall times); the
  first ``--warmup`` steps and the last one (it holds the checkpoint save) are excluded;
- whole-command wall time (start-up, model load, caching, training, saving, the final reload each does);
- peak RSS (of the process tree, measured by a wrapper process);
- checkpoint size (the peer's ``checkpoint-N`` folder, sdtune's ``checkpoints/step-N``).

The peer script is not part of this repository: fetch ``examples/dreambooth/train_dreambooth_lora.py`` from
diffusers (a tag whose ``check_min_version`` the installed diffusers satisfies; v0.40.0 works with 0.42.1) and
give it its own environment with torchvision (which must not enter sdtune's)::

    python3.11 -m venv /work/venvs/peer
    /work/venvs/peer/bin/pip install torch==2.14.1 torchvision==0.29.1 diffusers==0.42.1 transformers==5.23.0 \\
        peft==0.21.2 accelerate==1.15.0 tensorboard pydantic typer pyyaml rich
    python benchmarks/train_bench.py --peer-script /work/peer/train_dreambooth_lora.py \\
        --peer-python /work/venvs/peer/bin/python

On a shared machine wall times mean little: ``--cpu-diff LOW --threads 1`` reports each command's steady CPU
seconds per step instead, from its CPU time at LOW and at ``--steps`` steps (start-up, caching and saving cancel).
``--baseline-src PATH`` adds the sdtune of another checkout (before/after). Without torchvision's C ops (a CPU
torch with the PyPI torchvision wheel) the peer's venv needs a ``sitecustomize.py`` that puts empty modules at
``torchvision._meta_registrations`` and ``torchvision._autograd_registrations`` (the peer uses transforms only).

``--sdtune-python`` runs sdtune with another interpreter (e.g. the peer's, to compare on the same torch build).
The default model is SD 2's topology at 1/8 width built in code (4-level UNet with cross-attention and linear
projections, 8x-down VAE, 23-layer text tower) at 256 px on the CPU. On a GPU: ``--model real-sd2-base
--resolution 512 --mixed-precision fp16`` (the real SD-2-base shapes, random weights), plus ``--sdtune-set
KEY=VALUE`` to try options (e.g. ``train.gradient_checkpointing=true``).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of sks dog"
WRAPPER = ("import json, resource, subprocess, sys, time; t = time.time(); "
           "rc = subprocess.run(sys.argv[1:]).returncode; u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print('BENCH', json.dumps({'rc': rc, 'seconds': time.time() - t, "
           "'cpu_seconds': u.ru_utime + u.ru_stime, 'maxrss_kb': u.ru_maxrss}))")


def build_bench_model(folder: Path) -> Path:
    """SD 2's topology at 1/8 width (UNet 40-80-160-160 with cross-attention at 3 levels, VAE 8x down,
    23-layer text tower of width 128), seeded; written as a diffusers folder both tools load."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdtune.models.presets import build_tiny_tokenizer
    from sdtune.models.real import read_component_config

    if (folder / "model_index.json").exists():
        return folder
    tok = build_tiny_tokenizer()
    unet_cfg = {k: v for k, v in read_component_config("real-sd2-base", "unet").items() if not k.startswith("_")}
    vae_cfg = {k: v for k, v in read_component_config("real-sd2-base", "vae").items() if not k.startswith("_")}
    sched_cfg = read_component_config("real-sd2-base", "scheduler")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**unet_cfg, "block_out_channels": [40, 80, 160, 160],
                                             "norm_num_groups": 8, "cross_attention_dim": 128})
    vae = AutoencoderKL.from_config({**vae_cfg, "block_out_channels": [16, 32, 64, 64], "norm_num_groups": 8})
    te = CLIPTextModel(CLIPTextConfig(hidden_size=128, intermediate_size=512, num_attention_heads=2,
                                      num_hidden_layers=23, projection_dim=64, hidden_act="gelu",
                                      vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = DDPMScheduler.from_config(sched_cfg)
    StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


def make_photos(folder: Path, n: int, size: int) -> Path:
    """``n`` square photos (square, so the peer's centre crop and sdtune's buckets train the same pixels)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (size, size), (30 * i % 255, 120, 200))
        draw = ImageDraw.Draw(img)
        draw.ellipse((size // 8 + 9 * i, size // 5, size // 2 + 9 * i, size * 3 // 5), fill=(240, 200, 20))
        draw.rectangle((size // 2, size // 2 + 5 * i, size * 7 // 8, size * 7 // 8), fill=(20, 30 + 20 * i, 90))
        img.save(folder / f"photo{i}.png")
    return folder


def _env(threads: int, src: Path | None = None) -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
                         "WANDB_MODE": "offline", "PYTHONPATH": str(src or ROOT / "src"),
                         "TOKENIZERS_PARALLELISM": "false"}


def _gpu_memory_mb() -> float | None:
    """GPU memory in use (MiB, all GPUs) from nvidia-smi, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    proc = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True)
    try:
        return sum(float(x) for x in proc.stdout.split())
    except ValueError:
        return None


def _measured(command: list[str], env: dict, log: Path) -> dict:
    """Run a command under the wrapper: exit code, wall seconds, peak RSS of its process tree, and on a GPU
    machine the peak GPU memory in use above what was in use before (nvidia-smi, polled twice a second)."""
    import threading

    base, peak, done = _gpu_memory_mb(), [0.0], threading.Event()

    def poll() -> None:
        while not done.wait(0.5):
            used = _gpu_memory_mb()
            if used is not None and base is not None:
                peak[0] = max(peak[0], used - base)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-c", WRAPPER, *command], env=env, stdout=subprocess.PIPE,
                              stderr=out, text=True)
    done.set()
    watcher.join()
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    result = json.loads(line[len("BENCH "):]) if line else {"rc": proc.returncode}
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed (exit {result['rc']}); see {log}")
    if base is not None:
        result["gpu_peak_mb"] = peak[0]
    return result


def step_seconds(logs: Path, warmup: int) -> float:
    """Median seconds per step between consecutive ``loss`` events, skipping warm-up steps and the last step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    for event_file in logs.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        acc.Reload()
        if "loss" in acc.Tags()["scalars"]:
            events += [(e.step, e.wall_time) for e in acc.Scalars("loss")]
    events.sort()
    times = [b[1] - a[1] for a, b in zip(events, events[1:], strict=False) if a[0] >= warmup][:-1]
    if not times:
        raise SystemExit(f"too few logged steps in {logs} for --warmup {warmup}")
    return statistics.median(times)


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_peer(args, model: Path, photos: Path, out: Path) -> dict:
    command = [args.peer_python, args.peer_script, f"--pretrained_model_name_or_path={model}",
               f"--instance_data_dir={photos}", f"--instance_prompt={PROMPT}", f"--output_dir={out}",
               f"--resolution={args.resolution}", "--train_batch_size=1", f"--learning_rate={args.lr}",
               "--lr_scheduler=constant", "--lr_warmup_steps=0", f"--max_train_steps={args.steps}",
               f"--checkpointing_steps={args.steps}", f"--seed={args.seed}", f"--rank={args.rank}",
               f"--mixed_precision={args.mixed_precision}", "--center_crop", "--report_to=tensorboard",
               *args.peer_arg]
    res = _measured(command, _env(args.threads), out.with_suffix(".log"))
    return {**res, "step_seconds": step_seconds(out / "logs", args.warmup),
            "checkpoint_mb": _dir_mb(out / f"checkpoint-{args.steps}")}


def run_sdtune(args, model: Path, photos: Path, out: Path, cache: Path, extra: list[str],
               src: Path | None = None) -> dict:
    shutil.rmtree(cache, ignore_errors=True)  # a cold cache: the first-run cost is in the wall time
    config = {"output_dir": str(out), "model": {"base": str(model)},
              "data": {"instance_dir": str(photos), "instance_prompt": PROMPT, "resolution": args.resolution,
                       "cache_dir": str(cache), "check": False},
              "train": {"max_steps": args.steps, "learning_rate": args.lr, "seed": args.seed,
                        "lora": {"rank": args.rank, "alpha": args.rank}, "mixed_precision": args.mixed_precision},
              "checkpoint": {"every": args.steps, "keep": 1}, "logging": {"trackers": ["tensorboard"]}}
    config_file = out.with_suffix(".yaml")
    config_file.write_text(json.dumps(config, indent=2))  # JSON is YAML
    command = [args.sdtune_python, "-m", "sdtune", "train", str(config_file), *args.sdtune_set, *extra]
    res = _measured(command, _env(args.threads, src), out.with_suffix(".log"))
    return {**res, "step_seconds": step_seconds(out / "logs", args.warmup),
            "checkpoint_mb": _dir_mb(out / "checkpoints" / f"step-{args.steps:06d}")}


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _torch_version(python: str) -> str:
    proc = subprocess.run([python, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"],
                          capture_output=True, text=True, env=_env(2))
    return proc.stdout.strip() or proc.stderr.strip()[-200:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-script", required=True, help="diffusers' examples/dreambooth/train_dreambooth_lora.py")
    parser.add_argument("--peer-python", default=sys.executable, help="a python with the peer's packages")
    parser.add_argument("--sdtune-python", default=sys.executable)
    parser.add_argument("--model", default="bench", help="'bench' (SD 2 at 1/8 width) or a preset / folder")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--photos", type=int, default=7)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads of every command")
    parser.add_argument("--no-cache-variant", action="store_true", help="also run sdtune with both caches off")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also run the sdtune of another checkout's src (variant 'sdtune-base': before/after)")
    parser.add_argument("--sdtune-set", action="append", default=[], help="KEY=VALUE for sdtune (repeatable)")
    parser.add_argument("--peer-arg", action="append", default=[], help="an extra peer argument (repeatable)")
    parser.add_argument("--cpu-diff", type=int, default=None, metavar="LOW",
                        help="a shared machine: steady CPU seconds per step instead, from each command's CPU time at "
                             "LOW and at --steps steps ((cpu(steps) - cpu(LOW)) / (steps - LOW); use --threads 1)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every measurement here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sdtune-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))
    if args.model == "bench":
        model = build_bench_model(work / "model")
    else:
        from sdtune.models.loading import resolve_model_ref

        model = Path(resolve_model_ref(args.model))
    photos = make_photos(work / "photos", args.photos, args.resolution + args.resolution // 4)
    variants = (["peer", "sdtune"] + (["sdtune-nocache"] if args.no_cache_variant else [])
                + (["sdtune-base"] if args.baseline_src else []))
    rounds: list[dict[str, dict]] = []
    loads = [_load()]
    if args.cpu_diff is not None:
        return cpu_rounds(args, model, photos, work, variants)
    for r in range(args.rounds):
        row: dict[str, dict] = {}
        for name in variants:
            out = work / f"r{r}-{name}"
            shutil.rmtree(out, ignore_errors=True)
            if name == "peer":
                row[name] = run_peer(args, model, photos, out)
            else:
                extra = ["data.cache_latents=false", "data.cache_text=false"] if name == "sdtune-nocache" else []
                src = args.baseline_src if name == "sdtune-base" else None
                row[name] = run_sdtune(args, model, photos, out, work / "cache", extra, src)
            print(f"round {r + 1} {name:15s} {row[name]['step_seconds']:.3f} s/step, {row[name]['seconds']:.1f} s, "
                  f"{row[name]['maxrss_kb'] / 1024:.0f} MB", flush=True)
        rounds.append(row)
        loads.append(_load())
    report(args, rounds, loads, variants, model)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                         "load": loads}, indent=2))
    print(f"\nwork folder: {work}")


def cpu_rounds(args, model: Path, photos: Path, work: Path, variants: list[str]) -> None:
    """Steady CPU seconds per step of each variant, from its CPU time at two step counts (start-up, caching and
    saving cancel), in interleaved rounds; time-slicing on a shared machine does not enter CPU time."""
    low, high, rounds, loads = args.cpu_diff, args.steps, [], [_load()]
    for r in range(args.rounds):
        row = {}
        for name in variants:
            cpu = {}
            for steps in (low, high):
                run = argparse.Namespace(**{**vars(args), "steps": steps, "warmup": 0})
                out = work / f"r{r}-{name}-{steps}"
                shutil.rmtree(out, ignore_errors=True)
                src = args.baseline_src if name == "sdtune-base" else None
                res = (run_peer(run, model, photos, out) if name == "peer" else
                       run_sdtune(run, model, photos, out, work / "cache", [], src))
                cpu[steps] = res["cpu_seconds"]
            row[name] = (cpu[high] - cpu[low]) / (high - low)
            print(f"round {r + 1} {name:12s} {row[name]:.3f} CPU s/step", flush=True)
        rounds.append(row)
        loads.append(_load())
    print(f"\n{model.name}, {args.resolution} px, rank {args.rank}, batch 1, {args.threads} thread(s), "
          f"steady CPU s/step from {low} and {high} steps, {args.rounds} interleaved rounds; load {' | '.join(loads)}")
    for name in variants:
        ratios = [r["peer"] / r[name] for r in rounds]  # steps/s relative to the peer
        print(f"{name:12s} {statistics.median(r[name] for r in rounds):.3f} CPU s/step, steps/s x peer "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rounds": rounds,
                                         "load": loads}, indent=2))


def report(args, rounds: list[dict], loads: list[str], variants: list[str], model: Path) -> None:
    metrics = [("steady steps/s", lambda m: 1 / m["step_seconds"]), ("whole command s", lambda m: m["seconds"]),
               ("peak RSS MB", lambda m: m["maxrss_kb"] / 1024), ("checkpoint MB", lambda m: m["checkpoint_mb"])]
    if "gpu_peak_mb" in rounds[0]["peer"]:
        metrics.append(("peak GPU MB", lambda m: m["gpu_peak_mb"]))
    print(f"\n{model.name}, {args.resolution} px, DreamBooth LoRA rank {args.rank}, batch 1, {args.steps} steps "
          f"(steady state: steps {args.warmup}-{args.steps - 1}), {args.photos} photos, {args.threads} threads, "
          f"mixed precision {args.mixed_precision}, {args.rounds} interleaved rounds")
    print(f"torch: peer {_torch_version(args.peer_python)}; sdtune {_torch_version(args.sdtune_python)}")
    print(f"load average (1/5/15 min) before and after each round: {' | '.join(loads)}")
    print(f"\n{'variant':16s}" + "".join(f"{name:>18s} {'x peer':>7s} {'range':>11s}" for name, _ in metrics))
    for name in variants:
        line = f"{name:16s}"
        for _, get in metrics:
            values = [get(r[name]) for r in rounds]
            ratios = [get(r[name]) / get(r["peer"]) for r in rounds]
            line += (f"{statistics.median(values):18.3f} {statistics.median(ratios):7.2f} "
                     f"{min(ratios):5.2f}-{max(ratios):<5.2f}")
        print(line)


if __name__ == "__main__":
    main()
