"""A stand-in for ``sdtune train`` in engine tests: ``python -m tests.engine_child MODE DIR [SECONDS]``.

Writes DIR/pid-<pid> and DIR/cuda-<pid> (its CUDA_VISIBLE_DEVICES), then by MODE: ``sleep`` (SIGTERM: exit 130, as
sdtune train after saving), ``bad`` (exit 2, a user error), ``crash-once`` (exit 1 unless DIR/crashed exists,
which it creates), ``ok``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 30.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"pid-{os.getpid()}").write_text(str(time.time()))
    (folder / f"cuda-{os.getpid()}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    if mode == "bad":
        print("error: data.instance_dir photos/ has no images")
        sys.exit(2)
    if mode == "crash-once" and not (folder / "crashed").exists():
        (folder / "crashed").write_text("1")
        raise RuntimeError("CUDA out of memory (simulated)")
    if mode == "sleep":
        time.sleep(seconds)
    (folder / f"done-{os.getpid()}").write_text(str(time.time()))


if __name__ == "__main__":
    main()
