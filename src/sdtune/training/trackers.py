"""TensorBoard and Weights & Biases through accelerate's trackers (wandb offline works: WANDB_MODE=offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sdtune.config import RunConfig, dump_config


def tracker_init_kwargs(cfg: RunConfig, logs: Path) -> dict:
    name = cfg.logging.run_name or Path(cfg.output_dir).name
    return {"wandb": {"dir": str(logs), "name": name}}


def flat_config(cfg: RunConfig) -> dict:
    """Trackers want flat scalars: dotted keys, lists as strings."""
    import yaml

    out: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = node if isinstance(node, int | float | str | bool) else str(node)

    walk("", yaml.safe_load(dump_config(cfg)))
    return out


def log_images(accelerator, images: list[Image.Image], step: int) -> None:
    if not images:
        return
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            batch = np.stack([np.asarray(img) for img in images])
            tracker.writer.add_images("validation", batch, step, dataformats="NHWC")
            tracker.writer.flush()
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(img) for img in images]}, step=step)
