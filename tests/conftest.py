"""Test-wide settings: no network, wandb offline, built-in models cached once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub / wandb.
_CACHE = Path(os.environ.get("SDTUNE_TEST_CACHE") or tempfile.mkdtemp(prefix="sdtune-test-cache-"))
os.environ["SDTUNE_CACHE"] = str(_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
