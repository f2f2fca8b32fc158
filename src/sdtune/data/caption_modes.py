"""How a captioner's text meets the captions images already have: modes, template, trigger word and class.

Pure string logic (no model), so ``dataset build`` and its tests share one rule:

* ``fill`` (default): only images without a caption get one; an existing caption is never touched.
* ``replace``: every image gets the captioner's caption; existing ones are dropped (asked for explicitly).
* ``prefix``: ``"<generated>, <existing>"``; ``suffix``: ``"<existing>, <generated>"`` (each alternative of an
  image with several captions is extended); an image without a caption gets the generated one.

A trigger word and a class (``--trigger sks --class person``) form the lead ``"sks person"`` that stays in front of
every caption the captioner writes or extends: ``"sks person, <caption>"``. A caption that already starts with the
lead keeps it once, in front (``prefix`` moves it ahead of the generated text).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODES = ("fill", "replace", "prefix", "suffix")
DEFAULT_TEMPLATE = "{caption}"


@dataclass(frozen=True)
class CaptionSettings:
    """What ``dataset build`` captions with and how; ``prompt``/``max_new_tokens`` None: the model kind's default."""

    model: str | Path
    mode: str = "fill"
    trigger: str | None = None
    class_word: str | None = None
    template: str = DEFAULT_TEMPLATE
    prompt: str | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None
    device: str | None = None
    dtype: str = "auto"

    def __post_init__(self) -> None:
        from sdtune.errors import DataError

        if self.mode not in MODES:
            raise DataError(f"caption mode {self.mode!r} is not one of {', '.join(MODES)} (fill: only images "
                            "without a caption; replace: all; prefix/suffix: add to the existing caption)")

    @property
    def lead(self) -> str:
        return lead_phrase(self.trigger, self.class_word)


def apply_template(template: str, caption: str) -> str:
    """Fill ``{caption}``; a template without the placeholder is a prefix (``"sks person, "`` + caption)."""
    if "{caption}" in template:
        return template.replace("{caption}", caption).strip()
    return f"{template}{caption}".strip()


def lead_phrase(trigger: str | None, class_word: str | None) -> str:
    """``"sks person"`` from the trigger word and the class, either may be missing."""
    return " ".join(part.strip() for part in (trigger, class_word) if part and part.strip())


def needs_caption(mode: str, existing: tuple[str, ...]) -> bool:
    """Whether the captioner runs on an image: always, except ``fill`` on an image that has a caption."""
    return mode != "fill" or not existing


def combine(mode: str, existing: tuple[str, ...], generated: str, lead: str = "") -> tuple[str, ...]:
    """The image's captions after captioning; ``existing`` is returned untouched in ``fill`` mode when non-empty."""
    if mode == "fill" and existing:
        return existing
    if mode in ("fill", "replace") or not existing:
        return (_with_lead(generated, lead),)
    if mode == "prefix":
        return tuple(_with_lead(_join(generated, _strip_lead(old, lead)), lead) for old in existing)
    if mode == "suffix":
        return tuple(_with_lead(_join(_strip_lead(old, lead), generated), lead) for old in existing)
    raise ValueError(f"unknown caption mode {mode!r}")


def _join(first: str, second: str) -> str:
    first, second = first.strip().rstrip(","), second.strip().lstrip(",").strip()
    return f"{first}, {second}" if first and second else first or second


def _strip_lead(caption: str, lead: str) -> str:
    text = caption.strip()
    if lead and text.lower().startswith(lead.lower()) and text[len(lead):len(lead) + 1] in ("", ",", " "):
        return text[len(lead):].lstrip(" ,")
    return text


def _with_lead(caption: str, lead: str) -> str:
    return _join(lead, _strip_lead(caption, lead)) if lead else caption.strip()
