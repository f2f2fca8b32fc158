"""Config errors a user can act on: where a value came from, what was given, what is allowed, the nearest key.

Pydantic says "train.learning_rat: Extra inputs are not permitted" and blames nothing in particular; a run config
is a YAML file plus ``a.b=c`` overrides, so each line here names its origin (``override a.b=c`` or the file), echoes
the value and the allowed ones, and suggests the closest valid key (difflib).
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from sdtune import typed_yaml

MINIMAL_CONFIG = ("A run config needs at least:\n"
                  "    data.train_dir                            a captioned folder (text-to-image), or\n"
                  "    data.instance_dir + data.instance_prompt  DreamBooth: photos + 'a photo of sks person'\n"
                  "  and usually model.base. Ready configs to start from: configs/ (e.g. sd15-dreambooth-lora.yaml)")


def _model_at(schema: Any, keys: list[str]) -> type[BaseModel] | None:
    """The pydantic model the dotted key ``keys`` holds in ``schema`` (None when it is not a section)."""
    ann = typed_yaml.at(schema, keys) if keys else schema
    stack = [ann]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
        stack.extend(getattr(item, "__args__", ()) or ())
    return None


def suggest_key(schema: Any, parts: list[str], keys: list[str]) -> str | None:
    """The valid key closest to a misspelt one: a sibling (``train.learning_rat``), else a key of the same
    name in another section (``learning_rate`` -> ``train.learning_rate``; ``keys``: every dotted key)."""
    parent = _model_at(schema, parts[:-1])
    if parent is not None:
        close = difflib.get_close_matches(parts[-1], list(parent.model_fields), n=1, cutoff=0.6)
        if close:
            return ".".join([*parts[:-1], close[0]])
    if keys:
        # The shallowest key of that name: `learning_rate` means train.learning_rate, not a nested one such as
        # train.textual_inversion.learning_rate (the order of ``keys`` is the schema's, not the user's likelihood).
        same = sorted((key for key in keys if key.rsplit(".", 1)[-1] == parts[-1]), key=lambda k: k.count("."))
        close = same or difflib.get_close_matches(".".join(parts), keys, n=1, cutoff=0.75)
        if close:
            return close[0]
    return None


def _origin(loc: str, overrides: list[str]) -> str | None:
    """The ``a.b=c`` override that set ``loc`` (the last one wins, as when applying them), else None; also one that
    set a key inside ``loc`` (``train.atention_loss.weight=1`` makes the unknown section ``train.atention_loss``)."""
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if loc == key or loc.startswith(key + ".") or key.startswith(loc + "."):
            return item
    return None


def as_written(value: Any) -> str:
    """A config value as a user writes it in YAML or an override: ``null``, ``true``/``false``; anything else as
    Python shows it (``0.001``, ``'cosine'``, ``[1, 2]``). Messages that quote a value use this, so they never ask
    for ``None`` where the config says ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _shown(value: Any) -> str:
    text = as_written(value)
    return text if len(text) <= 60 else text[:57] + "..."


# pydantic's error types for a number outside its Field's bounds: "input should be less than 1" says the limit but
# not what the key does, so the message adds the field's description (what a value means, and so what to choose)
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"})


# pydantic's error types for a single value where a section of keys belongs (``train.attention_loss=true``)
_NOT_A_SECTION = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _not_a_section(schema: Any, parts: list[str], subject: str, given: Any) -> str:
    """``train.ema = true: a section of keys (decay, ...): write train.ema={} for its defaults ...``: how to turn a
    section on (pydantic says "a valid dictionary or instance of EMAConfig", a class no user wrote)."""
    from sdtune.config_base import is_number_key

    loc = ".".join(parts)
    model = _model_at(schema, parts)
    fields = list(model.model_fields) if model is not None else []
    optional = type(None) in getattr(typed_yaml.at(schema, parts), "__args__", ())
    # the key the value was likely meant for: the first number key for a number (train.lora=4: rank)
    numbers = [name for name in fields if is_number_key(model.model_fields[name].annotation)] if model else []
    if numbers and isinstance(given, int | float) and not isinstance(given, bool):
        one = f", {loc}.{numbers[0]}={given} to set its {numbers[0]}"
    else:
        one = f", {loc}.{fields[0]}=... to set one" if fields else ""
    return (f"{subject} = {_shown(given)}: a section of keys ({', '.join(fields)}), not a single value: write "
            f"{loc}={{}} for its defaults{one}" + (f", or {loc}=null for none" if optional else ""))


def _meaning(schema: Any, parts: list[str]) -> str:
    """The description of the field at dotted ``parts`` in ``schema`` ("" when it has none)."""
    parent = _model_at(schema, parts[:-1])
    field = parent.model_fields.get(parts[-1]) if parent is not None else None
    return (field.description or "") if field is not None else ""


def format_validation_error(exc: ValidationError, source: str, overrides: list[str] | tuple[str, ...] = (), *,
                            schema: Any, keys: list[str] | None = None, missing: dict[str, str] | None = None) -> str:
    """One line per problem, saying where the value came from (``override a.b=c`` or the file), the value given
    and what is allowed; for an unknown key, the closest valid key.

    ``schema``: the pydantic model validated; ``keys``: all its dotted keys (for misplaced keys); ``missing``:
    what to say when a required top-level key is missing (``{"data": MINIMAL_CONFIG}`` for a run config).
    """
    overrides = list(overrides)
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"] if not str(p).startswith("function-after")]
        loc, kind = ".".join(parts), err["type"]
        section = bool(parts) and _model_at(schema, parts) is not None  # a check across keys of a section
        item = _origin(loc, overrides) if loc and not section else None
        subject = (f"override {item}" if item else f"{source}: {loc}" if overrides and source and loc and not section
                   else loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            close = suggest_key(schema, parts, keys or [])
            lines.append(f"{subject}: unknown key; " + (f"did you mean {close}?" if close else
                                                         "`sdtune config-keys` lists the keys"))
        elif kind == "missing" and missing and loc in missing:
            lines.append(f"{loc}: missing. {missing[loc]}")
        elif kind == "missing":
            lines.append(f"{subject}: required, not set")
        elif section and kind in _NOT_A_SECTION and "input" in err:
            lines.append(_not_a_section(schema, parts, subject, err["input"]))
        elif kind == "literal_error":
            allowed = (err.get("ctx") or {}).get("expected", "")
            lines.append(f"{subject}: {_shown(err['input'])} is not allowed; use {allowed}")
        elif loc and not section and "input" in err:
            given = "" if item else f" = {_shown(err['input'])}"
            meaning = _meaning(schema, parts) if kind in _RANGE_ERRORS else ""
            lines.append(f"{subject}{given}: {msg[:1].lower()}{msg[1:]}" + (f" ({parts[-1]}: {meaning})" if meaning
                                                                           else ""))
        else:
            lines.append(f"{subject}: {msg}" if subject else msg)  # a check across sections names its keys
    header = "invalid config" + ("" if overrides or not source else f" {source}")
    if len(lines) == 1:
        return f"{header}: {lines[0]}"
    return f"{header}:\n  " + "\n  ".join(lines)
