"""Turn a run config's data section into subsets, and subsets into a deterministic stream of examples.

DESIGN.md: text-to-image and DreamBooth are one loop; they differ only in data. A subset is a set of
images, a caption source (each image's caption, or one fixed prompt), repeats and a loss weight. DreamBooth's
class images are a subset with role ``class``: each training example is paired with one class example, and
the class example's loss is weighted by ``prior_loss_weight``.

The data stream is infinite and position-addressed: position ``p`` is example ``perm_e[p % N]`` of epoch
``e = p // N`` (with several aspect-ratio buckets, an order of one-bucket batches derived the same way:
``sdtune.data.buckets.PositionOrder``). A resumed run continues at its saved position and sees exactly the
examples, crops, flips and caption dropouts that an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from sdtune.config import DataConfig, SubsetConfig
from sdtune.data.buckets import SD_STEP, PositionOrder, histogram, target_sizes
from sdtune.data.folders import read_folder
from sdtune.data.images import IMAGE_SUFFIXES, image_size, load_rgb
from sdtune.data.transforms import Transform, apply_transform, plan_transform
from sdtune.errors import DataError


@dataclass(frozen=True)
class Example:
    """One image with its prompt(s). Several prompts are alternatives (a list of captions in metadata.jsonl):
    epoch ``e`` uses ``prompts[(e * copies + copy) % len(prompts)]``, so every alternative is trained, evenly,
    and the choice depends on the stream position only (exact resume). ``copy``: which of the subset's
    ``repeats`` copies of the image this is, so copies in one epoch take different alternatives."""

    path: Path
    prompts: tuple[str, ...]
    loss_weight: float
    copy: int = 0
    copies: int = 1

    def prompt(self, epoch: int) -> str:
        return self.prompts[(epoch * self.copies + self.copy) % len(self.prompts)]


def subsets_from_config(data: DataConfig) -> list[SubsetConfig]:
    """The train and class subsets a data section describes (convenience keys become subsets)."""
    subsets: list[SubsetConfig] = []
    if data.train_dir is not None:
        subsets.append(SubsetConfig(path=data.train_dir, repeats=data.repeats))
    if data.instance_dir is not None:
        subsets.append(SubsetConfig(path=data.instance_dir, prompt=data.instance_prompt, repeats=data.repeats))
    subsets.extend(data.subsets)
    if data.with_prior_preservation:
        assert data.class_dir is not None
        subsets.append(SubsetConfig(path=data.class_dir, prompt=data.class_prompt, role="class",
                                    loss_weight=data.prior_loss_weight))
    return subsets


def examples_of(subset: SubsetConfig) -> list[Example]:
    """All examples of one subset, repeated, in a stable order (read as ``dataset check`` reads the folder)."""
    reading = read_folder(subset.path)
    if reading.errors:
        shown = [str(p) for p in reading.errors[:5]]
        more = f"\n  ... and {len(reading.errors) - 5} more" if len(reading.errors) > 5 else ""
        raise DataError(f"{subset.path}: the folder has problems (`sdtune dataset check {subset.path}` lists "
                        "them all):\n  " + "\n  ".join(shown) + more)
    if not reading.records:
        raise DataError(f"no images found in {subset.path} (supported: {' '.join(IMAGE_SUFFIXES)})")
    examples = []
    for record in reading.records:
        prompts = (subset.prompt,) if subset.prompt is not None else record.captions
        if not prompts:
            raise DataError(
                f"{record.path} has no caption. Text-to-image training needs one per image (a .txt sidecar or "
                "a metadata.jsonl row); for DreamBooth set a fixed prompt (data.instance_prompt)."
            )
        examples.append(Example(record.path, prompts, subset.loss_weight))
    return [Example(e.path, e.prompts, e.loss_weight, copy, subset.repeats) for copy in range(subset.repeats)
            for e in examples]


class ExampleStream(Dataset):
    """Position-addressed examples: ``stream[p]`` is the training item at stream position ``p``.

    Each image trains at its aspect-ratio bucket (``data.buckets``, ``sdtune.data.buckets``) or at the
    ``resolution`` square; every batch of ``batch_size`` positions is one shape. An item holds the image's pixels
    (``pixel_values``) or, once a latent cache is attached, its cached VAE posterior (``latent_params``); and the
    prompt's token ids (``input_ids``) or its cached conditioning (``text_embeddings``, and ``pooled_embeddings`` on
    SDXL); and the crop geometry SDXL conditions on (``crop_geometry``, see ``Transform.crop_geometry``).
    """

    def __init__(self, train: list[Example], classes: list[Example], tokenizer, data: DataConfig, seed: int, *,
                 batch_size: int = 1, bucket_step: int | None = None):
        if not train:
            raise DataError("the dataset is empty: no training images")
        self.train, self.classes = train, classes
        self.tokenizer, self.data, self.seed = tokenizer, data, seed
        step = (bucket_step or SD_STEP) if data.buckets else None
        self.step = step if step is not None and step <= data.resolution else None  # too coarse: the square
        self.sizes = {path: image_size(path) for path in dict.fromkeys(e.path for e in [*train, *classes])}
        self.train_targets = target_sizes([self.sizes[e.path] for e in train], data.resolution, self.step)
        self.class_targets = target_sizes([self.sizes[e.path] for e in classes], data.resolution, self.step)
        self.train_order = PositionOrder(self.train_targets, batch_size, seed, salt=0)
        self.class_order = PositionOrder(self.class_targets, batch_size, seed, salt=1) if classes else None
        self.latent_cache = None  # set by sdtune.data.cache.attach_latent_cache
        self.text_cache = None  # set by sdtune.data.cache.attach_text_cache
        self._token_ids: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.train)

    def _tokenize(self, prompt: str) -> torch.Tensor:
        """Token ids of a prompt, tokenized once per distinct prompt (~0.2 ms of CPU a call, for
        prompts that repeat every epoch). The tensor is shared: read it, never change it in place."""
        from sdtune.models.embeddings import expand_prompt

        ids = self._token_ids.get(prompt)
        if ids is None:
            expanded = expand_prompt(prompt, self.tokenizer)  # a multi-vector learned token, as pipelines write it
            ids = self.tokenizer(expanded, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids[0]
            self._token_ids[prompt] = ids
        return ids

    def prompts(self) -> set[str]:
        """Every prompt the stream can produce (all caption alternatives, the empty one under caption dropout)."""
        found = {p for e in [*self.train, *self.classes] for p in e.prompts}
        if self.data.caption_dropout > 0:
            found.add("")
        return found

    def variants(self) -> list[tuple[Path, Transform]]:
        """Every (image, transform) the stream can produce when crops are centred: its bucket, with and
        without the flip when ``random_flip``. What the latent cache holds."""
        seen: dict[tuple[Path, Transform], None] = {}
        flips = (False, True) if self.data.random_flip else (False,)
        pairs = [*zip(self.train, self.train_targets, strict=True), *zip(self.classes, self.class_targets,
                                                                         strict=True)]
        for example, target in pairs:
            plan = plan_transform(self.sizes[example.path], target, True, False, random.Random(0))
            for flip in flips:
                seen[(example.path, replace(plan, flip=flip))] = None
        return list(seen)

    def tokens(self, prompt: str) -> torch.Tensor:
        """Token ids of a prompt: (L,), or (2, L) for SDXL's two tokenizers."""
        return self._tokenize(prompt)

    def _item(self, example: Example, epoch: int, target: tuple[int, int], rng: random.Random,
              allow_dropout: bool) -> dict[str, torch.Tensor]:
        """One example's image (pixels or cached posterior), text (ids or cached conditioning) and crop geometry;
        with ``data.masked_loss`` its loss mask (class images: all ones, ``sdtune.data.masks``)."""
        plan = plan_transform(self.sizes[example.path], target, self.data.center_crop, self.data.random_flip, rng)
        mask = None
        if self.data.masked_loss:
            from sdtune.data.masks import mask_tensor, read_mask

            mask = (mask_tensor(read_mask(example.path, self.data.mask_dir), plan, example.path) if allow_dropout
                    else torch.ones(1, target[1], target[0]))
        if self.latent_cache is not None:
            item = {"latent_params": self.latent_cache.load(example.path, plan)}
        else:
            item = {"pixel_values": apply_transform(load_rgb(example.path), plan, example.path)}
        prompt = example.prompt(epoch)
        if allow_dropout and self.data.caption_dropout > 0 and rng.random() < self.data.caption_dropout:
            prompt = ""
        ids = self._tokenize(prompt)
        if self.text_cache is not None:
            item.update(self.text_cache.load(ids))
        else:
            item["input_ids"] = ids
        item["crop_geometry"] = torch.tensor(plan.crop_geometry(), dtype=torch.float32)
        item["loss_weight"] = torch.tensor(example.loss_weight, dtype=torch.float32)
        if mask is not None:
            item["loss_mask"] = mask
        return item

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        rng = random.Random(self.seed * 1_000_003 + position)
        index, epoch = self.train_order.item(position)
        item = self._item(self.train[index], epoch, self.train_targets[index], rng, allow_dropout=True)
        if self.class_order is not None:
            c_index, c_epoch = self.class_order.item(position)
            cls = self._item(self.classes[c_index], c_epoch, self.class_targets[c_index], rng, allow_dropout=False)
            item.update({f"class_{key}": value for key, value in cls.items()})
        return item

    def bucket_record(self) -> dict:
        """What ``RUN/buckets.json`` holds: the bucket of every image, and how many images each bucket has."""
        def per_image(examples: list[Example], targets: list[tuple[int, int]]) -> dict[str, str]:
            return {str(e.path): f"{w}x{h}" for e, (w, h) in zip(examples, targets, strict=True)}

        train = per_image(self.train, self.train_targets)
        classes = per_image(self.classes, self.class_targets)
        return {"resolution": self.data.resolution, "buckets": self.step is not None, "step": self.step,
                "train": histogram(self.sizes_of(train)), "class": histogram(self.sizes_of(classes)),
                "images": train, "class_images": classes}

    @staticmethod
    def sizes_of(per_image: dict[str, str]) -> list[tuple[int, int]]:
        return [tuple(int(x) for x in shape.split("x")) for shape in per_image.values()]  # type: ignore[misc]


class StreamPositions(Sampler[int]):
    """Stream positions of one process, from a micro-step on: micro-step k, rank r reads
    positions ``[k*B*W + r*B, k*B*W + (r+1)*B)`` (B = per-process batch, W = processes)."""

    def __init__(self, start_micro_step: int, batch_size: int, world_size: int, rank: int):
        self.start, self.batch, self.world, self.rank = start_micro_step, batch_size, world_size, rank

    def __iter__(self) -> Iterator[int]:
        step = self.start
        while True:
            base = step * self.batch * self.world + self.rank * self.batch
            yield from range(base, base + self.batch)
            step += 1


def collate(items: list[dict[str, torch.Tensor]]) -> dict:
    """Stack items into ``{"groups": [...], "num_train": n}``; each group is one UNet forward of one shape.

    The training examples are group 0. Class examples (prior preservation) are appended to it when they have
    its shape (one forward, as always), else they form group 1 (their own forward: a portrait photo's bucket
    and square class images cannot share a tensor). The loss is the same sum either way.
    """
    train = {key: torch.stack([it[key] for it in items]) for key in items[0] if not key.startswith("class_")}
    groups = [train]
    if any(key.startswith("class_") for key in items[0]):
        cls = {key[len("class_"):]: torch.stack([it[key] for it in items]) for key in items[0]
               if key.startswith("class_")}
        image_key = "latent_params" if "latent_params" in train else "pixel_values"
        if cls[image_key].shape[1:] == train[image_key].shape[1:]:
            groups = [{key: torch.cat([train[key], cls[key]]) for key in train}]
        else:
            groups.append(cls)
    return {"groups": groups, "num_train": len(items)}  # an int: the loop divides by it without reading a tensor


def data_counts(stream: ExampleStream) -> dict[str, int]:
    """Distinct images (repeats counted once), examples per epoch (with repeats) and distinct class images."""
    return {"images": len({e.path for e in stream.train}), "examples": len(stream.train),
            "class_images": len({e.path for e in stream.classes})}


def build_stream(data: DataConfig, tokenizer, seed: int, *, batch_size: int = 1,
                 bucket_step: int | None = None, held_out: frozenset[Path] = frozenset()) -> ExampleStream:
    """The run's stream. ``batch_size``: examples per process per micro-step (a batch is one bucket);
    ``bucket_step``: the model's side multiple (``sdtune.data.buckets.bucket_step_of``; default SD's 64);
    ``held_out``: training images kept out of it (``validation.loss.split``, ``sdtune.data.held_out``)."""
    train, classes = [], []
    for subset in subsets_from_config(data):
        (classes if subset.role == "class" else train).extend(examples_of(subset))
    train = [e for e in train if e.path not in held_out]
    return ExampleStream(train, classes, tokenizer, data, seed, batch_size=batch_size, bucket_step=bucket_step)


def write_bucket_record(stream: ExampleStream, run_dir: Path) -> str | None:
    """Write ``RUN/buckets.json`` (the shape each image trains at); return a line for the log when bucketed."""
    import json

    from sdtune.atomic import atomic_write_text

    record = stream.bucket_record()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "buckets.json", json.dumps(record, indent=2) + "\n")
    if not record["buckets"]:
        return None
    shapes = ", ".join(f"{shape} x{n}" for shape, n in record["train"].items())
    return f"aspect-ratio buckets ({record['resolution']} px, sides multiples of {record['step']}): {shapes}"
