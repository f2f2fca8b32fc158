"""Counts in messages: "1 image", "2 images", "1 person", "3 people" (never "1 images" or "image(s)"), and the
first few of a list ("a.png, b.png ...").

The one place plurals are made, low in the layers (it imports nothing of sdtune), so every message that prints a
count beside a noun says it right. Verbs that agree with a count use the same call: ``plural(n, "has", "have")``.
"""

from __future__ import annotations

# Words whose plural the rules below get wrong (nouns) and the verbs messages make agree with a count.
IRREGULAR = {"person": "people", "child": "children", "is": "are", "was": "were", "has": "have", "does": "do",
             "it": "them", "this": "these", "that": "those", "matrix": "matrices", "index": "indices"}


def plural(n: float, word: str, many: str | None = None) -> str:
    """``word`` as it goes with ``n`` things: itself for exactly 1, else its plural (``many``, or made by rule).

    A phrase is made plural by its last word ("class image" -> "class images"). Rules: an irregular word from
    :data:`IRREGULAR`; ``-s``, ``-x``, ``-z``, ``-ch``, ``-sh`` take ``-es`` (process, batch); a consonant then ``-y``
    becomes ``-ies`` (entry); anything else takes ``-s``.
    """
    if n == 1:
        return word
    if many is not None:
        return many
    head, _, last = word.rpartition(" ")
    prefix = f"{head} " if head else ""
    return prefix + _plural_word(last)


def counted(n: float, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` agreeing with it: ``counted(1, "step")`` is "1 step", ``counted(0, "step")`` "0 steps"."""
    return f"{n} {plural(n, word, many)}"


def first_few(items: list[str], n: int, sep: str = ", ") -> str:
    """The first ``n`` of ``items`` joined by ``sep``, then " ..." when there are more: a message names a few of
    many files, not all of them."""
    return sep.join(items[:n]) + (" ..." if len(items) > n else "")


def _plural_word(word: str) -> str:
    lower = word.lower()
    if lower in IRREGULAR:
        return IRREGULAR[lower] if word == lower else IRREGULAR[lower].capitalize()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"
