"""The data stream: position-addressed and deterministic, so a resumed run sees the same examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdtune.config import config_from_dict
from sdtune.data.subsets import StreamPositions, build_stream, collate
from sdtune.errors import DataError
from sdtune.models.presets import build_tiny_tokenizer
from tests.helpers import make_images


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _cfg(tmp: Path, **data):
    return config_from_dict({"data": {"resolution": 16, **data}}).data


def test_stream_is_deterministic_and_epochs_are_permutations(tmp_path: Path, tokenizer) -> None:
    folder = make_images(tmp_path / "c", 5, captions=["a", "b", "c", "d", "e"])
    data = _cfg(tmp_path, train_dir=str(folder), random_flip=True, center_crop=False, caption_dropout=0.3)
    one, two = build_stream(data, tokenizer, seed=3), build_stream(data, tokenizer, seed=3)
    for position in (0, 4, 7, 12):  # a fresh stream (as after resume) gives the same item
        a, b = one[position], two[position]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    epoch0 = {one.train_order.item(p)[0] for p in range(5)}
    assert epoch0 == set(range(5))
    other = build_stream(data, tokenizer, seed=4)
    assert [one.train_order.item(p) for p in range(10)] != [other.train_order.item(p) for p in range(10)]


def test_positions_split_micro_steps_across_ranks() -> None:
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    assert take(StreamPositions(0, 2, 2, 0), 4) == [0, 1, 4, 5]
    assert take(StreamPositions(0, 2, 2, 1), 4) == [2, 3, 6, 7]
    assert take(StreamPositions(3, 2, 1, 0), 2) == [6, 7]  # resume at micro-step 3


def test_prior_preservation_pairs_class_examples(tmp_path: Path, tokenizer) -> None:
    data = _cfg(tmp_path, instance_dir=str(make_images(tmp_path / "i", 3)), instance_prompt="sks",
                with_prior_preservation=True, class_dir=str(make_images(tmp_path / "k", 4)), class_prompt="dog",
                prior_loss_weight=0.25)
    stream = build_stream(data, tokenizer, seed=0)
    batch = collate([stream[0], stream[1]])
    (group,) = batch["groups"]  # the same shape: one forward, class examples after the training ones
    assert group["pixel_values"].shape == (4, 3, 16, 16) and int(batch["num_train"]) == 2
    assert group["loss_weight"].tolist() == [1.0, 1.0, 0.25, 0.25]


def test_repeats_and_missing_captions(tmp_path: Path, tokenizer) -> None:
    data = _cfg(tmp_path, instance_dir=str(make_images(tmp_path / "i", 3)), instance_prompt="sks", repeats=4)
    assert len(build_stream(data, tokenizer, seed=0)) == 12
    with pytest.raises(DataError, match="has no caption"):
        build_stream(_cfg(tmp_path, train_dir=str(tmp_path / "i")), tokenizer, seed=0)
