"""sdtune's own per-step work: a step's wall time less the model's share, and the host syncs per step.

Runs ``sdtune.training.loop.train`` in this process (DreamBooth LoRA rank 4, batch 1, caches on, no checkpoint or
validation inside the measured steps) on SD 2's topology at 1/8 width (``benchmarks/train_bench.py``'s model) or
on a preset such as ``real-sd2-base``, and times, per optimizer step:

- step: between consecutive progress-bar updates (one per step), in this process's CPU time (``--clock cpu``, the
  default: time-slicing on a shared machine does not count; run with one thread) or wall time;
- model: the UNet forward, ``accelerator.backward`` and the optimizer's ``step`` (what any trainer must run);
- own = step - model: everything else the loop does (data and cache reads, noise, loss, clipping, the divergence
  guard, logging, the bar). Medians over the steps after ``--warmup``.

``--syncs`` instead counts the reads of a tensor's value into Python per step (``aten::_local_scalar_dense``, which
``item()``/``float()``/``bool()``/``int()`` of a tensor go through, and ``Tensor.tolist``); each is a host sync on a
GPU. Reads by ``torch.optim`` (its step counters live on the CPU) are not counted. The counting slows the run, so
it is not combined with the timing. ``--src`` runs another checkout's ``src`` (before/after comparisons: run each
in its own process, interleaved). One process per call; the machine's load is printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _config(model: str, photos: Path, out: Path, args) -> dict:
    return {"output_dir": str(out), "model": {"base": model},
            "data": {"instance_dir": str(photos), "instance_prompt": "a photo of sks dog",
                     "resolution": args.resolution, "cache_dir": str(out.parent / "cache"), "check": False},
            "train": {"max_steps": args.steps, "learning_rate": 1e-4, "seed": 0, "lora": {"rank": 4, "alpha": 4}},
            "checkpoint": {"every": 10**6, "keep": 1}, "logging": {"trackers": []},
            "save": {"verify": False, "lora": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bench", help="'bench' (SD 2 at 1/8 width) or a preset / folder")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this process's CPU time (robust on a shared machine; run with 1 thread), or wall")
    parser.add_argument("--syncs", action="store_true", help="count host reads per step instead of timing")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the sdtune source tree to run")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override (repeatable)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src))
    sys.path.insert(1, str(ROOT / "benchmarks"))
    import torch
    from diffusers import UNet2DConditionModel
    from train_bench import build_bench_model, make_photos

    from sdtune.config import config_from_dict
    from sdtune.training import loop

    work = args.work or Path(tempfile.mkdtemp(prefix="sdtune-steptax-"))
    model = str(build_bench_model(work / "model")) if args.model == "bench" else args.model
    photos = make_photos(work / "photos", 7, args.resolution + args.resolution // 4)
    out = work / f"run-{os.getpid()}"
    cfg = config_from_dict(_config(model, photos, out, args), overrides=args.set)

    marks: list[float] = []
    model_time = [0.0]
    per_step_model: list[float] = []
    parts: dict[str, list[float]] = {}  # own work by part, summed over the steady steps
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def timed(fn, part: str | None = None):
        def wrapper(*a, **k):
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                spent = clock() - t
                if part is None:
                    model_time[0] += spent
                elif len(marks) > args.warmup:
                    parts.setdefault(part, []).append(spent)
        return wrapper

    class Bar(loop.tqdm):
        def update(self, n=1):
            marks.append(clock())
            per_step_model.append(model_time[0])
            model_time[0] = 0.0
            return super().update(n)

    from accelerate import Accelerator

    loop.tqdm = Bar
    counter = None
    if args.syncs:
        counter = _count_syncs(marks, str(args.src.resolve()))
    else:
        UNet2DConditionModel.forward = timed(UNet2DConditionModel.forward)
        Accelerator.backward = timed(Accelerator.backward)
        torch.optim.AdamW.step = timed(torch.optim.AdamW.step)
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        from sdtune.data.cache import Conditioner
        from sdtune.training.divergence import DivergenceGuard
        for owner, name, part in [(_BaseDataLoaderIter, "__next__", "data"), (Accelerator, "clip_grad_norm_", "clip"),
                                  (DivergenceGuard, "judge", "judge"), (DivergenceGuard, "record_loss", "judge"),
                                  (Conditioner, "latents", "conditioning"),
                                  (Conditioner, "unet_kwargs", "conditioning")]:
            if hasattr(owner, name):
                setattr(owner, name, timed(getattr(owner, name), part))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = os.getloadavg()
    if counter is not None:
        with counter:
            loop.train(cfg)
    else:
        loop.train(cfg)
    steady = range(args.warmup + 1, len(marks))
    result = {"src": str(args.src), "model": args.model, "resolution": args.resolution, "steps": args.steps,
              "load": [round(x, 2) for x in (*load_before, *os.getloadavg())]}
    if counter is not None:
        per_step = [counter.per_step[i] for i in steady]
        result["syncs_per_step"] = {"median": statistics.median(per_step), "max": max(per_step)}
        result["sync_sites"] = counter.sites.most_common(8)
    else:
        walls = [marks[i] - marks[i - 1] for i in steady]
        owns = [marks[i] - marks[i - 1] - per_step_model[i] for i in steady]
        result["clock"] = args.clock
        result["step_ms"] = round(1000 * statistics.median(walls), 2)
        result["own_ms"] = round(1000 * statistics.median(owns), 2)
        result["own_ms_range"] = [round(1000 * min(owns), 2), round(1000 * max(owns), 2)]
        result["own_parts_ms_per_step"] = {k: round(1000 * sum(v) / len(walls), 2) for k, v in parts.items()}
    print("STEPTAX " + json.dumps(result), flush=True)


def _count_syncs(marks: list[float], src: str):
    """A dispatch mode counting value reads, bucketed by progress-bar update (one bucket per step)."""
    import collections
    import traceback

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.per_step: collections.Counter = collections.Counter()
            self.sites: collections.Counter = collections.Counter()

        def note(self) -> None:
            stack = traceback.extract_stack(limit=30)
            if any("/torch/optim/" in f.filename for f in stack):
                return
            self.per_step[len(marks)] += 1
            if not marks:
                return
            site = next((f for f in reversed(stack) if f.filename.startswith(src)), stack[-3])
            self.sites[f"{Path(site.filename).name}:{site.lineno}"] += 1

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                self.note()
            return func(*args, **(kwargs or {}))

    counter = Counter()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counter.note()
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    return counter


if __name__ == "__main__":
    main()
