"""How long listing the queue takes with N queued jobs (issue 22's goal: 100 jobs in < 200 ms).

Three ways of listing, measured in interleaved rounds on a fresh workspace: the store alone (``JobStore.jobs``),
`GET /api/jobs` through the FastAPI app (the store + each job's run-folder progress; half the jobs get a run
folder with a progress log of 1,000 steps and two checkpoints, as a queue overnight would have), and
`sdtune jobs list` as a user types it (a whole process: Python start-up and imports included), next to
`sdtune --help` (the start-up any sdtune command pays).
Prints the median and range over rounds; the machine may be shared, so read ratios to the goal, not absolutes.

    PYTHONPATH=src python benchmarks/jobs_list.py --jobs 100 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def fill(ws: Path, n: int) -> None:
    from sdtune.jobs.store import JobStore

    store = JobStore.in_workspace(ws)
    for i in range(n):
        run = ws / "runs" / f"r{i}"
        if i % 2 == 0:
            (run / "logs").mkdir(parents=True)
            (run / "config.yaml").write_text("train:\n  max_steps: 2000\n", encoding="utf-8")
            lines = [json.dumps({"step": s, "max_steps": 2000, "loss": 0.1, "lr": 1e-4, "seconds": 0.5})
                     for s in range(1, 1001)]
            (run / "logs" / "progress.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            for step in (500, 1000):
                ck = run / "checkpoints" / f"step-{step:06d}"
                ck.mkdir(parents=True)
                (ck / "state.json").write_text("{}", encoding="utf-8")
        store.submit("train", ["train", f"/x/{i}.yaml", "--resume", "latest"], name=f"r{i}", run_dir=run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from sdtune.jobs.store import JobStore
    from sdtune.server.app import create_app

    ws = Path(tempfile.mkdtemp(prefix="sdtune-jobs-bench-"))
    fill(ws, args.jobs)
    store = JobStore.in_workspace(ws)
    client = TestClient(create_app(ws), base_url="http://127.0.0.1:7860")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                          os.environ.get("PYTHONPATH", "")])}
    times: dict[str, list[float]] = {"store": [], "api": [], "cli": [], "help": []}
    for _ in range(args.rounds):
        t = time.perf_counter()
        assert len(store.jobs()) == args.jobs
        times["store"].append(time.perf_counter() - t)
        t = time.perf_counter()
        assert len(client.get("/api/jobs").json()) == args.jobs
        times["api"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sdtune", "jobs", "list", "--workspace", str(ws)], env=env,
                       check=True, capture_output=True)
        times["cli"].append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sdtune", "--help"], env=env, check=True, capture_output=True)
        times["help"].append(time.perf_counter() - t)  # the start-up every sdtune command pays
    print(f"{args.jobs} queued jobs, {args.rounds} interleaved rounds (shared 2-core CPU; ms, median [min-max]):")
    for name, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"  {name:5s} {statistics.median(ms):8.1f}  [{min(ms):.1f}-{max(ms):.1f}]   "
              f"goal 200 ms: {statistics.median(ms) / 200:.2f}x")


if __name__ == "__main__":
    main()
