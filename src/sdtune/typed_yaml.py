"""YAML read the way the user meant it: YAML 1.2 scalars, each read in the light of the key it sets.

PyYAML implements YAML 1.1, where ``no``, ``yes``, ``on`` and ``off`` are booleans, ``010`` is octal and ``1e3``
is a string. In a config that turns ``mixed_precision: no`` into ``False`` (then rejected: "Input should be
'no', 'fp16' or 'bf16'"), ``run_name: 2024`` into an int and ``revision: 1.0`` into a float. Two rules fix
the whole kind, for files and ``a.b=c`` overrides alike:

1. Plain scalars follow YAML 1.2's core schema (booleans are ``true``/``false`` only; ``1e3`` is a number).
2. The schema (a pydantic model) says what each key holds. A key that holds text (``str``, a ``Literal`` of
   strings, a ``Path``, or a list of them) keeps a plain scalar exactly as typed (``no``, ``2024``, ``1.0``,
   ``1e3``); only ``null``/``~`` still mean "unset". A boolean key also takes YAML 1.1's words (``yes``,
   ``no``, ``on``, ``off``), because there they can only mean a boolean. Other keys get rule 1.

Quoted scalars are always text; explicit tags (``!!str``, ``!!int``) are honoured. ``<<`` merge keys and
anchors work; a key given twice in one mapping is an error (YAML forbids it, PyYAML keeps the last silently).
A dict field whose keys are run-config keys (a recipe's ``defaults``) is marked ``Annotated[dict, ShapedAs(M)]``.

Writing: :func:`dump` quotes every string that a YAML 1.1 *or* 1.2 reader would take for something else, so
a saved config reads back the same in PyYAML, ruamel, Hugging Face tools and here.
"""

from __future__ import annotations

import math
import re
import types
from pathlib import PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

_PLAIN = "tag:sdtune,2026:plain"  # a plain (unquoted, untagged) scalar: resolved later, knowing its key
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {".inf": math.inf, ".Inf": math.inf, ".INF": math.inf, "+.inf": math.inf, "+.Inf": math.inf,
                  "+.INF": math.inf, "-.inf": -math.inf, "-.Inf": -math.inf, "-.INF": -math.inf,
                  ".nan": math.nan, ".NaN": math.nan, ".NAN": math.nan}
# YAML 1.1 boolean words: accepted for boolean keys only (pydantic accepts the same words for bool fields).
_BOOL_WORDS = {"yes": True, "y": True, "on": True, "true": True, "no": False, "n": False, "off": False,
               "false": False}


class ShapedAs:
    """``Annotated`` marker: this ``dict[str, Any]`` field holds the keys of ``model`` (e.g. a recipe's defaults)."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model


class YamlError(ValueError):
    """The text is not YAML, or not YAML this reader accepts (duplicate key, recursive alias, unknown tag)."""


# ----------------------------------------------------------------------------- what a key holds


def _members(ann: Any) -> list[Any]:
    """The alternatives of a type, ``None`` left out, ``Annotated`` stripped."""
    if get_origin(ann) is Annotated:
        return _members(get_args(ann)[0])
    if get_origin(ann) in (Union, types.UnionType):
        return [m for arg in get_args(ann) for m in _members(arg)]
    return [] if ann is type(None) else [ann]


def _shaped(ann: Any) -> Any:
    """Replace ``Annotated[dict, ShapedAs(M)]`` by ``M``; drop ``None`` from an optional."""
    if get_origin(ann) is Annotated:
        marks = [m for m in get_args(ann)[1:] if isinstance(m, ShapedAs)]
        return marks[0].model if marks else _shaped(get_args(ann)[0])
    members = _members(ann)
    return _shaped(members[0]) if len(members) == 1 and members[0] is not ann else ann


def child(ann: Any, key: str | int) -> Any:
    """What ``ann[key]`` holds: a field of a model, an item of a list, a value of a dict; None when unknown."""
    ann = _shaped(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        field = ann.model_fields.get(str(key))
        if field is None:
            return None
        marks = [m for m in field.metadata if isinstance(m, ShapedAs)]
        return marks[0].model if marks else field.annotation
    origin, args = get_origin(ann), get_args(ann)
    if origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def at(schema: Any, keys: list[str]) -> Any:
    """What the dotted key ``keys`` holds in ``schema`` (list indices are numbers as text); None when unknown."""
    ann = schema
    for key in keys:
        if ann is None:
            return None
        ann = child(ann, key)
    return ann


def _is_text(ann: Any) -> bool:
    members = _members(ann)
    if not members:
        return False
    for member in members:
        if get_origin(member) is Literal:
            if not all(isinstance(v, str) for v in get_args(member)):
                return False
        elif not (isinstance(member, type) and issubclass(member, str | PurePath)):
            return False
    return True


def _is_bool(ann: Any) -> bool:
    members = _members(ann)
    return bool(members) and all(m is bool for m in members)


# ----------------------------------------------------------------------------- scalars


def core_scalar(text: str) -> Any:
    """A plain scalar under YAML 1.2's core schema: null, bool, int (also 0o/0x), float, else the text."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if re.match(r"^0o[0-7]+$", text):
        return int(text[2:], 8)
    if re.match(r"^0x[0-9a-fA-F]+$", text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    if text in _SPECIAL_FLOAT:
        return _SPECIAL_FLOAT[text]
    return text


def plain_scalar(text: str, ann: Any) -> Any:
    """A plain scalar set on a key that holds ``ann`` (None: unknown key)."""
    if ann is not None and _is_text(ann):
        return None if _NULL.match(text) else text
    if ann is not None and _is_bool(ann) and text.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[text.lower()]
    return core_scalar(text)


# ----------------------------------------------------------------------------- reading


class _Loader(yaml.SafeLoader):
    """Composes nodes only; plain scalars get a private tag so the schema can resolve them."""

    def resolve(self, kind, value, implicit):  # noqa: ANN001 - PyYAML's signature
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


class _Builder:
    def __init__(self) -> None:
        self.tagged = yaml.constructor.SafeConstructor()
        self.active: set[int] = set()

    def build(self, node: yaml.Node, ann: Any) -> Any:
        if id(node) in self.active:
            raise YamlError(f"line {node.start_mark.line + 1}: an alias refers to itself")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, ann)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, child(ann, i) if ann is not None else None)
                        for i, item in enumerate(node.value)]
            if node.tag == _PLAIN:
                return plain_scalar(node.value, ann)
            if node.tag == "tag:yaml.org,2002:str":
                return node.value
            try:
                return self.tagged.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                raise YamlError(str(exc)) from None
        finally:
            self.active.discard(id(node))

    def _key(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return core_scalar(node.value) if node.tag == _PLAIN else self.build(node, None)
        raise YamlError(f"line {node.start_mark.line + 1}: a mapping key must be a plain value")

    def _mapping(self, node: yaml.MappingNode, ann: Any) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _PLAIN and key_node.value == "<<":
                merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                continue
            key = self._key(key_node)
            if key in out:
                raise YamlError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice in one mapping "
                                "(the first would be silently ignored); keep one")
            out[key] = self.build(value_node, child(ann, key) if ann is not None else None)
        for source in merged:  # merged mappings fill in keys the mapping does not set itself; earlier ones win
            if not isinstance(source, yaml.MappingNode):
                raise YamlError(f"line {source.start_mark.line + 1}: '<<' merges mappings only")
            for key, value in self._mapping(source, ann).items():
                out.setdefault(key, value)
        return out


def load(text: str, schema: Any = None) -> Any:
    """Parse one YAML document; ``schema`` (a pydantic model or type) says what each key holds.

    Raises :class:`YamlError` (a ValueError) with the line for text that is not YAML this reader accepts.
    """
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:  # one line with the position, not PyYAML's "<unicode string>" excerpts
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        context = (f" ({exc.context} at line {exc.context_mark.line + 1})"
                   if exc.context and exc.context_mark is not None else "")
        raise YamlError(f"{where}{exc.problem or exc}{context}") from None
    except yaml.YAMLError as exc:
        raise YamlError(str(exc)) from None
    return None if node is None else _Builder().build(node, schema)


def load_value(raw: str, ann: Any) -> Any:
    """The value of an ``a.b=RAW`` override for a key that holds ``ann``.

    Text keys take RAW as typed, whole (``a photo: #1`` is a prompt, not a mapping and a comment); only a
    null word, or RAW quoted as one YAML string, is read as YAML. Other keys read RAW as a YAML value.
    """
    if raw == "":
        return ""
    if ann is not None and _is_text(ann):
        if _NULL.match(raw):
            return None
        if raw[0] in "'\"":
            try:
                value = load(raw, ann)
            except YamlError:
                return raw
            return value if isinstance(value, str) else raw
        return raw
    return load(raw, ann)


# ----------------------------------------------------------------------------- writing


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings YAML 1.2 would read as a number (``1e3``, ``0o17``, ``.5``)."""


for _first, _pattern in (("-+0123456789.", _FLOAT), ("-+0123456789", _INT), ("0", re.compile(r"^0o[0-7]+$")),
                         ("0", re.compile(r"^0x[0-9a-fA-F]+$"))):
    _Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _pattern, list(_first))


def dump(data: Any) -> str:
    """YAML text that reads back as ``data`` under YAML 1.1 and 1.2 readers alike (keys in the given order)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
