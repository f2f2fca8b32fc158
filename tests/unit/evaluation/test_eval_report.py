"""The report: JSON, CSV and an offline HTML page whose every referenced file exists; TensorBoard and wandb logs."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image

from sdtune.evaluation.report import write_reports
from sdtune.evaluation.runner import EvalRequest, run_eval
from sdtune.evaluation.tracking import log_tensorboard, log_wandb
from sdtune.inference.generate import GenerationSettings
from tests.browser import assert_fits

HOSTILE = 'a <b>bold</b> & "quoted" photo of sks person'


@pytest.fixture(scope="module")
def report(tmp_path_factory, eval_runs, tiny_clip, reference_dir):
    out = tmp_path_factory.mktemp("report")
    req = EvalRequest(models=["tiny", str(eval_runs["lora"])], prompts=[HOSTILE, "sks person"], seeds=[0, 1],
                      out_dir=out, settings=GenerationSettings(steps=2), clip=str(tiny_clip),
                      reference_dir=reference_dir, generic_prompts=["a dog"])
    results = run_eval(req, progress=False)
    return out, results, write_reports(results, out)


class Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)

    def handle_data(self, data):
        self.text.append(data)


def test_html_references_only_existing_local_files(report):
    out, results, paths = report
    parser = Refs()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    assert parser.refs, "the report shows no images"
    for ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), ref  # offline and relocatable
        assert (out / ref).is_file(), ref
    n_images = sum(len(row) for m in results["models"] for g in m["images"].values() for row in g)
    assert len([r for r in parser.refs if r.startswith("cache/")]) >= n_images
    assert any(r.startswith("references/") for r in parser.refs)
    assert len([r for r in parser.refs if r.startswith("grids/")]) == 2
    text = " ".join(parser.text)
    assert HOSTILE in text  # escaped in the source, shown verbatim
    assert "<b>bold</b>" not in paths["html"].read_text(encoding="utf-8")
    assert "CLIP-T [" in text and "100*max(cos,0)" in text


def test_json_and_csv(report, tiny_clip):
    out, results, paths = report
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == json.loads(json.dumps(results))
    rows = list(csv.DictReader(paths["csv"].open(encoding="utf-8")))
    assert [r["model"] for r in rows] == [m["label"] for m in results["models"]]
    assert rows[1]["clip_t_backbone"] == str(tiny_clip) and rows[1]["clip_t_scale"] == "100*max(cos,0)"
    assert float(rows[1]["clip_t_mean"]) == pytest.approx(results["models"][1]["metrics"]["clip_t"]["mean"])
    assert rows[0]["generic_clip_delta_mean"] == ""  # the base has no baseline
    per_prompt = list(csv.DictReader(paths["per_prompt_csv"].open(encoding="utf-8")))
    assert {r["prompt"] for r in per_prompt if r["metric"] == "clip_t"} == {HOSTILE, "sks person"}


def test_grid_png_is_prompts_by_seeds(report):
    out, results, _ = report
    with Image.open(next((out / "grids").glob("00-*.png"))) as grid:
        assert grid.size == (2 * 32 + 2, 2 * 32 + 2)


def test_report_renders_in_headless_chromium(report, tmp_path):
    _, results, paths = report
    seen = assert_fits(paths["html"])  # every image loads, nothing wider than the window, no raw JSON
    assert seen["images"] >= sum(len(row) for m in results["models"] for g in m["images"].values() for row in g)


def test_tensorboard_log(report, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, results, _ = report
    log_tensorboard(results, tmp_path / "tb")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tag = f"eval/clip_t/{results['models'][1]['label']}"
    assert tag in acc.Tags()["scalars"]
    assert acc.Scalars(tag)[0].value == pytest.approx(results["models"][1]["metrics"]["clip_t"]["mean"], rel=1e-6)


def test_wandb_offline_log(report, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out, results, _ = report
    work = tmp_path / "wb"
    shutil.copytree(out / "grids", work / "grids")
    log_wandb(results, "sdtune-test", work)
    (run_dir,) = (work / "wandb").glob("offline-run-*")
    assert list(run_dir.rglob("*.table.json")) and list(run_dir.rglob("*.png"))
