"""The demo evaluates two models at once (its training leaves a core idle): the results must be bitwise those of
one at a time, since the demo's numbers are one of its benchmark's runs to the last digit."""

from __future__ import annotations

import numpy as np

from sdtune.toy.demo_eval import evaluate_models
from sdtune.toy.demo_settings import DemoSettings
from sdtune.toy.evaluate import summary


def test_two_at_a_time_is_one_at_a_time() -> None:
    settings = DemoSettings.quick()
    models = {"base": "toy", "again": "toy", "third": "toy"}
    one = evaluate_models(models, settings, workers=1)
    two = evaluate_models(models, settings, workers=2)
    assert list(two) == list(models)
    for name in models:
        assert summary(one[name]) == summary(two[name])
        for group in ("old", "person", "composite"):
            assert all(np.array_equal(np.asarray(a), np.asarray(b))
                       for a, b in zip(one[name][group]["images_pil"], two[name][group]["images_pil"], strict=True))
