"""Quiet weight loading: per-file 'Loading weights' bars say nothing to a user; download bars (huggingface_hub)
stay. Its own module so that building a preset and loading a model share it without importing each other."""

from __future__ import annotations


def quiet_weight_loading() -> None:
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
