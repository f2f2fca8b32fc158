"""Latent and text caches: cached batches are bitwise the uncached ones; damaged or stale entries are rebuilt."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdtune.config import config_from_dict
from sdtune.data.buckets import bucket_step_of
from sdtune.data.cache import Conditioner, attach_latent_cache, attach_text_cache
from sdtune.data.subsets import build_stream, collate
from sdtune.errors import DataError
from sdtune.models.loading import load_components
from tests.helpers import make_images


@pytest.fixture(scope="module")
def comps():
    return load_components("tiny")


def _data(tmp: Path, kind: str) -> dict:
    mixed = make_images(tmp / "mixed", 3, size=(40, 36), captions=["a red disc", "a ball"])
    make_images(tmp / "tall", 2, size=(24, 48), color=(20, 90, 200), captions=["a blue dot"])
    for p in sorted((tmp / "tall").iterdir()):
        p.rename(mixed / f"tall-{p.name}")
    if kind == "t2i":
        return {"train_dir": str(mixed), "caption_dropout": 0.5, "random_flip": True, "resolution": 32}
    return {"instance_dir": str(mixed), "instance_prompt": "a photo of sks dog", "random_flip": True,
            "with_prior_preservation": True, "class_dir": str(make_images(tmp / "class", 3, size=(32, 32))),
            "class_prompt": "a photo of a dog", "prior_loss_weight": 0.5, "resolution": 32}


def _stream(data, comps):
    return build_stream(data, comps.tokenizer, seed=7, batch_size=2,
                        bucket_step=bucket_step_of(comps.vae.config, comps.unet.config))


def _attach(stream, comps, cache_dir: Path) -> list[str]:
    common = dict(cache_dir=cache_dir)
    return [attach_latent_cache(stream, comps.vae, **common), attach_text_cache(stream, comps.text_encoder, **common)]


@pytest.mark.parametrize(("kind", "dtype"), [("t2i", torch.float32), ("dreambooth-prior", torch.float32),
                                             ("dreambooth-prior", torch.bfloat16)], ids=["t2i", "db-prior", "db-bf16"])
def test_cached_micro_batches_are_bitwise_the_uncached_ones(tmp_path: Path, comps, kind: str, dtype) -> None:
    """What the loop feeds the UNet (latents sampled with the step's seeded RNG, embeddings), and the RNG state
    after it, are identical with and without the caches, for every group of several micro-steps."""
    vae, text_encoder = copy.deepcopy(comps.vae).to(dtype=dtype), copy.deepcopy(comps.text_encoder).to(dtype=dtype)
    data = config_from_dict({"data": _data(tmp_path, kind)}).data
    plain, cached = _stream(data, comps), _stream(data, comps)
    common = dict(cache_dir=tmp_path / "cache")
    attach_latent_cache(cached, vae, **common)
    attach_text_cache(cached, text_encoder, **common)
    conditioner = Conditioner(vae, text_encoder, dtype, train_text_encoder=False)
    shapes = set()
    for step in range(6):
        a = collate([plain[2 * step], plain[2 * step + 1]])
        b = collate([cached[2 * step], cached[2 * step + 1]])
        assert len(a["groups"]) == len(b["groups"])
        for ga, gb in zip(a["groups"], b["groups"], strict=True):
            assert "pixel_values" not in gb and "input_ids" not in gb  # served from the caches
            torch.manual_seed(1000 + step)
            la, ea = conditioner.latents(ga), conditioner.text_embeddings(ga)
            rng_a = torch.get_rng_state()
            torch.manual_seed(1000 + step)
            lb, eb = conditioner.latents(gb), conditioner.text_embeddings(gb)
            assert la.dtype == dtype and torch.equal(la, lb) and torch.equal(ea, eb)
            assert torch.equal(rng_a, torch.get_rng_state())
            shapes.add(tuple(la.shape[2:]))
    assert len(shapes) >= 2, "the data should span two buckets"


def test_damaged_and_stale_entries_are_rebuilt_never_served(tmp_path: Path, comps) -> None:
    data = config_from_dict({"data": _data(tmp_path, "dreambooth-prior")}).data
    first = _stream(data, comps)
    summary = _attach(first, comps, tmp_path / "cache")[0]
    entries = sorted(first.latent_cache.store.folder.rglob("*.safetensors"))
    assert f"0 reused, {len(entries)} encoded" in summary
    reference = {p: load_file(str(p))["value"].clone() for p in entries}

    raw = bytearray(entries[0].read_bytes())
    raw[-5] ^= 0x40  # one flipped bit in the tensor data
    entries[0].write_bytes(bytes(raw))
    entries[1].write_bytes(entries[1].read_bytes()[:-7])  # a write cut short (the process was killed)
    entries[2].write_bytes(entries[3].read_bytes())  # another entry's file under this name (stale)

    cache = first.latent_cache
    damaged = [(path, plan) for (path, plan), key in cache.keys.items() if cache.store.path(key) in entries[:3]]
    assert len(damaged) == 3
    for path, plan in damaged:  # a stream that holds them now refuses to train on them
        with pytest.raises(DataError, match="missing or damaged"):
            cache.load(path, plan)
    again = _stream(data, comps)
    summary = _attach(again, comps, tmp_path / "cache")[0]
    assert f"{len(entries) - 3} reused, 0 encoded, 3 rebuilt" in summary
    assert all(torch.equal(load_file(str(p))["value"], reference[p]) for p in entries)

    with torch.no_grad():
        comps.vae.encoder.conv_in.bias.add_(1e-3)  # other VAE weights: another store, nothing reused
    try:
        third = _stream(data, comps)
        assert "0 reused" in _attach(third, comps, tmp_path / "cache")[0]
        assert third.latent_cache.store.folder != first.latent_cache.store.folder
    finally:
        with torch.no_grad():
            comps.vae.encoder.conv_in.bias.sub_(1e-3)


def test_a_stop_request_ends_caching_after_the_entry_being_written_and_keeps_those(tmp_path: Path, comps) -> None:
    """Caching a large folder can take long: a Ctrl-C must not wait for all of it, nor lose what was cached."""
    data = config_from_dict({"data": _data(tmp_path, "t2i")}).data
    asked = iter([False, False, True, True, True, True, True, True])
    line = attach_latent_cache(_stream(data, comps), comps.vae, cache_dir=tmp_path / "cache",
                               should_stop=lambda: next(asked))
    # 5 images x flips wanted; 2 written before the stop, and the line says so (it said "10 encoded")
    assert "0 reused, 2 encoded, 8 not encoded: stopped" in line, line
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    again = attach_latent_cache(_stream(data, comps), comps.vae, cache_dir=tmp_path / "cache")
    assert "2 reused, 8 encoded" in again
