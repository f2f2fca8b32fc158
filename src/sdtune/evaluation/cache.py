"""Generations cached on disk, so adding a model to an evaluation re-generates nothing else.

An image's key hashes everything that decides its pixels: the model's fingerprint (weights folders by size and
mtime, adapter files by content), prompt, negative prompt, seed, steps, guidance, sampler and size. Change any of
them and the image is made again; change none and it is read back. Device and dtype are not in the key: a CPU
and a GPU image of the same key differ only by float rounding. A hub id is keyed by id and revision, so pin a
revision (or delete OUT/cache) if the hub copy may change.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtune.inference.generate import GenerationSettings, generate_images, pick_device, pick_dtype
from sdtune.inference.metadata import GenerationParams, save_png
from sdtune.inference.pipeline import fingerprint_digest, load_for_inference, model_fingerprint

CACHE_VERSION = 1
Job = tuple[str, int]  # (prompt, seed)


@dataclass
class ModelSpec:
    """A model under evaluation: a base ref or run folder, optional extra adapters, and its label in reports."""

    ref: str
    adapters: list[tuple[str, float]] = field(default_factory=list)
    label: str = ""
    _digest: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.label = self.label or self.ref

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = fingerprint_digest(model_fingerprint(self.ref, self.adapters or None))
        return self._digest


class GenerationCache:
    """``OUT/cache/<key>.png`` files; ``ensure`` generates only the missing ones, loading the model only then."""

    def __init__(self, root: Path, settings: GenerationSettings, *, device: str | None = None, dtype: str = "auto",
                 batch_size: int = 4, allow_pickle: bool = False, progress: bool = True) -> None:
        self.root = Path(root)
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.allow_pickle = allow_pickle
        self.progress = progress
        self.generated: Counter[str] = Counter()  # images made, per model label
        self.reused: Counter[str] = Counter()  # images read back from the cache, per model label

    def key(self, spec: ModelSpec, prompt: str, seed: int) -> str:
        payload: dict[str, Any] = {"v": CACHE_VERSION, "model": spec.digest, "prompt": prompt, "seed": int(seed),
                                   **self.settings.as_dict()}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.png"

    def ensure(self, spec: ModelSpec, jobs: Sequence[Job]) -> dict[Job, Path]:
        """Path of the image for each job, generating (in batches) those not cached yet."""
        from tqdm.auto import tqdm

        paths = {job: self.path(self.key(spec, *job)) for job in dict.fromkeys(jobs)}
        missing = [job for job, p in paths.items() if not p.is_file()]
        self.reused[spec.label] += len(paths) - len(missing)
        if not missing:
            return paths
        device = pick_device(self.device)
        pipe = load_for_inference(spec.ref, spec.adapters or None, allow_pickle=self.allow_pickle, device=device,
                                  torch_dtype=pick_dtype(device, self.dtype))
        bar = tqdm(total=len(missing), desc=f"generating {spec.label}", unit="img", disable=not self.progress)

        def save(i: int, image: Any) -> None:
            prompt, seed = missing[i]
            params = GenerationParams(
                prompt=prompt, seed=int(seed), steps=self.settings.steps, guidance=self.settings.guidance,
                scheduler=self.settings.scheduler, width=image.width, height=image.height,
                negative_prompt=self.settings.negative_prompt, model=spec.label, adapters=list(spec.adapters),
            )
            save_png(image, paths[missing[i]], params)
            self.generated[spec.label] += 1
            bar.update(1)

        try:
            generate_images(pipe, missing, self.settings, batch_size=self.batch_size, on_image=save)
        finally:
            bar.close()
            del pipe  # one model in memory at a time
        return paths
