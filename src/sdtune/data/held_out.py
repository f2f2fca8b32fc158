"""The held-out images of a validation loss (``validation.loss``): a fraction of the training images, chosen once by
a seed and kept out of the training stream, or a folder of their own. Each comes with its prompt.

The choice depends on the sorted image paths and the seed only, so a resumed run holds out the same images
(``validation.loss.split`` and ``seed`` may not change on resume) and two runs with one seed compare on one set.
"""

from __future__ import annotations

import random
from pathlib import Path

from sdtune.config import RunConfig, SubsetConfig
from sdtune.data.folders import read_folder
from sdtune.data.subsets import Example, examples_of, subsets_from_config
from sdtune.errors import DataError
from sdtune.words import counted


def held_out_examples(cfg: RunConfig) -> list[Example]:
    """The validation images with their prompts (one example per image; [] without ``validation.loss``)."""
    loss = cfg.validation.loss
    if loss is None:
        return []
    if loss.data_dir is not None:
        return _folder_examples(loss.data_dir, cfg.data.instance_prompt)
    train = {}
    for subset in subsets_from_config(cfg.data):
        if subset.role == "train":
            for example in examples_of(subset):
                train.setdefault(example.path, example)
    paths = sorted(train)
    count = round(len(paths) * loss.split)
    if count < 1 or count >= len(paths):
        raise DataError(f"validation.loss.split={loss.split} of {counted(len(paths), 'training image')} holds "
                        f"out {count}: "
                        "it must hold out at least one and leave at least one; change the fraction or use "
                        "validation.loss.data_dir")
    chosen = sorted(random.Random(f"sdtune-validation-{loss.seed}").sample(paths, count))
    return [train[p] for p in chosen]


def held_out_paths(cfg: RunConfig) -> frozenset[Path]:
    """Training images the stream must not train on (``validation.loss.split``); empty otherwise."""
    loss = cfg.validation.loss
    return frozenset(e.path for e in held_out_examples(cfg)) if loss is not None and loss.split else frozenset()


def _folder_examples(folder: Path, instance_prompt: str | None) -> list[Example]:
    reading = read_folder(folder)
    if not reading.records:
        raise DataError(f"validation.loss.data_dir {folder}: no images found")
    if all(record.captions for record in reading.records):
        return [Example(e.path, e.prompts[:1], 1.0) for e in examples_of(SubsetConfig(path=folder))]
    if instance_prompt is None:
        raise DataError(f"validation.loss.data_dir {folder}: images without captions and no data.instance_prompt to "
                        "use instead; caption them (.txt sidecars) or set data.instance_prompt")
    return examples_of(SubsetConfig(path=folder, prompt=instance_prompt))
