"""Turn a run config's data section into subsets, and subsets into a deterministic stream of examples.

DESIGN.md: text-to-image and DreamBooth are one loop; they differ only in data. A subset is a set of
images, a caption source (each image's caption, or one fixed prompt), repeats and a loss weight. DreamBooth's
class images are a subset with role ``class``: each training example is paired with one class example, and
the class example's loss is weighted by ``prior_loss_weight``.

The data stream is infinite and position-addressed: position ``p`` is example ``perm_e[p % N]`` of epoch
``e = p // N``. A resumed run continues at its saved position and sees exactly the examples, crops, flips
and caption dropouts that an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from sdtune.config import DataConfig, SubsetConfig
from sdtune.data.folders import read_folder
from sdtune.data.images import IMAGE_SUFFIXES, load_rgb
from sdtune.data.transforms import prepare_image
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
    """Position-addressed examples: ``stream[p]`` is the training item at stream position ``p``."""

    def __init__(self, train: list[Example], classes: list[Example], tokenizer, data: DataConfig, seed: int):
        if not train:
            raise DataError("the dataset is empty: no training images")
        self.train, self.classes = train, classes
        self.tokenizer, self.data, self.seed = tokenizer, data, seed
        self._perms: dict[tuple[int, int], list[int]] = {}

    def __len__(self) -> int:
        return len(self.train)

    def _permuted(self, items: int, position: int, salt: int) -> int:
        epoch, offset = divmod(position, items)
        key = (salt, epoch)
        if key not in self._perms:
            if len(self._perms) > 8:
                self._perms.clear()
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 7919 + salt)
            self._perms[key] = torch.randperm(items, generator=gen).tolist()
        return self._perms[key][offset]

    def _tokenize(self, prompt: str) -> torch.Tensor:
        return self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids[0]

    def _item(self, example: Example, epoch: int, rng: random.Random, allow_dropout: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_rgb(example.path)
        pixels = prepare_image(image, self.data.resolution, self.data.center_crop, self.data.random_flip, rng)
        prompt = example.prompt(epoch)
        if allow_dropout and self.data.caption_dropout > 0 and rng.random() < self.data.caption_dropout:
            prompt = ""
        return pixels, self._tokenize(prompt)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        rng = random.Random(self.seed * 1_000_003 + position)
        example = self.train[self._permuted(len(self.train), position, salt=0)]
        pixels, ids = self._item(example, position // len(self.train), rng, allow_dropout=True)
        item = {"pixel_values": pixels, "input_ids": ids,
                "loss_weight": torch.tensor(example.loss_weight, dtype=torch.float32)}
        if self.classes:
            cls = self.classes[self._permuted(len(self.classes), position, salt=1)]
            c_pixels, c_ids = self._item(cls, position // len(self.classes), rng, allow_dropout=False)
            item.update(class_pixel_values=c_pixels, class_input_ids=c_ids,
                        class_loss_weight=torch.tensor(cls.loss_weight, dtype=torch.float32))
        return item


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


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack items; class examples (prior preservation) are appended after the training examples."""
    out = {key: torch.stack([it[key] for it in items]) for key in items[0]}
    out["num_train"] = torch.tensor(len(items))
    if "class_pixel_values" in out:
        out["pixel_values"] = torch.cat([out.pop("pixel_values"), out.pop("class_pixel_values")])
        out["input_ids"] = torch.cat([out.pop("input_ids"), out.pop("class_input_ids")])
        out["loss_weight"] = torch.cat([out.pop("loss_weight"), out.pop("class_loss_weight")])
    return out


def data_counts(stream: ExampleStream) -> dict[str, int]:
    """Distinct images (repeats counted once), examples per epoch (with repeats) and distinct class images."""
    return {"images": len({e.path for e in stream.train}), "examples": len(stream.train),
            "class_images": len({e.path for e in stream.classes})}


def build_stream(data: DataConfig, tokenizer, seed: int) -> ExampleStream:
    train, classes = [], []
    for subset in subsets_from_config(data):
        (classes if subset.role == "class" else train).extend(examples_of(subset))
    return ExampleStream(train, classes, tokenizer, data, seed)
