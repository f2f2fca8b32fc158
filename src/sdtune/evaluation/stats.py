"""Mean and spread over seeds: one CLIP score from one run is an anecdote, K seeds make it a measurement.

``std`` is the sample standard deviation (ddof=1) over seeds of the per-seed mean over prompts: how much the
headline number would move if the whole evaluation were re-run with another seed. It is ``None`` with one seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass
class Summary:
    mean: float | None
    std: float | None
    n: int  # number of values (images or image pairs) behind the mean

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 2) -> str:
        if self.mean is None:
            return "n/a"
        spread = f" ± {self.std:.{digits}f}" if self.std is not None else ""
        return f"{self.mean:.{digits}f}{spread}"


def _std(values: Sequence[float]) -> float | None:
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarize(values: Mapping[tuple[str, int], float], seeds: Sequence[int]) -> Summary:
    """Summarise values keyed by (prompt, seed): overall mean, std over seeds of the per-seed means."""
    if not values:
        return Summary(None, None, 0)
    per_seed = []
    for seed in seeds:
        row = [v for (_, s), v in values.items() if s == seed]
        if row:
            per_seed.append(sum(row) / len(row))
    mean = sum(values.values()) / len(values)
    return Summary(mean, _std(per_seed), len(values))


def per_prompt(values: Mapping[tuple[str, int], float], prompts: Sequence[str], seeds: Sequence[int]) -> list[dict]:
    """For each prompt: mean and std over seeds, and the value at each seed (so outliers can be found)."""
    out = []
    for prompt in prompts:
        row = {seed: values[(prompt, seed)] for seed in seeds if (prompt, seed) in values}
        vals = list(row.values())
        out.append({"prompt": prompt, "mean": sum(vals) / len(vals) if vals else None, "std": _std(vals),
                    "n": len(vals), "per_seed": {str(s): v for s, v in row.items()}})
    return out
