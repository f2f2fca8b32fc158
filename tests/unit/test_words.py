"""Counts in messages agree with their nouns: "1 step", "1 person", never "1 steps" or "image(s)" (found by a new
user: `sdtune train` ended with "done: 1 steps"; `dataset check` said "1 images", the page "1 images")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sdtune.words import counted, first_few, plural

SRC = Path(__file__).resolve().parents[2] / "src" / "sdtune"


@pytest.mark.parametrize("n,word,expected", [
    (1, "image", "1 image"), (0, "image", "0 images"), (2, "image", "2 images"), (1, "person", "1 person"),
    (3, "person", "3 people"), (2, "process", "2 processes"), (2, "batch", "2 batches"), (2, "entry", "2 entries"),
    (2, "key", "2 keys"), (2, "class image", "2 class images"), (2, "CUDA GPU", "2 CUDA GPUs"),
    (1.0, "step", "1.0 step"),
])
def test_counted(n: float, word: str, expected: str) -> None:
    assert counted(n, word) == expected


def test_verbs_and_given_plurals_agree_too() -> None:
    assert [plural(1, "has"), plural(2, "has"), plural(2, "is"), plural(2, "it")] == ["has", "have", "are", "them"]
    assert plural(1, "fits", "fit") == "fits" and plural(4, "fits", "fit") == "fit"


# A count ({len(x)}, {n}, {steps}, {report.images}, ...) printed beside a noun written in the plural ("{n} images",
# `${n} files`, "{len(x)} class images"), or a hedge ("encoder(s)").
_COUNT = (r"(?:len\([^{}]*\)|n|done|total|[a-z_.]*(?:count|num_|steps|seeds|images|attempts|layers|written|kept|"
          r"missing|replaced|frames|examples|processes|errors|prompts|length|size)[a-z_.\[\]']*)(?:\s*[-+]\s*\d+)?")
_FIXED_PLURAL = re.compile(r"\$?\{" + _COUNT + r"\}\s+(?:[a-z-]+\s)?[a-z]+(?:s|es|ple)\b|[a-z]\((?:e?s)\)")
_VERBS = {"resumes", "is", "was", "has", "does", "as", "vs", "this", "its", "plus", "lets", "needs", "holds", "lacks",
          "starts", "runs"}


def test_no_message_in_src_prints_a_count_beside_a_fixed_plural() -> None:
    """Every such message goes through sdtune.words (Python) or counted() (the page's app.js)."""
    found = []
    for file in sorted([*SRC.rglob("*.py"), *SRC.rglob("*.js")]):
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0] if file.suffix == ".py" else line
            if not ('f"' in code or "f'" in code if file.suffix == ".py" else "`" in code):
                continue  # only f-strings and template strings print counts
            hits = [m.group(0) for m in _FIXED_PLURAL.finditer(code) if m.group(0).split()[-1] not in _VERBS]
            if hits:
                found.append(f"{file.relative_to(SRC)}:{number}: {hits}")
    assert not found, "\n".join(found)


def test_first_few_names_a_few_and_says_when_there_are_more() -> None:
    assert first_few(["a", "b"], 3) == "a, b"
    assert first_few(["a", "b", "c"], 3) == "a, b, c"
    assert first_few(["a", "b", "c", "d"], 3, "; ") == "a; b; c ..."
