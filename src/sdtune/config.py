"""The typed schema of a run: every default lives here (and in its sections, ``sdtune.config_sections``) and nowhere
else.

A run is a YAML file plus ``a.b=c`` overrides (torchtune's habit). Unknown keys, wrong types and impossible
combinations are rejected with a message that names the key and what is allowed. The resolved config is
written into the run folder and re-runs as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from sdtune import config_errors, typed_yaml
from sdtune.config_base import Section
from sdtune.config_errors import MINIMAL_CONFIG
from sdtune.config_loss_terms import AttentionLossConfig, PreservationConfig
from sdtune.config_output_sections import (
    CheckpointConfig,
    LoggingConfig,
    SaveConfig,
    ValidationConfig,
    ValidationLossConfig,
)
from sdtune.config_sections import (
    DataConfig,
    EMAConfig,
    FrozenAdapter,
    LoraConfig,
    ModelConfig,
    SubsetConfig,
    TextualInversionConfig,
    TrainConfig,
    _no_empty_path,
)
from sdtune.errors import ConfigError
from sdtune.words import counted

# the sections are defined in sdtune.config_sections, config_loss_terms and config_output_sections; used from here
__all__ = ["AttentionLossConfig", "CheckpointConfig", "DataConfig", "EMAConfig", "FrozenAdapter", "LoggingConfig",
           "LoraConfig", "ModelConfig", "PreservationConfig", "RunConfig", "SaveConfig", "Section", "SubsetConfig",
           "TextualInversionConfig", "TrainConfig", "ValidationConfig", "ValidationLossConfig", "apply_overrides",
           "config_from_dict", "dump_config", "format_validation_error", "list_keys", "load_config",
           "parse_override", "read_yaml", "resolve_config", "save_config"]


class RunConfig(Section):
    output_dir: Path = Path("runs/run")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    save: SaveConfig = Field(default_factory=SaveConfig)

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_given(cls, value: Any) -> Any:
        return _no_empty_path(value)

    @model_validator(mode="after")
    def _frozen_adapters(self) -> RunConfig:
        if self.model.adapters and self.train.lora is None and self.train.textual_inversion is None:
            raise ValueError("model.adapters (frozen LoRAs under the trained one) need train.lora or "
                             "train.textual_inversion; to fine-tune fully on a LoRA'd model, fuse it first (its "
                             "run's save.full_model)")
        learned = self.train.textual_inversion
        prompt = self.data.instance_prompt
        if learned is not None and prompt and learned.token not in prompt:
            raise ValueError(f"data.instance_prompt {prompt!r} does not contain train.textual_inversion.token "
                             f"{learned.token!r}, the word whose embedding is trained: write it into the prompt "
                             f"(e.g. 'a photo of {learned.token} person')")
        if self.data.masked_loss and self.data.unmasked_steps(self.train.max_steps) >= self.train.max_steps:
            raise ValueError(f"data.mask_start={self.data.mask_start} of {counted(self.train.max_steps, 'step')} "
                             "(train.max_steps) leaves no step with masks: lower it (0: masks from the first step), "
                             "or raise max_steps")
        if self.train.attention_loss is not None and not self.data.masked_loss:
            raise ValueError("train.attention_loss pulls the token's attention towards each photo's mask: set "
                             "data.masked_loss=true (masks in data.mask_dir or the photos' alpha channels)")
        if learned is not None and self.save.full_model:
            raise ValueError("save.full_model is for LoRA runs; a run that learns a token saves its embedding "
                             "(RUN/embeddings), loaded with load_textual_inversion next to the LoRA: remove "
                             "save.full_model")
        if self.model.adapters and self.save.full_model:
            raise ValueError("save.full_model fuses the run's LoRA into model.base alone; with model.adapters "
                             "use the stack (sdtune generate RUN) or fuse the adapters into the base first")
        return self

    @model_validator(mode="after")
    def _options(self) -> RunConfig:
        from sdtune.config_options import check_run_options

        check_run_options(self)  # combinations across sections (LoRA kinds with adapters, validation loss)
        return self

    @model_validator(mode="after")
    def _preservation(self) -> RunConfig:
        keep = self.train.preservation
        if keep is not None:
            if self.train.lora is None:
                raise ValueError("train.preservation compares the run with its starting model by switching its "
                                 "LoRA off, so it needs train.lora; for full fine-tuning use prior preservation "
                                 "(data.with_prior_preservation)")
            if not keep.resolved_prompts(self.data):
                raise ValueError("train.preservation needs prompts without the identifier: set "
                                 "train.preservation.prompts (e.g. ['a photo of a person']) or data.class_prompt")
        return self

    @property
    def is_lora(self) -> bool:
        return self.train.lora is not None

    @property
    def is_textual_inversion(self) -> bool:
        """It learns a token's embedding (alone, or with a LoRA: :attr:`is_pivotal`)."""
        return self.train.textual_inversion is not None

    @property
    def is_pivotal(self) -> bool:
        """Pivotal tuning: a token's embedding and a LoRA trained together (``sdtune.training.pivotal``)."""
        return self.train.textual_inversion is not None and self.train.lora is not None

    @property
    def is_full(self) -> bool:
        """A full fine-tune: it writes a whole model (neither a LoRA nor a learned token's embedding)."""
        return not self.is_lora and not self.is_textual_inversion

    @property
    def method(self) -> str:
        """"dreambooth-lora", "text-to-image-loha", "dreambooth-pivotal", ...: what the run trains, in model cards,
        metrics.json and recipe summaries. The adapter kind (``train.lora.kind``) is named: a LoHa is not a LoRA."""
        kind = "dreambooth" if self.data.instance_dir is not None else "text-to-image"
        adapter = self.train.lora.kind if self.train.lora is not None else "lora"
        how = ("pivotal" + ("" if adapter == "lora" else f"-{adapter}") if self.is_pivotal else "textual-inversion"
               if self.is_textual_inversion else adapter if self.is_lora else "full")
        return f"{kind}-{how}"


# ----------------------------------------------------------------------------- loading and overrides


def parse_override(text: str, schema: Any = None) -> tuple[list[str], Any]:
    """``a.b=c`` -> (['a', 'b'], value), the value read for the key it sets (``sdtune.typed_yaml``).

    Keys that hold text keep the value as typed (``train.mixed_precision=no``, ``logging.run_name=2024``);
    other keys read it as YAML 1.2 (numbers, ``true``/``false``, ``null``, ``[a, b]`` lists). ``schema``:
    the model the keys belong to (default: :class:`RunConfig`).
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value (e.g. train.max_steps=500)")
    key, raw = text.split("=", 1)
    keys = key.split(".")
    if not key or any(not part for part in keys):
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = typed_yaml.load_value(raw, typed_yaml.at(schema or RunConfig, keys))
    except typed_yaml.YamlError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str], schema: Any = None) -> dict[str, Any]:
    """Set each ``a.b=c`` override in ``data`` (a config as read from YAML); ``schema`` as for parse_override."""
    for item in overrides:
        keys, value = parse_override(item, schema)
        node: Any = data
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[int(key)]
                continue
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict | list):
                raise ConfigError(f"override '{item}': {'.'.join(keys[: depth + 1])} is not a section")
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def config_from_dict(data: dict[str, Any], source: str = "", overrides: list[str] | tuple[str, ...] = ()
                     ) -> RunConfig:
    """Validate a config dict; ``overrides``: the ``a.b=c`` overrides applied to it, so errors can name them."""
    if not data:
        raise ConfigError(f"the config{' ' + source if source else ''} is empty. {MINIMAL_CONFIG}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, overrides)) from None


def format_validation_error(exc: ValidationError, source: str, overrides: list[str] | tuple[str, ...] = (),
                            schema: Any = None) -> str:
    """``sdtune.config_errors.format_validation_error`` for a run config (default) or another ``schema``."""
    schema = schema or RunConfig
    return config_errors.format_validation_error(
        exc, source, overrides, schema=schema, keys=[key for key, _, _ in list_keys(schema)],
        missing={"data": MINIMAL_CONFIG} if schema is RunConfig else None)


def read_yaml(path: Path, schema: Any = None) -> dict[str, Any]:
    """A YAML config file as a dict, each value read for the key it sets (``schema``: default RunConfig).

    YAML 1.2 scalars, so ``mixed_precision: no`` stays the text ``no``; see ``sdtune.typed_yaml``.
    """
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist (ready ones are in configs/)")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; pass a YAML file (a run folder's config is {path / 'config.yaml'})")
    try:
        data = typed_yaml.load(path.read_text(encoding="utf-8-sig"), schema or RunConfig) or {}
    except typed_yaml.YamlError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, train:, ...)")
    return data


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (or none), apply ``a.b=c`` overrides and validate."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    return config_from_dict(data, source=str(path) if path else "", overrides=list(overrides or []))


def _absolute_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make every path in the config absolute so the saved config re-runs from any directory: every field typed
    ``Path`` in every section (walked, so a new path key cannot be forgotten: data.mask_dir once was, and a run
    could not resume from another folder), and ``model.base`` / ``model.vae`` when they name something local
    (they may be hub ids)."""
    cfg = cfg.model_copy(deep=True)
    _fix_paths(cfg, base)
    base_path = Path(cfg.model.base).expanduser()
    if base_path.exists():
        cfg.model.base = str(base_path.resolve())
    if cfg.model.vae and Path(cfg.model.vae).expanduser().exists():
        cfg.model.vae = str(Path(cfg.model.vae).expanduser().resolve())
    return cfg


def _fix_paths(section: BaseModel, base: Path) -> None:
    """In place: each ``Path`` value of ``section`` and of the sections (or lists of them) inside it made absolute
    against ``base``."""
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, Path):
            setattr(section, name, value if value.is_absolute() else (base / value.expanduser()).resolve())
        elif isinstance(value, BaseModel):
            _fix_paths(value, base)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    _fix_paths(item, base)


def resolve_config(cfg: RunConfig, cwd: Path | None = None) -> RunConfig:
    return _absolute_paths(cfg, cwd or Path.cwd())


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML that any YAML reader (1.1 or 1.2) reads back unchanged."""
    return typed_yaml.dump(cfg.model_dump(mode="json"))


def save_config(cfg: RunConfig, path: Path) -> None:
    from sdtune.atomic import atomic_write_text

    atomic_write_text(path, dump_config(cfg))


def list_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every config key with its type and default (for `sdtune config-keys`)."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        sub = None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                sub = cand
        if sub is not None and sub is not SubsetConfig:
            rows.extend(list_keys(sub, key + "."))
            continue
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        type_name = str(ann).replace("typing.", "").replace("pathlib.", "").replace("<class '", "").replace("'>", "")
        rows.append((key, type_name, default + (f"  - {field.description}" if field.description else "")))
    return rows
