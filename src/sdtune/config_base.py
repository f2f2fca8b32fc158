"""The base of every section of a run's schema (``sdtune.config_sections``, ``sdtune.config_loss_terms``,
``sdtune.config_output_sections``): unknown keys refused, assignments validated, yes/no refused for numbers."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_yes_no_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``true``/``false`` given to a number key: pydantic reads them as 1/0, so ``train.max_timestep=true``
        trained timestep 0 alone and ``train.max_steps=true`` one step; refused instead."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and is_number_key(field.annotation):
            raise ValueError("a yes/no value, where this key takes a number")
        return value


def is_number_key(annotation: Any) -> bool:
    """``int``, ``float``, or either with None (``int | None``): a number key."""
    args = [a for a in get_args(annotation) if a is not type(None)] if get_args(annotation) else [annotation]
    return bool(args) and all(a in (int, float) for a in args)
