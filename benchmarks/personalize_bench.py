"""Personalization at scale: the old fixed round-robin split vs Ray scheduling, 8 uneven people on 2 slots.

The old ``sdtune personalize`` under ``torchrun --nproc_per_node 2`` gave process ``r`` the people ``r, r+2, ...``
and waited at a barrier: the slot with the longer people set the wall time while the other idled. Ray starts each
person when a slot frees up. Both arms run the same units (:mod:`sdtune.engine.unit`, one child process per
person) in the same order:

- ``fixed``: two threads, thread ``r`` runs its round-robin share one after another, pinned to slot ``r`` (what the
  torchrun processes did, minus torchrun's own start-up);
- ``ray``: one :class:`sdtune.engine.Engine` (local Ray, 2 fake GPUs), every person submitted at once, 1 GPU each,
  longest first (as ``sdtune personalize`` submits them: each config's ``train.max_steps`` is known).

People have uneven step counts, ``linspace(40, 160, 8)``: in even rounds long and short people alternate in the
CSV (160, 40, 143, 57, ...: the round-robin gives one process all the long ones, the case the old split was bad
at), in odd rounds a seeded random order (often nearly balanced by chance). Both arms of a round get the same
order; the summary is given for each kind of round. Rounds alternate the arms' order (interleaved), so a machine
shared with other work slows both.

Work per person (``--work``):
- ``sleep`` (default): a stand-in child (``tests/engine_child.py``) that sleeps ``steps x --step-seconds``. It
  measures scheduling and the engine's own overhead, not training speed: the number to read is the ratio.
- ``train``: real ``sdtune train`` of the built-in tiny model for that many steps (CPU; dominated by each child's
  start-up on a small machine; no per-person gap is measured).

Printed: per round the wall times and their ratio (Ray / fixed, with and without Ray's start-up), the median and
spread over rounds, Ray's start-up in seconds and the per-person overhead: the mean gap, on one slot, between one
person's child ending and the next one's starting (dispatch, worker, process start; the same gap of the fixed
arm is printed beside it).

Usage:
    python benchmarks/personalize_bench.py --rounds 5
    python benchmarks/personalize_bench.py --work train --rounds 1 --step-scale 0.25
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from sdtune.engine.unit import Unit, run_unit  # noqa: E402

ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def people_steps(seed: int, n: int = 8, low: int = 40, high: int = 160) -> list[int]:
    """Even rounds: long and short people alternate in the CSV (the round-robin's bad case: one process gets all
    the long ones); odd rounds: a random order (seeded), where the round-robin is often nearly balanced."""
    steps = [round(low + (high - low) * i / (n - 1)) for i in range(n)]
    if seed % 2 == 0:
        return [x for pair in zip(steps[::-1][: n // 2], steps[: n // 2], strict=True) for x in pair]
    random.Random(seed).shuffle(steps)
    return steps


def make_units(work: str, steps: list[int], folder: Path, step_seconds: float, tiny: Path | None) -> list[Unit]:
    units = []
    for i, count in enumerate(steps):
        name = f"p{i}"
        if work == "sleep":
            argv = ("sleep", str(folder / name), str(count * step_seconds))
            units.append(Unit(argv, folder / f"{name}.log", name, env=ENV, module="tests.engine_child"))
        else:
            run = folder / name
            argv = ("train", str(tiny), f"output_dir={run}", f"train.max_steps={count}", "checkpoint.every=100000",
                    "logging.trackers=[]", "validation.prompts=[]")
            units.append(Unit(argv, folder / f"{name}.log", name, run, env=ENV))
    return units


def spans(units: list[Unit]) -> list[tuple[str, float, float]]:
    """(slot, start, end) of each stand-in's own work, from the files it wrote (its CUDA_VISIBLE_DEVICES is the
    slot)."""
    out = []
    for unit in units:
        folder = Path(unit.argv[1])
        start = next(folder.glob("pid-*"))
        pid = start.name.split("-")[1]
        out.append(((folder / f"cuda-{pid}").read_text(), float(start.read_text()),
                    float((folder / f"done-{pid}").read_text())))
    return out


def mean_gap(intervals: list[tuple[str, float, float]]) -> float:
    """Mean time between one person's end and the next one's start on the same slot."""
    gaps = []
    for slot in {s for s, _, _ in intervals}:
        mine = sorted((a, b) for s, a, b in intervals if s == slot)
        gaps += [nxt[0] - prev[1] for prev, nxt in zip(mine, mine[1:], strict=False)]
    return statistics.mean(gaps) if gaps else float("nan")


def run_fixed(units: list[Unit]) -> float:
    started = time.time()

    def share(rank: int) -> None:
        for unit in units[rank::2]:
            result = run_unit(unit, gpu_ids=[str(rank)])
            assert result.kind == "ok", (unit.name, result)

    threads = [threading.Thread(target=share, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.time() - started


def _steps(unit: Unit) -> int:
    return int(next(a for a in unit.argv if a.startswith("train.max_steps=")).split("=")[1])


def run_ray(units: list[Unit]) -> tuple[float, float]:
    from sdtune.engine import Engine

    started = time.time()
    engine = Engine(num_gpus=2, num_cpus=2)
    ready = getattr(engine, "ready", None)  # the engine starts its workers at once (#21); older engines did not
    if ready is not None:
        ready()  # start-up = until the workers are up: what a caller that prepares while they boot does not wait
    startup = time.time() - started
    try:
        t0 = time.time()
        # as personalize submits them: longest first (steps are known from each config's max_steps)
        order = sorted(units, key=lambda u: -float(u.argv[2]) if u.argv[0] == "sleep" else -_steps(u))
        handles = [engine.submit(unit, gpus=1, cpus=1) for unit in order]
        engine.wait(handles, poll=0.05)
        wall = time.time() - t0
        if units[0].argv[0] == "sleep":
            first = min(start for _, start, _ in spans(units)) - t0
            print(f"  ray: first person started {first:.2f} s after its submit", flush=True)
        assert all(engine.poll(h) == 0 for h in handles), [engine.status(h) for h in handles]
    finally:
        engine.shutdown()
    return wall, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", choices=("sleep", "train"), default="sleep")
    parser.add_argument("--step-seconds", type=float, default=0.05, help="sleep work: seconds per step")
    parser.add_argument("--step-scale", type=float, default=1.0, help="train work: steps x this (small machines)")
    args = parser.parse_args()
    tiny = None
    root = Path(tempfile.mkdtemp(prefix="personalize-bench-"))
    if args.work == "train":
        from tests.helpers import make_images

        photos = make_images(root / "photos", 3, captions=["a photo of sks person"])
        tiny = root / "tiny.yaml"
        tiny.write_text(f"model: {{base: tiny}}\ndata: {{train_dir: {photos}, resolution: 32}}\n"
                        "train: {lora: {rank: 4}, learning_rate: 0.001}\n", encoding="utf-8")
    rows = []
    for rnd in range(args.rounds):
        steps = [max(1, round(s * (args.step_scale if args.work == "train" else 1))) for s in people_steps(rnd)]
        result = {"round": rnd, "steps": steps}
        for arm in (("fixed", "ray") if rnd % 2 == 0 else ("ray", "fixed")):
            units = make_units(args.work, steps, root / f"r{rnd}-{arm}", args.step_seconds, tiny)
            if arm == "fixed":
                result["fixed"] = run_fixed(units)
            else:
                result["ray"], result["startup"] = run_ray(units)
            result[f"{arm}_gap"] = mean_gap(spans(units)) if args.work == "sleep" else float("nan")
        result["ratio"] = result["ray"] / result["fixed"]
        result["ratio_with_startup"] = (result["ray"] + result["startup"]) / result["fixed"]
        rows.append(result)
        print(f"round {rnd}: steps {steps}: fixed {result['fixed']:.1f} s, ray {result['ray']:.1f} s "
              f"(+{result['startup']:.1f} s start-up): ratio {result['ratio']:.3f} "
              f"({result['ratio_with_startup']:.3f} with start-up); gap per person: ray {result['ray_gap']:.2f} s, "
              f"fixed {result['fixed_gap']:.2f} s", flush=True)

    def summary(key: str, kind: int | None = None) -> str:
        values = [r[key] for r in rows if kind is None or r["round"] % 2 == kind]
        if not values:
            return "-"
        return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"

    print(f"\nwork: {args.work}; {len(rows)} interleaved rounds; load average at the end "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"wall Ray / fixed split, alternating long/short: {summary('ratio', 0)}")
    print(f"wall Ray / fixed split, random order:           {summary('ratio', 1)}")
    print(f"the same with Ray's start-up, alternating:      {summary('ratio_with_startup', 0)}")
    print(f"the same with Ray's start-up, random order:     {summary('ratio_with_startup', 1)}")
    print(f"Ray start-up, s:                                {summary('startup')}")
    print(f"per-person gap on a slot, Ray, s:               {summary('ray_gap')}")
    print(f"per-person gap on a slot, fixed, s:             {summary('fixed_gap')}")


if __name__ == "__main__":
    main()
