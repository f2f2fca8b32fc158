"""The demo's evaluation and its benchmark rows: ONE plan that ``sdtune demo`` and ``benchmarks/two_stage.py`` both
use, so the demo's single run is one of the benchmark's runs.

Why one plan: the demo once evaluated with 4 seeds per prompt (seeds 0-3) and 16 person images, the benchmark with
6 (seeds 100-105) and 24 (200-223); on a fresh clone the demo's stage 1 read concept 0.50 beside the benchmark's
0.78 ± 0.10 for what was the same training run. Now the seeds, the prompt counts and the sampling steps come from
``DemoSettings`` through :func:`eval_seeds` and :func:`demo_suite`, in both.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sdtune.toy.evaluate import Suite, default_suite
from sdtune.toy.world import CONCEPT, PERSONS
from sdtune.words import counted

if TYPE_CHECKING:
    from sdtune.toy.demo_settings import DemoSettings

BENCHMARK_FILE = "two_stage_benchmark.json"  # in the toy model's folder, written by benchmarks/two_stage.py
EVAL_SEED_START = 100  # seeds of the old-world and concept prompts: 100, 101, ... (settings.seeds of them)
PERSON_SEED_START = 200  # seeds of the person, class and composite prompts: 200, 201, ... (settings.person_seeds)
STAGE1 = "stage 1: concept"  # the benchmark's row name for the concept stage


def eval_seeds(settings: DemoSettings) -> tuple[list[int], dict[str, list[int]]]:
    """The generation seeds: per old-world and concept prompt, and (``group_seeds`` of ``evaluate``) per person,
    class and composite prompt, which are single prompts and get more images."""
    many = list(range(PERSON_SEED_START, PERSON_SEED_START + settings.person_seeds))
    return (list(range(EVAL_SEED_START, EVAL_SEED_START + settings.seeds)),
            {"person": many, "cls": many, "composite": many})


def demo_suite(settings: DemoSettings) -> Suite:
    """The prompts: ``settings.old_prompts`` old-world prompts, the concept's, and the person's of its look."""
    if settings.person_look not in PERSONS:
        raise ValueError(f"person_look {settings.person_look!r}: one of {', '.join(PERSONS)}")
    return default_suite(old=settings.old_prompts, person=PERSONS[settings.person_look],
                         concept_word=settings.concept_token or CONCEPT)


def eval_plan(settings: DemoSettings) -> dict[str, Any]:
    """What the published benchmark records of its evaluation (and the demo compares with its own)."""
    seeds, groups = eval_seeds(settings)
    return {"seeds": seeds, "person_seeds": groups["person"], "old_prompts": settings.old_prompts,
            "steps": settings.eval_steps}


def trained_settings(settings: DemoSettings) -> dict[str, Any]:
    """The settings that decide what is trained and evaluated, the training seed excepted (the benchmark runs
    several): what the published benchmark records and the demo's settings must equal for its rows to apply.
    Tuples come as lists, as the published JSON holds them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items() if k != "seed"}


def benchmark_rows(settings: DemoSettings) -> dict[str, Any] | None:
    """The benchmark's rows for these settings (shipped with the toy model): mean ± std over its training seeds,
    and its run of ``settings.seed``, the run the demo repeats; None when no benchmark is shipped.

    ``matches``: whether the benchmark ran exactly these settings, evaluation and training seed (``--quick`` or
    ``--seeds`` make a demo whose rows are not the benchmark's)."""
    from sdtune.models.presets import toy_path

    path = toy_path() / BENCHMARK_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    variant = data.get("demo")
    rows, per_seed = data.get("rows") or {}, data.get("per_seed") or {}
    seeds = data.get("seeds") or []
    matches = (data.get("settings") == trained_settings(settings) and data.get("eval") == eval_plan(settings)
               and settings.seed in seeds)
    out: dict[str, Any] = {}
    for stage, name in (("stage 1", STAGE1), ("stage 2", variant)):
        if name in rows:
            out[f"{stage}: benchmark, {counted(len(seeds), 'seed')}"] = rows[name]
        own = (per_seed.get(name) or {}).get(str(settings.seed))
        if own is not None and matches:  # the benchmark's own run of this seed: (value, no spread)
            out[f"{stage}: benchmark seed {settings.seed}"] = {k: (v, None) for k, v in own.items()}
    return {"variant": variant, "seeds": seeds, "rows": out, "ceiling": data.get("ceiling"), "matches": matches}


def evaluate_models(models: dict[str, str], settings: DemoSettings, workers: int = 2) -> dict[str, dict[str, Any]]:
    """The demo's evaluation (:func:`sdtune.toy.evaluate.evaluate` with its suite and seeds) of every model,
    ``{name: model reference}`` -> ``{name: result}``, ``workers`` at a time.

    The demo trains on one torch thread (``sdtune demo --threads``), which leaves a second core idle; evaluating two
    models at once in two Python threads uses it (torch runs each op in its calling thread and releases the GIL),
    and halves the evaluation's wall time on 2 cores (12 s per model here). Each image comes from its own seeded
    generator and each op runs on one thread either way, so the results are bitwise the one-at-a-time ones (tested).
    The pipelines are loaded first, one at a time: loading is not thread-safe (transformers' embedding resize for a
    learned token failed when two loads overlapped)."""
    from concurrent.futures import ThreadPoolExecutor

    from sdtune.toy.evaluate import default_judge, evaluate, load_toy_pipeline

    judge, suite = default_judge(), demo_suite(settings)
    seeds, group_seeds = eval_seeds(settings)
    pipes = {name: load_toy_pipeline(ref) for name, ref in models.items()}

    def one(name: str) -> dict[str, Any]:
        return evaluate(pipes[name], judge, suite, seeds, steps=settings.eval_steps, group_seeds=group_seeds)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return dict(zip(pipes, pool.map(one, pipes), strict=True))
