"""``sdtune demo`` is one of its benchmark's runs: the same settings, training seed, stage configs and evaluation
as the benchmark's published row, so the numbers printed beside it are its own spread (issue #23, part 6: the demo
once evaluated 4 seeds / 16 images where the benchmark used 6 / 24, and read concept 0.50 beside 0.78 ± 0.10)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from sdtune.config import config_from_dict
from sdtune.models.presets import toy_path
from sdtune.recipes.schema import resolve_config, stage_configs
from sdtune.toy import world
from sdtune.toy.demo import DemoSettings, demo_recipe
from sdtune.toy.demo_eval import BENCHMARK_FILE, benchmark_rows, eval_plan, eval_seeds, trained_settings

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import two_stage  # noqa: E402


def _published() -> dict[str, Any]:
    return json.loads((toy_path() / BENCHMARK_FILE).read_text(encoding="utf-8"))


def _without_paths(value: Any, roots: tuple[Path, ...]) -> Any:
    """The config with every path under ``roots`` replaced by a marker: where runs live differs, nothing else may."""
    if isinstance(value, dict):
        return {k: _without_paths(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v, roots) for v in value]
    if isinstance(value, str) and any(value.startswith(str(r)) for r in roots):
        return "<path>"
    return value


def test_the_published_demo_row_is_the_demos_settings_seed_and_evaluation() -> None:
    published, demo = _published(), DemoSettings()
    variant = published["demo"]
    assert trained_settings(two_stage.settings_for(variant, demo.seed, quick=False)) == trained_settings(demo)
    assert demo.seed in published["seeds"] and str(demo.seed) in published["per_seed"][variant]
    assert published["settings"] == trained_settings(demo), "the shipped numbers are of other demo settings"
    assert published["eval"] == eval_plan(demo)
    bench = two_stage.Bench(two_stage.parse(["--out", "unused"]))
    assert (bench.seeds, bench.group_seeds) == eval_seeds(demo)
    assert bench.suites[demo.person_look] == two_stage.demo_suite(demo)
    rows = benchmark_rows(demo)
    assert rows is not None and rows["matches"] and f"stage 1: benchmark seed {demo.seed}" in rows["rows"]
    assert not benchmark_rows(replace(demo, seeds=4))["matches"], "another evaluation is not the benchmark's run"


def test_the_demos_stage_configs_are_the_benchmarks_for_its_seed(tmp_path: Path) -> None:
    demo = DemoSettings()
    out, bench_out = tmp_path / "demo", tmp_path / "bench"
    for root in (out, bench_out):  # the person stage keeps the concept's prompts: read from its captions
        world.write_concept_set(root / "data" / "concept", demo.concept_images, seed=1, captioned=True,
                                two_tone=demo.concept_two_tone)
    recipe = {stage.name: cfg.model_dump(mode="json") for stage, cfg in stage_configs(demo_recipe(out, demo))}
    settings = two_stage.settings_for(two_stage.DEMO, demo.seed, quick=False)
    data, concept = bench_out / "data", bench_out / "runs" / f"concept-s{demo.seed}"
    bench = {"concept": two_stage.concept_run(settings, data, concept),
             "person": two_stage.person_run(settings, data, bench_out / "runs" / f"demo-s{demo.seed}", concept,
                                            data / "person")}
    bench = {name: resolve_config(config_from_dict(cfg)).model_dump(mode="json") for name, cfg in bench.items()}
    for name in ("concept", "person"):
        assert _without_paths(recipe[name], (out,)) == _without_paths(bench[name], (bench_out,)), name
    assert recipe["concept"]["train"]["seed"] == recipe["person"]["train"]["seed"] == demo.seed
