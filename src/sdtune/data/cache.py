"""Turn a batch into what the UNet trains on (latents, text embeddings), encoding once where nothing changes.

The latent cache stores, per image *variant* (its bucket or crop, and the flip when ``random_flip``), the VAE
posterior's parameters (mean and log-variance), not a sample: the sample is drawn at training time from the
micro-step's seeded RNG, exactly where the uncached path draws it, so a cached run is **bitwise** the uncached
run (DESIGN.md). For that, both paths encode one image at a time (a batched convolution differs in its last
bits from single ones), and the uncached path stacks the per-image parameters before the one draw.

The text cache does the same for every distinct prompt when the text encoder is frozen (caption dropout's
empty prompt included): its hidden states, and on SDXL the pooled embedding too (``sdtune.models.family``).
Entries live in :class:`~sdtune.data.feature_cache.FeatureStore`; after caching, the encoder leaves the accelerator
(``offload``): its memory goes back to the UNet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sdtune.data.buckets import vae_downscale
from sdtune.data.feature_cache import FeatureStore, default_root, entry_key, module_hash, unwritable_note
from sdtune.data.images import content_hash
from sdtune.data.transforms import Transform, apply_transform
from sdtune.errors import DataError
from sdtune.models.family import SD, Family, TextConditioning


def encode_posterior(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """VAE posterior parameters (2C, h, w) of ONE image (C, H, W) in [-1, 1], in the VAE's dtype and device."""
    param = next(vae.parameters())
    with torch.no_grad():
        return vae.encode(pixels[None].to(param.device, param.dtype)).latent_dist.parameters[0]


def encode_prompt(text_encoder: torch.nn.Module, input_ids: torch.Tensor, family: Family = SD) -> TextConditioning:
    """Conditioning of ONE prompt's token ids ((L,), SDXL (2, L)) by a frozen text encoder: hidden (L, D), and
    pooled (P,) on SDXL."""
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        cond = family.encode(text_encoder, input_ids[None].to(device))
    return TextConditioning(cond.hidden[0], None if cond.pooled is None else cond.pooled[0])


def _stack(conds: list[TextConditioning]) -> TextConditioning:
    pooled = [c.pooled for c in conds]
    return TextConditioning(torch.stack([c.hidden for c in conds]),
                            None if pooled[0] is None else torch.stack(pooled))  # type: ignore[arg-type]


@dataclass
class Conditioner:
    """Latents and text conditioning of a batch group, from the cache when the group carries cached entries."""

    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    weight_dtype: torch.dtype
    train_text_encoder: bool
    device: torch.device | str = "cpu"
    family: Family = SD

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def latents(self, group: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scaled latents sampled from the posterior (as SD training does), with the global RNG."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        if "latent_params" in group:
            params = group["latent_params"].to(self.device)
        else:
            params = torch.stack([encode_posterior(self.vae, px) for px in group["pixel_values"]]).to(self.device)
        return DiagonalGaussianDistribution(params).sample() * self.scaling_factor

    def text_conditioning(self, group: dict[str, torch.Tensor]) -> TextConditioning:
        if "text_embeddings" in group:
            pooled = group.get("pooled_embeddings")
            return TextConditioning(group["text_embeddings"].to(self.device),
                                    None if pooled is None else pooled.to(self.device))
        input_ids = group["input_ids"]
        if self.train_text_encoder:
            return self.family.encode(self.text_encoder, input_ids.to(self.device))
        cond = _stack([encode_prompt(self.text_encoder, ids, self.family) for ids in input_ids])
        return TextConditioning(cond.hidden.to(self.device), None if cond.pooled is None else
                                cond.pooled.to(self.device))

    def text_embeddings(self, group: dict[str, torch.Tensor]) -> torch.Tensor:
        """The hidden states (B, L, D) alone (what SD's UNet takes)."""
        return self.text_conditioning(group).hidden

    def unet_kwargs(self, group: dict[str, torch.Tensor]) -> dict:
        """The UNet's conditioning keywords for a group (SDXL adds pooled text and time ids, see models.family)."""
        return self.family.unet_kwargs(self.text_conditioning(group), group.get("crop_geometry"))


class LatentCache:
    """Cached posteriors of a stream's variants: ``load(path, transform)`` or a DataError, never a bad entry."""

    def __init__(self, store: FeatureStore, keys: dict[tuple[Path, Transform], str], channels: int, factor: int,
                 dtype: torch.dtype):
        self.store, self.keys, self.channels, self.factor, self.dtype = store, keys, channels, factor, dtype

    def shape(self, plan: Transform) -> tuple[int, int, int]:
        return (2 * self.channels, plan.target[1] // self.factor, plan.target[0] // self.factor)

    def load(self, path: Path, plan: Transform) -> torch.Tensor:
        key = self.keys.get((path, plan))
        value = None if key is None else self.store.read(key, self.shape(plan), self.dtype)
        if value is None:
            raise DataError(f"{path}: its cached latent ({key and self.store.path(key)}) is missing or damaged "
                            "since the run started; continue with --resume latest (it is re-encoded then)")
        return value


# item key of each cached part of a prompt's conditioning (``Family.text_shapes``)
TEXT_ITEM_KEYS = {"hidden": "text_embeddings", "pooled": "pooled_embeddings"}


def ids_key(input_ids: torch.Tensor) -> tuple[int, ...]:
    """A prompt's token ids as a flat tuple (SDXL's (2, L) ids included)."""
    return tuple(input_ids.reshape(-1).tolist())


class TextCache:
    """Cached conditioning of a stream's prompts, by token ids: one entry per part (hidden, SDXL's pooled)."""

    def __init__(self, store: FeatureStore, keys: dict[tuple[tuple[int, ...], str], str],
                 shapes: dict[str, tuple[int, ...]], dtype: torch.dtype):
        self.store, self.keys, self.shapes, self.dtype = store, keys, shapes, dtype

    def load(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"text_embeddings": (L, D)[, "pooled_embeddings": (P,)]}`` of one prompt's ids."""
        out = {}
        for part, shape in self.shapes.items():
            key = self.keys.get((ids_key(input_ids), part))
            value = None if key is None else self.store.read(key, shape, self.dtype)
            if value is None:
                raise DataError("a cached prompt embedding is missing or damaged since the run started; continue "
                                "with --resume latest (it is re-encoded then)")
            out[TEXT_ITEM_KEYS[part]] = value
        return out


def _fill(store: FeatureStore, wanted: dict[str, tuple], shape_of: Callable, dtype: torch.dtype,
          encode: Callable, label: str, rank: int, world: int, barrier: Callable[[], None],
          should_stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
    """Verify every wanted entry and encode the missing or invalid ones, shared out between processes.

    Each process encodes every ``world``-th missing entry (its share), waits for the others, then verifies the
    rest and encodes anything still missing itself (never trusts). Returns counts for a one-line summary.
    ``should_stop`` (a stop request) ends the encoding after the entry being written: the entries written stay
    valid, the caller must not train on the incomplete cache.
    """
    counts = {"reused": 0, "encoded": 0, "rebuilt": 0}
    todo = []
    for key, item in wanted.items():
        if store.read(key, shape_of(item), dtype) is not None:
            counts["reused"] += 1
        else:
            counts["rebuilt" if store.path(key).exists() else "encoded"] += 1
            todo.append((key, item))

    def encode_all(items: list, show: bool) -> int:
        """Encode ``items``; returns how many were left unencoded by a stop request."""
        for done, (key, item) in enumerate(tqdm(items, desc=label, unit="item", disable=not show or not items,
                                                dynamic_ncols=True)):
            if should_stop():
                return len(items) - done
            value = encode(item)
            if tuple(value.shape) != tuple(shape_of(item)) or value.dtype != dtype:
                raise DataError(f"{label}: the encoder returned {tuple(value.shape)} {value.dtype}, expected "
                                f"{tuple(shape_of(item))} {dtype}")
            store.write(key, value, note=label)
        return 0

    left = encode_all(todo[rank::world], show=rank == 0)
    barrier()
    if left:  # stopped: what was counted to encode and was not is said as such (the next run encodes it)
        taken = min(left, counts["encoded"])
        counts["encoded"] -= taken
        counts["rebuilt"] -= left - taken
        counts["left"] = left
    elif world > 1:
        encode_all([(k, i) for k, i in todo if store.read(k, shape_of(i), dtype) is None], show=False)
    return counts


def _summary(what: str, counts: dict[str, int], store: FeatureStore) -> str:
    total = sum(counts.values())
    parts = [f"{counts['reused']} reused", f"{counts['encoded']} encoded"]
    if counts["rebuilt"]:
        parts.append(f"{counts['rebuilt']} rebuilt (damaged or unreadable)")
    if counts.get("left"):
        parts.append(f"{counts['left']} not encoded: stopped (the next run encodes them)")
    return f"{what}: {total} in {store.folder} ({', '.join(parts)})"


def attach_latent_cache(stream, vae: torch.nn.Module, *, cache_dir: Path | None, rank: int = 0, world: int = 1,
                        barrier: Callable[[], None] = lambda: None,
                        should_stop: Callable[[], bool] = lambda: False) -> str:
    """Encode every variant of the stream not cached yet (shared out between the ``world`` processes) and make
    the stream serve cached posteriors. Returns a one-line summary."""
    param = next(vae.parameters())
    store = FeatureStore(default_root(cache_dir), "latents", module_hash(vae))
    hashes: dict[Path, str] = {}
    wanted: dict[str, tuple[Path, Transform]] = {}
    keys: dict[tuple[Path, Transform], str] = {}
    for path, plan in stream.variants():
        if path not in hashes:
            hashes[path] = content_hash(path)
        key = entry_key(kind="vae-posterior", model=store.model_hash, dtype=str(param.dtype),
                        device=param.device.type, image=hashes[path], transform=plan.key())
        wanted[key] = (path, plan)
        keys[(path, plan)] = key
    cache = LatentCache(store, keys, int(vae.config.latent_channels), vae_downscale(vae.config), param.dtype)
    shape_of = lambda item: cache.shape(item[1])  # noqa: E731

    def encode(item: tuple[Path, Transform]) -> torch.Tensor:
        from sdtune.data.images import load_rgb

        path, plan = item
        return encode_posterior(vae, apply_transform(load_rgb(path), plan, path))

    counts = _fill(store, wanted, shape_of, param.dtype, encode, "caching latents", rank, world, barrier,
                   should_stop)
    stream.latent_cache = cache
    return _summary("latent cache", counts, store)


def attach_text_cache(stream, text_encoder: torch.nn.Module, *, cache_dir: Path | None, rank: int = 0,
                      world: int = 1, barrier: Callable[[], None] = lambda: None,
                      should_stop: Callable[[], bool] = lambda: False, family: Family = SD) -> str:
    """Encode every distinct prompt of the stream once (frozen text encoder) and serve the cached conditioning.

    Each part of a prompt's conditioning (``family.text_shapes``: hidden states, and SDXL's pooled embedding) is an
    entry of its own; SD's entries keep the keys they always had."""
    param = next(text_encoder.parameters())
    store = FeatureStore(default_root(cache_dir), "text", module_hash(text_encoder))
    shapes = family.text_shapes(text_encoder, int(stream.tokenizer.model_max_length))
    wanted: dict[str, tuple[torch.Tensor, str]] = {}
    keys: dict[tuple[tuple[int, ...], str], str] = {}
    for prompt in sorted(stream.prompts()):
        tokens = stream.tokens(prompt)
        ids = ids_key(tokens)
        for part in shapes:
            extra = {} if part == "hidden" else {"part": part}
            key = entry_key(kind="text-embedding", model=store.model_hash, dtype=str(param.dtype),
                            device=param.device.type, ids=ids, **extra)
            wanted[key], keys[(ids, part)] = (tokens, part), key
    memo: dict[tuple[int, ...], TextConditioning] = {}

    def encode(item: tuple[torch.Tensor, str]) -> torch.Tensor:
        tokens, part = item
        if ids_key(tokens) not in memo:
            memo.clear()
            memo[ids_key(tokens)] = encode_prompt(text_encoder, tokens, family)
        cond = memo[ids_key(tokens)]
        return cond.hidden if part == "hidden" else cond.pooled  # type: ignore[return-value]

    counts = _fill(store, wanted, lambda item: shapes[item[1]], param.dtype, encode, "caching prompts", rank, world,
                   barrier, should_stop)
    stream.text_cache = TextCache(store, keys, shapes, param.dtype)
    return _summary("text cache", counts, store)


def offload(module: torch.nn.Module) -> None:
    """Move a frozen encoder off the accelerator once its outputs are cached (its memory goes to training)."""
    if next(module.parameters()).device.type != "cpu":
        module.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def on_device(device: torch.device | str, *modules: torch.nn.Module) -> Iterator[None]:
    """Bring offloaded encoders back to ``device`` for a while (validation images), then offload them again."""
    moved = [m for m in modules if next(m.parameters()).device.type != torch.device(device).type]
    for module in moved:
        module.to(device)
    try:
        yield
    finally:
        for module in moved:
            offload(module)


ALWAYS_CACHE = 512  # items: below this a cache is cheap whatever the run's length (and helps its reruns)


def _unwritable_on_any_rank(cache_dir: Path | None, accelerator: Any) -> str | None:
    """:func:`unwritable_note` decided by all processes together: the first one's note where any cannot write.

    Each node checks its own disk (a cache folder may be node-local), and attaching a cache waits at barriers
    every process must reach: a rank that skipped it alone would leave the others waiting forever."""
    note = unwritable_note(cache_dir)
    if accelerator.num_processes == 1:
        return note
    from accelerate.utils import gather_object

    return next((n for n in gather_object([note]) if n), None)


def cache_for_run(cfg, stream, vae: torch.nn.Module, text_encoder: torch.nn.Module, accelerator,
                  step: int, should_stop: Callable[[], bool] = lambda: False, family: Family = SD) -> list[str]:
    """Attach the caches a run's settings allow, offload the encoders they free; returns lines to print.

    Latents are cached unless ``data.cache_latents`` is off or crops are random (each step then needs its own
    pixels: one notice says so); text embeddings unless ``data.cache_text`` is off or the text encoder trains.
    A cache that would encode more items than the run still encodes without one (from ``step`` on), and more
    than ALWAYS_CACHE, would cost more than it saves (a short run on a large folder): skipped, with a notice.
    After ``should_stop`` says yes the caches may be incomplete: the caller stops before training. A cache folder
    that cannot be written means no cache, with a note (``feature_cache.unwritable_note``).
    """
    lines: list[str] = []
    data, train = cfg.data, cfg.train
    draws = ((train.max_steps - step) * train.gradient_accumulation_steps * train.batch_size
             * accelerator.num_processes * (2 if stream.classes else 1))
    common = dict(cache_dir=data.cache_dir, rank=accelerator.process_index, world=accelerator.num_processes,
                  barrier=accelerator.wait_for_everyone, should_stop=should_stop)

    if (data.cache_latents or data.cache_text) and (note := _unwritable_on_any_rank(data.cache_dir, accelerator)):
        return [note]  # the cache only saves time: an unwritable one is skipped, never a late PermissionError

    def worth(what: str, items: int) -> bool:
        if items <= max(draws, ALWAYS_CACHE):
            return True
        lines.append(f"note: {what} not cached: {items} to encode, more than the {draws} this run encodes "
                     "without a cache (a longer run caches them)")
        return False

    if data.cache_latents and not data.center_crop:
        lines.append("note: data.center_crop=false draws a new crop every step, so latents are not cached (the VAE "
                     "encodes each step); set data.center_crop=true to cache them")
    elif data.cache_latents and worth("latents", len(stream.variants())):
        lines.append(attach_latent_cache(stream, vae, **common))
        offload(vae)
    if data.cache_text and not cfg.train.trains_text and worth("prompts", len(stream.prompts())):
        lines.append(attach_text_cache(stream, text_encoder, family=family, **common))
        if getattr(train, "preservation", None) is None:  # a preservation term encodes its prompts every step
            offload(text_encoder)
    return lines
