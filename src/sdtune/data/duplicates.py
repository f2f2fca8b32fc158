"""Near-duplicate detection with 64-bit difference hashes.

Exact duplicates (same pixels) are dropped by the build; near-duplicates (the same shot re-encoded,
resized or lightly edited) are only reported, because burst photos of one pose are sometimes wanted.
Duplicates matter for fine-tuning: a picture present five times is learned five times as hard.
"""

from __future__ import annotations

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
