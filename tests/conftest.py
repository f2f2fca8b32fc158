"""Test-wide settings: no network, wandb offline, built-in models cached once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub / wandb / torch. The built-in models are built once per session:
# pytest-xdist workers (`make test` runs two) inherit the controller's folder through _SDTUNE_SESSION_CACHE.
_CACHE = Path(os.environ.get("SDTUNE_TEST_CACHE") or os.environ.get("_SDTUNE_SESSION_CACHE")
              or tempfile.mkdtemp(prefix="sdtune-test-cache-"))
os.environ["_SDTUNE_SESSION_CACHE"] = str(_CACHE)
os.environ["SDTUNE_CACHE"] = str(_CACHE)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per worker (and per CLI subprocess it starts): two workers on two cores, not four threads
    # fighting over them. Bitwise comparisons in tests are between runs of one test, at one thread count.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
