"""The recipe file: named stages, each a run config as for ``sdtune train``, run in order.

A recipe is data, not code (DESIGN.md): a list of stages, where a stage may train on the model an earlier stage
produced (``base: stage:concept``). Every stage's config is built and validated before anything trains, so a
typo in the last stage fails in a second, not after the first stage's hour.

Overrides follow ``sdtune train``: ``a.b=c``. A key that starts with a stage name goes to that stage:
``person.data.instance_dir=me/`` sets the person stage's config, ``concept.extract_rank=16`` a stage field;
anything else applies to the recipe itself (``output_dir=runs/x``, ``defaults.data.resolution=768``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdtune.config import (
    RunConfig,
    apply_overrides,
    config_from_dict,
    format_validation_error,
    read_yaml,
    resolve_config,
)
from sdtune.errors import ConfigError
from sdtune.typed_yaml import ShapedAs

STAGE_REF = "stage:"
RESERVED_NAMES = {"defaults", "output_dir", "stages"}


class Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="also the stage's run folder name")
    config_file: Path | None = Field(None, description="a run config YAML to start from (as for sdtune train)")
    config: Annotated[dict[str, Any], ShapedAs(RunConfig)] = Field(
        default_factory=dict, description="run config keys, over config_file and defaults")
    base: str | None = Field(None, description="'stage:NAME' (the full model of an earlier stage) or a model ref")
    extract_rank: int | None = Field(32, ge=1, description="full fine-tunes: also extract a LoRA of this rank "
                                     "(null: do not)")
    extract_conv: bool = Field(False, description="the extracted LoRA also covers 3x3 convolutions")
    concept_prior: int | None = Field(None, ge=1, description="with base 'stage:NAME': also preserve that stage's "
                                      "concept, with this many class images of its training prompts drawn by its "
                                      "model (OUTPUT/class-images/NAME-prompts)")
    base_as: Literal["model", "adapter"] = Field("model", description="with base 'stage:NAME': train on that "
                                                 "stage's full model (its LoRA fused in), or on its own base with "
                                                 "its LoRA kept as a frozen, unfused adapter (model.adapters)")
    concept_preservation: bool = Field(False, description="with base 'stage:NAME' and train.preservation: "
                                       "preserve the starting model's output on that stage's training prompts "
                                       "too (no class images needed)")

    @property
    def base_stage(self) -> str | None:
        return self.base[len(STAGE_REF):] if self.base and self.base.startswith(STAGE_REF) else None


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: Path = Path("runs/recipe")
    defaults: Annotated[dict[str, Any], ShapedAs(RunConfig)] = Field(
        default_factory=dict, description="run config keys every stage shares")
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in RESERVED_NAMES:
                raise ValueError(f"stage name '{stage.name}' is reserved; choose another")
            if stage.name in seen:
                raise ValueError(f"two stages are named '{stage.name}'")
            ref = stage.base_stage
            if stage.base is not None and stage.base.startswith(STAGE_REF) and ref not in seen:
                raise ValueError(f"stage '{stage.name}' has base '{stage.base}', but no earlier stage is named "
                                 f"'{ref}' (stages run in order: {', '.join(s.name for s in self.stages)})")
            if stage.base_as == "adapter" and ref is None:
                raise ValueError(f"stage '{stage.name}': base_as: adapter keeps a base stage's LoRA as an adapter; "
                                 "set base: stage:NAME")
            for key in ("concept_prior", "concept_preservation"):
                if getattr(stage, key) and ref is None:
                    raise ValueError(f"stage '{stage.name}': {key} keeps the concept of its base stage; set "
                                     f"base: stage:NAME (the concept stage) or remove {key}")
            seen.add(stage.name)
        return self

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"no stage named '{name}' (stages: {', '.join(s.name for s in self.stages)})")

    def used_as_base(self, name: str) -> bool:
        return any(s.base_stage == name for s in self.stages)


def deep_merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """``high`` over ``low``, recursively for mappings (lists and values are replaced, not merged)."""
    out = copy.deepcopy(low)
    for key, value in high.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def route_overrides(data: dict[str, Any], overrides: list[str]) -> list[str]:
    """Rewrite ``STAGE.key=value`` overrides to ``stages.I.config.key=value`` (or ``stages.I.field``)."""
    names = [s.get("name") for s in data.get("stages") or [] if isinstance(s, dict)]
    routed = []
    for item in overrides:
        head, _, rest = item.partition(".")
        if head in names and rest and "=" in rest:
            index = names.index(head)
            field = rest.split("=", 1)[0].split(".", 1)[0]
            where = "" if field in Stage.model_fields else "config."
            routed.append(f"stages.{index}.{where}{rest}")
        else:
            routed.append(item)
    return routed


def check_stage_names(data: dict[str, Any], overrides: list[str]) -> None:
    """``persn.train.max_steps=2``: name the recipe's stages (and the close one), not the run config keys."""
    import difflib

    names = [str(s.get("name")) for s in data.get("stages") or [] if isinstance(s, dict)]
    for item in overrides:
        head, _, rest = item.partition(".")
        if head in names or head in Recipe.model_fields or not rest or "=" not in rest or "=" in head:
            continue
        close = difflib.get_close_matches(head, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}.{rest.split('=', 1)[0]}? " if close else ""
        raise ConfigError(f"override '{item}': '{head}' is not a stage of this recipe; {hint}its stages: "
                          f"{', '.join(names)} (recipe keys: {', '.join(Recipe.model_fields)})")


def check_recipe_keys(data: dict[str, Any], path: Path) -> None:
    """An unknown top-level key of a recipe file, named with the close one, before overrides are read."""
    from sdtune.config_errors import suggest_key

    for key in data:
        if key not in Recipe.model_fields:
            close = suggest_key(Recipe, [str(key)], [])
            hint = f"did you mean {close}? " if close else ""
            raise ConfigError(f"invalid recipe {path}: {key}: unknown key; {hint}(recipe keys: "
                              f"{', '.join(Recipe.model_fields)})")


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply overrides, validate the recipe and every stage's run config."""
    data = read_yaml(Path(path), Recipe)
    check_recipe_keys(data, Path(path))  # `stage:` for `stages:` would otherwise surface as "no stages"
    check_stage_names(data, list(overrides or []))
    routed = route_overrides(data, list(overrides or []))
    try:
        data = apply_overrides(data, routed, Recipe)
    except (IndexError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot apply overrides to {path}: {exc}") from None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        message = format_validation_error(exc, str(path), routed, schema=Recipe)
        raise ConfigError(message.replace("invalid config", "invalid recipe", 1)) from None
    stage_configs(recipe)  # validate every stage now
    return recipe


def stage_dir(recipe: Recipe, name: str) -> Path:
    out = recipe.output_dir if recipe.output_dir.is_absolute() else Path.cwd() / recipe.output_dir
    return (out / name).resolve()


def stage_config(recipe: Recipe, stage: Stage) -> RunConfig:
    """The run config of one stage: defaults < config_file < config, then what the runner decides.

    The runner sets ``output_dir`` (``OUTPUT/<stage>``), ``model.base`` for ``base: stage:X`` (that stage's full
    model) and ``save.full_model`` for LoRA stages others build on (they train on the fused model).
    """
    data = copy.deepcopy(recipe.defaults)
    if stage.config_file is not None:
        data = deep_merge(data, read_yaml(stage.config_file))
    data = deep_merge(data, stage.config)
    source = f"(stage '{stage.name}')"
    if "output_dir" in stage.config:
        raise ConfigError(f"stage '{stage.name}': stages run in OUTPUT/{stage.name}; set the recipe's output_dir "
                          "instead of a stage's")
    data["output_dir"] = str(stage_dir(recipe, stage.name))
    ref, below = stage.base_stage, None
    if stage.base is not None:
        if ((stage.config.get("model") or {}).get("base")) is not None:
            raise ConfigError(f"stage '{stage.name}' sets both base and config.model.base; keep one")
        below = stage_config(recipe, recipe.stage(ref)) if ref else None  # the stage this one trains on, built once
        base = str(stage_dir(recipe, ref) / "model") if ref else stage.base
        if below is not None and below.is_textual_inversion:
            raise ConfigError(f"stage '{stage.name}': base stage:{ref} learns a token by textual inversion and "
                              "writes no model (only RUN/embeddings); base this stage on the model stage "
                              f"'{ref}' trained on, or make '{ref}' a LoRA stage")
        if below is not None and stage.base_as == "adapter":
            from sdtune.models.lora import LORA_WEIGHTS

            if below.train.lora is None and recipe.stage(ref).extract_rank is None:
                raise ConfigError(f"stage '{stage.name}': base_as: adapter needs a LoRA of stage '{ref}'; it is a "
                                  "full fine-tune without extract_rank")
            base = below.model.base
            data.setdefault("model", {})["adapters"] = [
                *below.model.model_dump(mode="json")["adapters"],
                {"path": str(stage_dir(recipe, ref) / "lora" / LORA_WEIGHTS), "weight": 1.0,
                 "name": ref.replace("-", "_").replace(".", "_")}]
        data.setdefault("model", {})["base"] = base
    if recipe.used_as_base(stage.name) and (data.get("train") or {}).get("lora") is not None:
        data.setdefault("save", {})["full_model"] = True
    if below is not None and (stage.concept_prior or stage.concept_preservation):
        keep_concept(data, below, ref, stage_dir(recipe, ref).parent, prior=stage.concept_prior,
                     preservation=stage.concept_preservation, source=source)
    return resolve_config(config_from_dict(data, source=source))


def keep_concept(data: dict[str, Any], concept: RunConfig, concept_name: str, root: Path, *, prior: int | None,
                 preservation: bool, source: str) -> None:
    """Add to a person run's config (dict, in place) what keeps the concept run's concept: class images of its
    prompts (``prior``: how many, in ROOT/class-images/<concept>-prompts) and/or its prompts in
    ``train.preservation``. Shared by recipes and ``sdtune personalize``."""
    from sdtune.recipes.runs import concept_prior, prior_folder, training_prompts

    section = data.setdefault("data", {})
    if prior:
        section.setdefault("subsets", []).append(concept_prior(
            concept, prior_folder(root, concept_name), prior, float(section.get("prior_loss_weight", 1.0))))
    if preservation:
        train = data.setdefault("train", {})
        if not isinstance(train.get("preservation"), dict):
            raise ConfigError(f"{source}: concept_preservation adds the concept's prompts to train.preservation; "
                              "set train.preservation (e.g. {weight: 1.0}) or remove concept_preservation")
        keep = train["preservation"]
        own = list(keep.get("prompts") or ([section["class_prompt"]] if section.get("class_prompt") else []))
        keep["prompts"] = list(dict.fromkeys([*own, *training_prompts(concept)]))


def stage_configs(recipe: Recipe) -> list[tuple[Stage, RunConfig]]:
    return [(stage, stage_config(recipe, stage)) for stage in recipe.stages]
