"""Personalization at scale: the old fixed round-robin split vs Ray scheduling, 8 uneven people on 2 slots.

The old ``sdtune personalize`` ran under ``torchrun --nproc_per_node 2``: each process imported sdtune, joined
the process group (accelerate's ``PartialState``, gloo), process 0 fused the concept LoRA while the other waited,
then process ``r`` trained the people ``r, r+2, ...`` one after another and all waited at a barrier: the slot with
the longer people set the wall time while the other idled. ``sdtune personalize`` now starts Ray in the background
as soon as its input is checked, fuses the concept meanwhile, and submits every person (longest first) to start
when a slot frees up. Each arm of a round is one real command launched afresh, timed from launch to exit:

- ``fixed``: ``torchrun --nproc_per_node 2`` on this file (``--arm fixed``): per process the old start-up (import
  sdtune's CLI, ``PartialState(cpu=True)``), process 0 fuses the concept (``fuse_concept``, the product's own
  function, on the built-in tiny model), a barrier, the round-robin share run as units (:func:`run_unit`, slot
  ``r``), the final barrier;
- ``ray``: ``python`` on this file (``--arm ray``): import sdtune's CLI, :class:`EngineStart` (local Ray, 2 fake
  GPUs: what personalize calls), the same fusing meanwhile, then every person submitted at once, longest first,
  and the engine shut down.

With ``--serial`` a third arm, ``ray-serial``, waits for Ray before it fuses (what personalize did before the
overlap): the difference to ``ray`` is what the overlap buys on this machine. Every arm runs the same units in the
same order. People have uneven step counts, ``linspace(40, 160, 8)``: in
even rounds long and short people alternate in the CSV (160, 40, 143, 57, ...: the round-robin gives one process
all the long ones, the case the old split was bad at), in odd rounds a seeded random order (often nearly balanced
by chance). Rounds alternate the arms' order (interleaved), so a machine shared with other work slows both.

Work per person (``--work``):
- ``sleep`` (default): a stand-in child (``tests/engine_child.py``) that sleeps ``steps x --step-seconds``: it
  measures scheduling and the engines' own start-up and overhead, not training speed. ``--step-seconds`` takes
  seconds or ``a100``: 0.66 s, one step of a DreamBooth LoRA on Stable Diffusion v1-5 at 512 px on one A100 40GB
  with gradient checkpointing ("~11 minutes for 1k steps", Google Cloud's "Benchmark Stable Diffusion v1-5 Fine
  Tuning and Serving With Google Cloud Vertex Model Garden", github.com/GoogleCloudPlatform/vertex-ai-samples,
  community-content/vertex_model_garden/benchmarking_reports/stable_diffusion_v1-5_benchmarking_report.md). SD-2
  base has a UNet of the same size (~865M parameters) at the same 512 px; no public SD-2 figure was found.
- ``train``: real ``sdtune train`` of the built-in tiny model for that many steps (CPU; dominated by each child's
  start-up on a small machine; no per-person gap is measured).

Printed per round: each arm's wall time from launch to exit ("with start-up") and its work phase alone (first
person submitted / share started to last person done: "without start-up"), both ratios (Ray / fixed), each arm's
start-up before its first person, Ray's own start-up and how much of it ran during the preparation, the fusing
time, and the per-person gap on a slot (one person's child ending to the next one's starting); then the median and
spread over rounds.

Usage:
    python benchmarks/personalize_bench.py --rounds 4
    python benchmarks/personalize_bench.py --rounds 2 --step-seconds a100
    python benchmarks/personalize_bench.py --rounds 3 --serial
    python benchmarks/personalize_bench.py --work train --rounds 1 --step-scale 0.25
"""

from __future__ import annotations

import time

LAUNCHED = time.time()  # an arm's process: the first moment it runs Python code

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from sdtune.engine.unit import Unit, run_unit  # noqa: E402

ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
A100_STEP_SECONDS = 0.66  # see the module docstring: 11 min / 1000 steps, SD v1-5 DreamBooth LoRA, 512 px, A100


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


def _unit_json(unit: Unit) -> dict:
    return {"argv": list(unit.argv), "log": str(unit.log), "name": unit.name,
            "run_dir": str(unit.run_dir) if unit.run_dir else None, "env": dict(unit.env), "module": unit.module}


def _unit_from(data: dict) -> Unit:
    return Unit(tuple(data["argv"]), Path(data["log"]), data["name"], Path(data["run_dir"]) if data["run_dir"]
                else None, env=data["env"], module=data["module"])


def _length(unit: Unit) -> float:
    """A person's length as personalize knows it before it starts (its config's train.max_steps)."""
    if unit.argv[0] == "sleep":
        return float(unit.argv[2])
    return float(next(a for a in unit.argv if a.startswith("train.max_steps=")).split("=")[1])


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


def _import_command() -> None:
    """What ``sdtune personalize`` loads before it does anything: the CLI and the recipe."""
    import sdtune.cli  # noqa: F401
    import sdtune.recipes.personalize  # noqa: F401


def arm_fixed(spec: dict) -> None:
    """One torchrun process of the old personalize: process group, process 0 fuses, round-robin share, barrier."""
    _import_command()
    from accelerate import PartialState

    from sdtune.recipes.personalize import fuse_concept

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    joined = time.time()
    if rank == 0:
        fuse_concept(Path(spec["concept"]), Path(spec["out"]), echo=lambda _: None)
    fused = time.time()
    state.wait_for_everyone()
    share_start = time.time()
    for data in spec["units"][rank::world]:
        result = run_unit(_unit_from(data), gpu_ids=[str(rank)])
        assert result.kind == "ok", (data["name"], result)
    share_end = time.time()
    state.wait_for_everyone()
    state.destroy_process_group()
    record = {"launched": LAUNCHED, "joined": joined, "fused": fused, "work_start": share_start,
              "work_end": share_end}
    Path(spec["out"], f"timing-{rank}.json").write_text(json.dumps(record))


def arm_ray(spec: dict, serial: bool = False) -> None:
    """The new personalize: Ray started in the background, the concept fused meanwhile, people submitted.
    ``serial`` (arm ``ray-serial``): Ray waited for before fusing, as personalize did before the overlap."""
    _import_command()
    from sdtune.engine.starting import EngineStart
    from sdtune.recipes.personalize import fuse_concept

    start = EngineStart(num_gpus=2, num_cpus=2)
    try:
        if serial:
            start.engine()
        fuse_concept(Path(spec["concept"]), Path(spec["out"]), echo=lambda _: None)
        fused = time.time()
        engine = start.engine()
        submitted = time.time()
        units = sorted((_unit_from(u) for u in spec["units"]), key=lambda u: -_length(u))  # longest first
        handles = [engine.submit(unit, gpus=1, cpus=1) for unit in units]
        engine.wait(handles, poll=0.05)
        done = time.time()
        assert all(engine.poll(h) == 0 for h in handles), [engine.status(h) for h in handles]
    finally:
        start.close(grace=30)
    record = {"launched": LAUNCHED, "requested": start.requested, "up": start.up, "fused": fused,
              "work_start": submitted, "work_end": done, "closed": time.time()}
    Path(spec["out"], "timing-ray.json").write_text(json.dumps(record))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_arm(arm: str, units: list[Unit], concept: Path, out: Path) -> dict:
    """Launch one arm as its own command; returns its timings (seconds) measured from launch to exit."""
    out.mkdir(parents=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps({"units": [_unit_json(u) for u in units], "concept": str(concept), "out": str(out)}))
    me = [str(Path(__file__).resolve()), "--arm", arm, "--spec", str(spec)]
    if arm == "fixed":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *me]
    else:
        cmd = [sys.executable, *me]
    env = os.environ | ENV | {"OMP_NUM_THREADS": "1"}
    launched = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ended = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{arm} arm failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    if arm == "fixed":
        ranks = [json.loads(p.read_text()) for p in sorted(out.glob("timing-*.json"))]
        work_start, work_end = min(r["work_start"] for r in ranks), max(r["work_end"] for r in ranks)
        fuse = ranks[0]["fused"] - ranks[0]["joined"]
        extra = {"rendezvous": max(r["joined"] for r in ranks) - launched}
    else:
        r = json.loads((out / "timing-ray.json").read_text())
        work_start, work_end = r["work_start"], r["work_end"]
        fuse = r["fused"] - r["requested"]
        extra = {"ray_up": r["up"] - r["requested"], "ray_hidden": min(r["up"], r["fused"]) - r["requested"],
                 "shutdown": r["closed"] - r["work_end"]}
    return {"wall": ended - launched, "work": work_end - work_start, "before_first": work_start - launched,
            "fuse": fuse, **extra}


def make_concept(root: Path) -> Path:
    """A tiny concept LoRA run (3 steps, no full model): each arm fuses it, as personalize does."""
    from sdtune.config import config_from_dict
    from sdtune.training.loop import train
    from tests.helpers import make_images

    thumbs = make_images(root / "thumbs", 3, color=(220, 180, 40), captions=["a person giving a thumbs up"])
    cfg = config_from_dict({"output_dir": str(root / "concept"), "model": {"base": "tiny"},
                            "data": {"train_dir": str(thumbs), "resolution": 32},
                            "train": {"lora": {"rank": 4}, "max_steps": 3, "learning_rate": 1e-3},
                            "logging": {"trackers": []}})
    assert train(cfg).status == "finished"
    return root / "concept"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--work", choices=("sleep", "train"), default="sleep")
    parser.add_argument("--step-seconds", default="0.05", help="sleep work: seconds per step, or 'a100' "
                        f"({A100_STEP_SECONDS} s: SD LoRA at 512 px on an A100, see the module docstring)")
    parser.add_argument("--step-scale", type=float, default=1.0, help="train work: steps x this (small machines)")
    parser.add_argument("--serial", action="store_true", help="a third arm, ray-serial: Ray started before the "
                        "preparation and waited for (personalize before it overlapped them)")
    parser.add_argument("--arm", choices=("fixed", "ray", "ray-serial"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        spec = json.loads(args.spec.read_text())
        if args.arm == "fixed":
            arm_fixed(spec)
        else:
            arm_ray(spec, serial=args.arm == "ray-serial")
        return
    step_seconds = A100_STEP_SECONDS if args.step_seconds == "a100" else float(args.step_seconds)
    root = Path(tempfile.mkdtemp(prefix="personalize-bench-"))
    concept = make_concept(root)
    tiny = None
    if args.work == "train":
        from tests.helpers import make_images

        photos = make_images(root / "photos", 3, captions=["a photo of sks person"])
        tiny = root / "tiny.yaml"
        tiny.write_text(f"model: {{base: tiny}}\ndata: {{train_dir: {photos}, resolution: 32}}\n"
                        "train: {lora: {rank: 4}, learning_rate: 0.001}\n", encoding="utf-8")
    rows = []
    for rnd in range(args.rounds):
        steps = [max(1, round(s * (args.step_scale if args.work == "train" else 1))) for s in people_steps(rnd)]
        row: dict = {"round": rnd, "load": os.getloadavg()[0]}
        arms = ["fixed", "ray", *(["ray-serial"] if args.serial else [])]
        for arm in arms[rnd % len(arms):] + arms[: rnd % len(arms)]:  # each arm first in turn (interleaved)
            units = make_units(args.work, steps, root / f"r{rnd}-{arm}", step_seconds, tiny)
            row[arm] = run_arm(arm, units, concept, root / f"r{rnd}-{arm}-out")
            row[arm]["gap"] = mean_gap(spans(units)) if args.work == "sleep" else float("nan")
        f, r = row["fixed"], row["ray"]
        row["ratio"], row["ratio_with_startup"] = r["work"] / f["work"], r["wall"] / f["wall"]
        rows.append(row)
        print(f"round {rnd} (load {row['load']:.1f}): steps {steps}: wall launch to exit: fixed {f['wall']:.1f} s, "
              f"ray {r['wall']:.1f} s: ratio {row['ratio_with_startup']:.3f}; work phase: fixed {f['work']:.1f} s, "
              f"ray {r['work']:.1f} s: ratio {row['ratio']:.3f}; before the first person: fixed "
              f"{f['before_first']:.1f} s (rendezvous {f['rendezvous']:.1f} s, fuse {f['fuse']:.1f} s), ray "
              f"{r['before_first']:.1f} s (Ray up in {r['ray_up']:.1f} s, {r['ray_hidden']:.1f} s of it during the "
              f"preparation; shut down {r['shutdown']:.1f} s); gap per person: ray {r['gap']:.2f} s, fixed "
              f"{f['gap']:.2f} s", flush=True)
        if args.serial:
            z = row["ray-serial"]
            row["serial_ratio"] = z["wall"] / f["wall"]
            print(f"  ray-serial: wall {z['wall']:.1f} s: ratio {row['serial_ratio']:.3f}; before the first person "
                  f"{z['before_first']:.1f} s (Ray up in {z['ray_up']:.1f} s, then fusing)", flush=True)

    def summary(get, kind: int | None = None) -> str:
        values = [get(r) for r in rows if kind is None or r["round"] % 2 == kind]
        if not values:
            return "-"
        return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f}, n={len(values)})"

    loads = ", ".join(f"{r['load']:.1f}" for r in rows)
    print(f"\nwork: {args.work}, {step_seconds} s/step; {len(rows)} interleaved rounds; load average (1 min) at the "
          f"rounds' starts {loads}, at the end {os.getloadavg()[0]:.1f}, on "
          f"{os.cpu_count()} cores")
    print(f"Ray / fixed, launch to exit, alternating long/short: {summary(lambda r: r['ratio_with_startup'], 0)}")
    print(f"Ray / fixed, launch to exit, random order:           {summary(lambda r: r['ratio_with_startup'], 1)}")
    print(f"Ray / fixed, work phase only, alternating:           {summary(lambda r: r['ratio'], 0)}")
    print(f"Ray / fixed, work phase only, random order:          {summary(lambda r: r['ratio'], 1)}")
    print(f"before the first person, fixed (torchrun), s:        {summary(lambda r: r['fixed']['before_first'])}")
    print(f"before the first person, Ray, s:                     {summary(lambda r: r['ray']['before_first'])}")
    print(f"Ray up after, s:                                     {summary(lambda r: r['ray']['ray_up'])}")
    print(f"... of it during the preparation, s:                 {summary(lambda r: r['ray']['ray_hidden'])}")
    print(f"fusing the concept, fixed / Ray arm, s:              {summary(lambda r: r['fixed']['fuse'])} / "
          f"{summary(lambda r: r['ray']['fuse'])}")
    if args.serial:
        print(f"ray-serial / fixed, launch to exit, alternating:     {summary(lambda r: r['serial_ratio'], 0)}")
        print(f"ray-serial / fixed, launch to exit, random order:    {summary(lambda r: r['serial_ratio'], 1)}")
        print(f"before the first person, ray-serial, s:              "
              f"{summary(lambda r: r['ray-serial']['before_first'])}")
    print(f"Ray shut-down, s:                                    {summary(lambda r: r['ray']['shutdown'])}")
    print(f"per-person gap on a slot, Ray, s:                    {summary(lambda r: r['ray']['gap'])}")
    print(f"per-person gap on a slot, fixed, s:                  {summary(lambda r: r['fixed']['gap'])}")


if __name__ == "__main__":
    main()
