"""sdtune installs beside the stack it is tested on: every version of torch, diffusers, transformers, peft and
accelerate that this interpreter runs the tests with lies inside pyproject.toml's ranges. CI runs the tests on the
Makefile's pinned set (.venv) and on the newest releases (.venv-newest), so a range that shuts out the newest
release (``torch<2.14`` beside torch 2.15, ``transformers==5.23.0`` beside 5.25: pip's ResolutionImpossible) fails
here on the newest stack."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
STACK = ("torch", "diffusers", "transformers", "peft", "accelerate")


def declared() -> dict[str, Requirement]:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    return {req.name: req for req in map(Requirement, deps)}


@pytest.mark.parametrize("name", STACK)
def test_the_installed_stack_is_inside_the_declared_range(name: str) -> None:
    req = declared()[name]
    assert req.specifier, f"{name} has no range in pyproject.toml"
    installed = version(name)
    assert req.specifier.contains(installed, prereleases=True), (
        f"{name} {installed} (tested here) is outside pyproject.toml's {req}: widen the range to what CI tests")


def test_no_exact_pins() -> None:
    """A user's GPU stack comes first: a range, never one release."""
    assert not [str(r) for r in declared().values() if any(s.operator in ("==", "===") for s in r.specifier)]
