"""The embedded Ray's processes end with the process that started them, even when it is killed (kill -9, OOM).

``ray.shutdown()`` ends them on every normal exit, Ctrl-C included. A SIGKILL of the driver gives it no chance:
the GCS and raylet die with it, and the units' children die with their workers (parent-death signal), but Ray's
agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``: ~100 MB each, deaf to SIGTERM) were measured still
running minutes later (Ray 2.60). So the driver starts a small watchdog right after ``ray.init``: it remembers
the processes Ray started (pid and start time, so a reused pid is never hit) and, once its parent (the driver) is
gone, kills those still there. A normal shutdown ends the watchdog first.
"""

from __future__ import annotations

import os
import subprocess
import sys

WATCHDOG = r"""
import os, sys, time
import psutil
driver, wanted = int(sys.argv[1]), [tuple(p.split(":")) for p in sys.argv[2:]]
while os.getppid() == driver:
    time.sleep(1.0)
for pid, started in wanted:
    try:
        proc = psutil.Process(int(pid))
        if f"{proc.create_time():.3f}" == started:
            proc.kill()
    except psutil.Error:
        pass
"""


def start_reaper() -> subprocess.Popen | None:
    """Watch over every process started below this one so far (call right after ``ray.init``); None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import psutil

    mine = [f"{p.pid}:{p.create_time():.3f}" for p in psutil.Process().children(recursive=True)]
    if not mine:
        return None
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), *mine], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_reaper(reaper: subprocess.Popen | None) -> None:
    if reaper is not None and reaper.poll() is None:
        reaper.kill()
        reaper.wait()
