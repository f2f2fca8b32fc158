"""Inference: load base models, run folders and adapter stacks; generate reproducible, self-describing PNGs."""

from sdtune.inference.generate import GenerationSettings, generate_images, read_prompts, run_generate
from sdtune.inference.grid import make_grid
from sdtune.inference.metadata import GenerationParams, read_png_parameters, save_png
from sdtune.inference.pipeline import (
    base_of,
    is_run_folder,
    load_for_inference,
    model_fingerprint,
    parse_adapter_spec,
    read_run,
)
from sdtune.models.samplers import SCHEDULERS, make_scheduler

__all__ = [
    "SCHEDULERS",
    "GenerationParams",
    "GenerationSettings",
    "base_of",
    "generate_images",
    "is_run_folder",
    "load_for_inference",
    "make_scheduler",
    "make_grid",
    "model_fingerprint",
    "parse_adapter_spec",
    "read_png_parameters",
    "read_prompts",
    "read_run",
    "run_generate",
    "save_png",
]
