"""Aspect-ratio buckets: whole images reach the VAE, batches are one shape, the order is exact on resume."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sdtune.config import config_from_dict
from sdtune.data.buckets import PositionOrder, bucket_resolutions, bucket_step_of, nearest_bucket
from sdtune.data.subsets import StreamPositions, build_stream, collate
from sdtune.models.presets import build_tiny_tokenizer
from tests.helpers import make_images

EDGE_MARKS = {"left": (255, 0, 0), "top": (0, 255, 0), "right": (0, 0, 255), "bottom": (255, 255, 0)}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _marked_photo(path: Path, width: int, height: int) -> None:
    """Grey photo with a coloured band on each edge, 1/16 of the side deep from the border inward, minus 1 %:
    a band survives only if at most 1/16 of that side was cut away."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    dx, dy = int(width * (1 / 16 + 0.01)), int(height * (1 / 16 + 0.01))
    draw.rectangle((0, 0, dx, height), fill=EDGE_MARKS["left"])
    draw.rectangle((0, 0, width, dy), fill=EDGE_MARKS["top"])
    draw.rectangle((width - 1 - dx, 0, width, height), fill=EDGE_MARKS["right"])
    draw.rectangle((0, height - 1 - dy, width, height), fill=EDGE_MARKS["bottom"])
    image.save(path)


def _edge_colour(pixels: torch.Tensor, edge: str) -> np.ndarray:
    """Mean RGB (0-255) of the outermost 2-pixel strip of a C,H,W tensor in [-1, 1], away from the corners."""
    rgb = ((pixels.permute(1, 2, 0).numpy() + 1) * 127.5)
    h, w = rgb.shape[:2]
    mid = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    strips = {"left": rgb[mid[0], :2], "right": rgb[mid[0], -2:], "top": rgb[:2, mid[1]], "bottom": rgb[-2:, mid[1]]}
    return strips[edge].reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("size", [(768, 1024), (1024, 768), (1920, 1080), (1080, 1920), (900, 900), (1200, 800)],
                         ids=["portrait-3:4", "landscape-4:3", "landscape-16:9", "portrait-9:16", "square", "3:2"])
def test_pixels_reaching_the_vae_cover_the_image_minus_at_most_a_sixteenth_per_side(tmp_path: Path, tokenizer,
                                                                                      size) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    _marked_photo(folder / "photo.png", *size)
    data = config_from_dict({"data": {"instance_dir": str(folder), "instance_prompt": "sks", "resolution": 512}}).data
    stream = build_stream(data, tokenizer, seed=0, bucket_step=64)
    pixels = stream[0]["pixel_values"]
    h, w = pixels.shape[1:]
    assert w % 64 == 0 and h % 64 == 0 and 0.8 <= w * h / 512**2 <= 1.0625
    assert abs(math.log((w / h) / (size[0] / size[1]))) < 0.13  # the shape follows the photo's
    for edge, colour in EDGE_MARKS.items():
        seen = _edge_colour(pixels, edge)
        assert np.abs(seen - np.array(colour)).max() < 40, f"{edge} edge band cut away: saw {seen}"


def test_buckets_cover_every_common_aspect_within_a_sixteenth() -> None:
    buckets = bucket_resolutions(512, 64)
    assert (512, 512) in buckets and all(w % 64 == 0 and h % 64 == 0 for w, h in buckets)
    for i in range(301):  # aspects 1:3 .. 3:1
        aspect = math.exp(math.log(3) * (i / 150 - 1))
        w, h = nearest_bucket(round(1000 * aspect), 1000, buckets)
        cut = 1 - min(aspect, w / h) / max(aspect, w / h)
        assert cut / 2 <= 1 / 16, (aspect, (w, h))


def test_bucket_step_follows_the_model() -> None:
    sd = ({"block_out_channels": [128, 256, 512, 512]}, {"down_block_types": ["x"] * 4})
    tiny = ({"block_out_channels": [16, 32]}, {"down_block_types": ["x"] * 2})
    assert bucket_step_of(*sd) == 64 and bucket_step_of(*tiny) == 4


def test_every_batch_is_one_bucket_and_every_image_is_seen_each_epoch() -> None:
    buckets = ["a"] * 5 + ["b"] * 2 + ["c"]
    order = PositionOrder(buckets, batch=2, seed=3, salt=0)
    assert order.epoch_length == 6 + 2 + 2  # each bucket padded to whole batches with its own items
    for epoch in range(3):
        items = [order.item(epoch * order.epoch_length + p) for p in range(order.epoch_length)]
        assert {i for i, e in items} == set(range(8)) and {e for _, e in items} == {epoch}
        for start in range(0, order.epoch_length, 2):
            assert len({buckets[items[start][0]], buckets[items[start + 1][0]]}) == 1
    again = PositionOrder(buckets, batch=2, seed=3, salt=0)  # a resumed process rebuilds the same order
    assert [order.item(p) for p in range(40)] == [again.item(p) for p in range(40)]
    assert [order.item(p) for p in range(10)] != [PositionOrder(buckets, 2, 4, 0).item(p) for p in range(10)]


def test_bucketed_stream_batches_are_one_shape_on_every_rank_and_resume_exactly(tmp_path: Path, tokenizer) -> None:
    folder = make_images(tmp_path / "mixed", 3, size=(40, 36))
    make_images(tmp_path / "tall", 2, size=(24, 48))
    for i, p in enumerate(sorted((tmp_path / "tall").iterdir())):
        p.rename(folder / f"tall{i}.png")
    data = config_from_dict({"data": {"instance_dir": str(folder), "instance_prompt": "sks", "resolution": 32,
                                      "random_flip": True}}).data
    stream = build_stream(data, tokenizer, seed=5, batch_size=2, bucket_step=4)
    assert len(set(stream.train_targets)) == 2
    for rank in (0, 1):
        positions = iter(StreamPositions(0, 2, 2, rank))
        for _ in range(6):
            batch = collate([stream[next(positions)], stream[next(positions)]])
            (group,) = batch["groups"]
            assert group["pixel_values"].shape[0] == 2
    resumed = build_stream(data, tokenizer, seed=5, batch_size=2, bucket_step=4)
    for position in (9, 10, 17):
        assert torch.equal(stream[position]["pixel_values"], resumed[position]["pixel_values"])


def test_class_images_of_another_bucket_are_their_own_forward(tmp_path: Path, tokenizer) -> None:
    data = config_from_dict({"data": {
        "instance_dir": str(make_images(tmp_path / "i", 2, size=(24, 48))), "instance_prompt": "sks",
        "with_prior_preservation": True, "class_dir": str(make_images(tmp_path / "k", 3, size=(32, 32))),
        "class_prompt": "dog", "prior_loss_weight": 0.5, "resolution": 32}}).data
    stream = build_stream(data, tokenizer, seed=0, batch_size=2, bucket_step=4)
    batch = collate([stream[0], stream[1]])
    train, cls = batch["groups"]
    assert train["pixel_values"].shape == (2, 3, 44, 24) and cls["pixel_values"].shape == (2, 3, 32, 32)
    assert cls["loss_weight"].tolist() == [0.5, 0.5] and int(batch["num_train"]) == 2
    off = config_from_dict({"data": {**data.model_dump(mode="json"), "buckets": False}}).data
    (group,) = collate([build_stream(off, tokenizer, seed=0)[0]])["groups"]  # no buckets: the square, as before
    assert group["pixel_values"].shape == (2, 3, 32, 32)
