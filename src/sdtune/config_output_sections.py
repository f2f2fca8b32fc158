"""The sections of a run's schema about what it writes and shows (``checkpoint:``, ``validation:``, ``logging:``,
``save:``); the sections of what it trains on and how are in ``sdtune.config_sections``. ``sdtune.config``
re-exports both, so ``from sdtune.config import SaveConfig`` is how they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from sdtune.config_base import Section


class CheckpointConfig(Section):
    every: int = Field(500, ge=1, description="save resume state every N optimizer steps")
    keep: int = Field(3, ge=1, description="keep the last K checkpoints")


class ValidationLossConfig(Section):
    """A loss on images the run never trains on (``sdtune.training.val_loss``), at fixed timesteps with fixed noise:
    comparable across steps and runs; logged, in metrics.json and the checkpoints, and ``sdtune pick --by val_loss``."""

    split: float | None = Field(None, gt=0.0, lt=1.0, description="fraction of the training images held out "
                                "(chosen by validation.loss.seed; never trained on)")
    data_dir: Path | None = Field(None, description="a folder of held-out images (captions, or data.instance_prompt)")
    every: int = Field(0, ge=0, description="every N steps (0 = at every checkpoint); always at the last step")
    timesteps: int = Field(4, ge=1, description="fixed timesteps spread evenly over the schedule; every image is "
                           "measured at each")
    seed: int = Field(0, description="which images split holds out, and the fixed noise")

    @model_validator(mode="after")
    def _one_source(self) -> ValidationLossConfig:
        if (self.split is None) == (self.data_dir is None):
            raise ValueError("validation.loss needs exactly one of split (a fraction of the training images held "
                             "out, e.g. 0.1) or data_dir (a folder of held-out images)")
        return self


class ValidationConfig(Section):
    loss: ValidationLossConfig | None = Field(None, description="a validation loss on held-out images")
    prompts: list[str] = Field(default_factory=list)
    every: int = Field(0, ge=0, description="every N steps (0 = only at the end when prompts are set)")
    num_images: int = Field(1, ge=1, description="images per prompt")
    steps: int = Field(25, ge=1, description="denoising steps per validation image (25-50 for real models)")
    guidance_scale: float = 7.5
    seed: int = 0


class LoggingConfig(Section):
    trackers: list[Literal["tensorboard", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    project: str = "sdtune"
    run_name: str | None = None


class SaveConfig(Section):
    full_model: bool = Field(False, description="also save a full pipeline (LoRA fused in) under RUN/model")
    lora: bool = Field(True, description="save RUN/lora (LoRA runs)")
    verify: bool = Field(True, description="load RUN/lora as diffusers does and compare its outputs with the trained "
                         "adapter before it takes its name (one more load of the base model)")
