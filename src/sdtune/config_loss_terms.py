"""The sections of a run's schema for loss terms beside the diffusion loss (``train.preservation``,
``train.attention_loss``); the other sections are in ``sdtune.config_sections``, which uses these, and
``sdtune.config`` re-exports them all.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from sdtune.config_base import Section


class PreservationConfig(Section):
    """Differential output preservation (``sdtune.training.preservation``): keep the starting model's output on
    prompts without the identifier, as a loss term; needs no class images. LoRA runs only."""

    weight: float = Field(1.0, gt=0.0, description="weight of the term next to the training loss "
                          "(train.preservation=null turns it off)")
    prompts: list[str] = Field(default_factory=list, description="prompts without the identifier (default: "
                               "data.class_prompt); a two-stage flow adds the concept's own prompts")

    def resolved_prompts(self, data: Any) -> list[str]:
        """The prompts, or ``data.class_prompt`` (``data``: the run's DataConfig) when none are given."""
        return list(self.prompts) or ([data.class_prompt] if data.class_prompt else [])


class AttentionLossConfig(Section):
    """Break-A-Scene's cross-attention loss (``sdtune.training.attention_loss``): the learned token's attention map
    is pulled towards each photo's mask. Needs train.textual_inversion and data.masked_loss."""

    weight: float = Field(0.01, gt=0.0, description="weight of the term next to the training loss (Break-A-Scene: "
                          "0.01; train.attention_loss=null turns it off)")
    downscales: list[int] | None = Field(None, min_length=1, description="read the cross-attention layers whose "
                                         "maps are this many times smaller than the latents (null: the level whose "
                                         "maps are nearest 16x16, Break-A-Scene's on SD at 512 px: 4 there, 2 on "
                                         "the tiny models)")

    @field_validator("downscales", mode="before")
    @classmethod
    def _one_as_a_list(cls, value: Any) -> Any:
        """``downscales=4`` (one size, as people write it on the command line) means ``[4]``."""
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("downscales")
    @classmethod
    def _powers_of_two(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        wrong = [d for d in value if d < 1 or d & (d - 1)]
        if wrong:
            raise ValueError(f"{wrong}: each level of the UNet halves the latents, so a map is 1, 2, 4, 8, ... times "
                             "smaller than them")
        return value
