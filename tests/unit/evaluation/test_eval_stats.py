"""Mean and spread over seeds, overall and per prompt."""

from __future__ import annotations

import math

import pytest

from sdtune.evaluation.stats import Summary, per_prompt, summarize

VALUES = {("a", 0): 10.0, ("b", 0): 20.0, ("a", 1): 14.0, ("b", 1): 26.0, ("a", 2): 12.0, ("b", 2): 20.0}


def test_overall_std_is_over_per_seed_means():
    s = summarize(VALUES, [0, 1, 2])
    seed_means = [15.0, 20.0, 16.0]
    m = sum(seed_means) / 3
    assert s.mean == pytest.approx(17.0) and s.n == 6
    assert s.std == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in seed_means) / 2))


def test_per_prompt_spread_and_values():
    rows = per_prompt(VALUES, ["a", "b"], [0, 1, 2])
    assert rows[0]["prompt"] == "a" and rows[0]["mean"] == pytest.approx(12.0) and rows[0]["std"] == pytest.approx(2.0)
    assert rows[1]["per_seed"] == {"0": 20.0, "1": 26.0, "2": 20.0}


def test_one_seed_has_no_spread_and_empty_is_na():
    assert summarize({("a", 0): 3.0}, [0]).std is None
    assert summarize({}, [0, 1]) == Summary(None, None, 0)
    assert Summary(None, None, 0).text() == "n/a"
    assert Summary(30.7712, 1.2, 8).text() == "30.77 ± 1.20"
    assert Summary(0.5, None, 1).text(3) == "0.500"
