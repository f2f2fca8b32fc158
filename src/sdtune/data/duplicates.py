"""Exact and near duplicates: one rule for ``dataset check`` and ``dataset build`` (:func:`find_duplicates`).

Exact duplicates (the same decoded pixels) are merged by the build (one image, every caption kept) and reported
by check (training reads both: the picture is learned twice as hard); near-duplicates (the same shot re-encoded,
resized or lightly edited, by 64-bit difference hashes) are only reported, because burst photos of one pose are
sometimes wanted. Duplicates matter for fine-tuning: a picture present five times is learned five times as hard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

NEAR_DUPLICATE_BITS = 4  # of 64 dHash bits; re-encoded or resized copies of one photo differ by 0-3
NEAR_DUPLICATE_COLOR = 12  # mean absolute difference (0-255) of 4x4 colour thumbnails


def near_duplicate_pairs(hashes: list[int], colors: list[bytes] | None = None, *,
                         max_distance: int = NEAR_DUPLICATE_BITS,
                         max_color: float = NEAR_DUPLICATE_COLOR) -> list[tuple[int, int, int]]:
    """Index pairs ``(i, j, distance)`` with ``i < j`` whose hashes differ in at most ``max_distance`` bits.

    dHash only sees brightness gradients, so flat images of different colours all hash to zero; when
    ``colors`` (4x4 thumbnails) are given, a pair must also match in colour. Vectorised in row chunks:
    10,000 images take a fraction of a second and bounded memory.
    """
    n = len(hashes)
    if n < 2:
        return []
    values = np.array(hashes, dtype=np.uint64)
    chunk = max(1, (1 << 21) // n)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, n, chunk):
        rows = values[start : start + chunk, None]
        distance = np.bitwise_count(rows ^ values[None, :])
        for i, j in zip(*np.nonzero(distance <= max_distance), strict=True):
            a, b = start + int(i), int(j)
            if a < b and (colors is None or _color_diff(colors[a], colors[b]) <= max_color):
                pairs.append((a, b, int(distance[i, j])))
    return pairs


def _color_diff(a: bytes, b: bytes) -> float:
    return float(np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8)).mean())


@dataclass
class Duplicates:
    """What :func:`find_duplicates` found. ``exact[j] = i``: image ``j`` is the same picture as ``i``, the first
    image of its group (``i < j``). ``near``: pairs ``(i, j, bits)`` of different pictures, each the first of its
    exact group, whose hashes differ in ``bits`` of 64."""

    exact: dict[int, int] = field(default_factory=dict)
    near: list[tuple[int, int, int]] = field(default_factory=list)


def find_duplicates(hashes: list[int], colors: list[bytes], sizes: list[tuple[int, int]],
                    digest: Callable[[int], str]) -> Duplicates:
    """Exact and near duplicates among images, by the ONE rule check and build share.

    Exact: the same picture, i.e. the same decoded pixels at full size (RGB, EXIF rotation applied), whatever
    the file format, name or metadata: a PNG saved from a JPEG's pixels is an exact duplicate of that JPEG.
    Near: dHash within ``NEAR_DUPLICATE_BITS`` bits and matching colours, and not the same pixels.
    ``hashes``/``colors``: each image's cheap fingerprint (``images.dhash``/``color_thumb`` of any decode of it);
    ``sizes``: each image's displayed (width, height) before any downsizing; ``digest(i)``: a hash of image i's
    full decoded pixels (``images.picture_digest``), asked only for near pairs of one size, so a check never
    decodes every photo at full size. Same pixels give (nearly) the same fingerprint whatever the decode, so
    no exact pair is missed.
    """
    digests: dict[int, str] = {}
    pairs = near_duplicate_pairs(hashes, colors)
    for i, j, _ in pairs:
        if sizes[i] == sizes[j]:
            for k in (i, j):
                if k not in digests:
                    digests[k] = digest(k)
    first: dict[str, int] = {}
    for k in sorted(digests):
        first.setdefault(digests[k], k)
    found = Duplicates(exact={k: first[d] for k, d in sorted(digests.items()) if first[d] != k})

    def head(k: int) -> int:
        return found.exact.get(k, k)

    near: dict[tuple[int, int], int] = {}
    for i, j, bits in pairs:
        a, b = sorted((head(i), head(j)))
        if a != b:
            near[(a, b)] = min(bits, near.get((a, b), 64))
    found.near = [(a, b, bits) for (a, b), bits in sorted(near.items())]
    return found
