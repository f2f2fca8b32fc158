"""Public entry points for datasets: build an imagefolder from photos, check a folder before training.

The work lives in ``build.py`` (normalize, dedupe, caption, write atomically), ``check.py`` (the report the
trainer runs first), ``captions.py`` (caption sources, token counts) and ``images.py`` (safe decoding).
"""

from __future__ import annotations

from sdtune.data.build import BuildReport, Source, build_dataset
from sdtune.data.check import CheckReport, check_folder

__all__ = ["BuildReport", "CheckReport", "Source", "build_dataset", "check_folder"]
