"""Render evaluation results: JSON (everything), CSV (the table), and an HTML page that opens offline.

The HTML puts numbers next to the pictures behind them, because a CLIP score alone hides what a user sees at a
glance (a subject cut off, a style that took over). It references images by relative path inside the output
folder only, so the folder can be zipped and opened anywhere without a network.
"""

from __future__ import annotations

import csv
import html
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from sdtune.evaluation.stats import Summary
from sdtune.inference.grid import make_grid
from sdtune.words import counted

THUMB = 160  # CSS pixels per image cell; tiny test images are upscaled without blurring


def fmt(metric: dict[str, Any] | None, digits: int = 2) -> str:
    """``mean ± std`` (``n/a`` when absent)."""
    if not metric:
        return "n/a"
    return Summary(metric.get("mean"), metric.get("std"), int(metric.get("n", 0))).text(digits)


def _digits(name: str) -> int:
    return 2 if name in ("clip_t", "generic_clip_t", "generic_clip_delta") else 3


def slug(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "-", text).strip("-")[:60] or "model"


def short_backbone(name: str) -> str:
    """A hub id as is; a local folder by its name (the full path is printed once above the table)."""
    path = Path(name)
    return path.name if (path.is_absolute() or name.startswith((".", "~")) or path.exists()) else name


def summary_rows(results: dict[str, Any], short: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table (rows: models; columns: metrics with spread)."""
    names = list(results["metrics"])
    show = short_backbone if short else str
    header = ["model"] + [f"{m['label']} [{show(m['backbone'])}, {m['scale']}]" for m in results["metrics"].values()]
    rows = [[model["label"]] + [fmt(model["metrics"].get(n), _digits(n)) for n in names]
            for model in results["models"]]
    return header, rows


def write_json(results: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def write_csv(results: dict[str, Any], path: Path) -> Path:
    """One row per model; for each metric its mean, std, n, backbone and scale (so no number loses its units)."""
    names = list(results["metrics"])
    fields = ["model", "ref", "base"] + [f"{n}_{k}" for n in names for k in ("mean", "std", "n", "backbone", "scale")]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for model in results["models"]:
            row: dict[str, Any] = {"model": model["label"], "ref": model["ref"], "base": model["base"] or ""}
            for n in names:
                metric = model["metrics"].get(n) or {}
                for k in ("mean", "std", "n", "backbone", "scale"):
                    value = metric.get(k)
                    row[f"{n}_{k}"] = "" if value is None else value
            writer.writerow(row)
    return path


def write_per_prompt_csv(results: dict[str, Any], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "metric", "prompt", "mean", "std", "n", "backbone", "scale"])
        for model in results["models"]:
            for name, rows in model["per_prompt"].items():
                metric = model["metrics"][name]
                for r in rows:
                    writer.writerow([model["label"], name, r["prompt"], _blank(r["mean"]), _blank(r["std"]), r["n"],
                                     metric["backbone"], metric["scale"]])
    return path


def _blank(x: Any) -> Any:
    return "" if x is None else x


def write_grids(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """One PNG per model: rows are prompts, columns seeds. Returns label -> relative path."""
    grids = {}
    (out_dir / "grids").mkdir(parents=True, exist_ok=True)
    for i, model in enumerate(results["models"]):
        rows = [[Image.open(out_dir / rel).convert("RGB") for rel in row] for row in model["images"]["main"]]
        rel = f"grids/{i:02d}-{slug(model['label'])}.png"
        make_grid(rows).save(out_dir / rel)
        grids[model["label"]] = rel
    return grids


def copy_references(results: dict[str, Any], out_dir: Path, size: int = 256) -> list[str]:
    """Small copies of the reference photos inside the output folder, so the report stays self-contained."""
    out = []
    if results.get("references"):
        (out_dir / "references").mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(results.get("references", [])):
        rel = f"references/{i:03d}-{slug(Path(src).stem)}.png"
        try:
            with Image.open(src) as im:
                thumb = im.convert("RGB")
                thumb.thumbnail((size, size))
                thumb.save(out_dir / rel)
        except OSError:
            shutil.copyfile(src, out_dir / rel)
        out.append(rel)
    return out


# Every table takes the page's width and no more: image cells shrink (up to THUMB px) so any number of seeds fits.
_CSS = """
body{font-family:system-ui,sans-serif;margin:16px auto;max-width:1200px;padding:0 12px;color:#222}
table{border-collapse:collapse;margin:12px 0;width:100%}
table.grid{table-layout:fixed}
th,td{border:1px solid #ccc;padding:3px 5px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#f4f4f4;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
img.cell{width:100%;max-width:THUMBpx;height:auto;image-rendering:pixelated;display:block}
.note{color:#555;font-size:90%}
""".replace("THUMB", str(THUMB))


def _img(rel: str, title: str = "") -> str:
    return f'<img class="cell" src="{quote(rel)}" alt="{html.escape(title)}" title="{html.escape(title)}">'


def render_html(results: dict[str, Any], grids: dict[str, str], references: list[str], *, title: str = "sdtune eval",
                lead: Sequence[str] = ()) -> str:
    """The report page; ``title`` heads it and ``lead`` (lines of text, e.g. ``sdtune pick``'s decision) comes
    first, before the settings and the tables."""
    e = html.escape
    s = results["settings"]
    seeds = s["seeds"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{_CSS}</style>"
             f"</head><body><h1>{e(title)}</h1>"]
    parts += [f"<p><b>{e(line)}</b></p>" for line in lead]
    size = f"{s['width']}x{s['height']}" if s.get("width") and s.get("height") else "model default"
    parts.append(f"<p class='note'>{counted(len(results['models']), 'model')} × "
                 f"{counted(len(s['prompts']), 'prompt')} × "
                 f"{counted(len(seeds), 'seed')} ({', '.join(map(str, seeds))}); steps {s['steps']}, guidance "
                 f"{s['guidance']}, sampler "
                 f"{e(s['scheduler'])}, size {size}, negative prompt: {e(s['negative_prompt'] or '(none)')}. "
                 f"Images generated this time: {results['generation']['generated']}, reused from cache: "
                 f"{results['generation']['reused']}.</p>")
    parts.append("<p class='note'>Each value is mean ± standard deviation over seeds. Scores from different "
                 "backbones do not compare: the backbone and scale are in every column header.</p>")
    header, rows = summary_rows(results)
    parts.append("<h2>Summary</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        parts.append(f"<tr><td>{e(row[0])}</td>" + "".join(f"<td class='num'>{e(c)}</td>" for c in row[1:]) + "</tr>")
    parts.append("</table><ul class='note'>" + "".join(
        f"<li><b>{e(m['label'])}</b> ({e(m['better'])} is better): {e(m['help'])}</li>"
        for m in results["metrics"].values()) + "</ul>")
    parts.extend(checkpoint_charts(results))
    clip = results["metrics"].get("clip_t", {})
    parts.append(f"<h2>CLIP-T per prompt <span class='note'>[{e(str(clip.get('backbone')))}, "
                 f"{e(str(clip.get('scale')))}]</span></h2><table><tr><th>prompt</th>"
                 + "".join(f"<th>{e(m['label'])}</th>" for m in results["models"]) + "</tr>")
    for i, prompt in enumerate(s["prompts"]):
        cells = "".join(f"<td class='num'>{e(fmt(m['per_prompt']['clip_t'][i]))}</td>" for m in results["models"])
        parts.append(f"<tr><td class='prompt'>{e(prompt)}</td>{cells}</tr>")
    parts.append("</table>")
    if references:
        parts.append("<h2>Reference photos</h2><table><tr>" + "".join(f"<td>{_img(r, r)}</td>" for r in references)
                     + "</tr></table>")
    parts.append("<h2>Side by side</h2>")
    for i, prompt in enumerate(s["prompts"]):
        parts.append(f"<h3>{e(prompt)}</h3><table class='grid'><tr><th>model</th>"
                     + "".join(f"<th>seed {sd}</th>" for sd in seeds) + "</tr>")
        for m in results["models"]:
            per_seed = m["per_prompt"]["clip_t"][i]["per_seed"]
            cells = "".join(f"<td>{_img(rel, f'seed {sd}')}<span class='note'>CLIP-T "
                            f"{per_seed.get(str(sd), 0):.2f}</span></td>"
                            for sd, rel in zip(seeds, m["images"]["main"][i], strict=True))
            parts.append(f"<tr><td>{e(m['label'])}</td>{cells}</tr>")
        parts.append("</table>")
    parts.append("<h2>Per model</h2>")
    for m in results["models"]:
        parts.append(f"<h3>{e(m['label'])}</h3><p class='note'>{e(m['ref'])} · fingerprint {e(m['fingerprint'])}"
                     f" · <a href='{quote(grids[m['label']])}'>grid PNG</a></p>")
        parts.append(_grid_table(s["prompts"], seeds, m["images"]["main"]))
        if "generic" in m["images"]:
            title = f"generic prompts (top: this model; below: base {m['base']})" if m["base"] else "generic prompts"
            parts.append(f"<p class='note'>{e(title)}</p>")
            parts.append(_grid_table(s["generic_prompts"], seeds, m["images"]["generic"], m["images"].get("base")))
    parts.append("</body></html>")
    return "\n".join(parts)


def checkpoint_charts(results: dict[str, Any]) -> list[str]:
    """Per run evaluated over its checkpoints (``--checkpoints``): one chart per metric scale, the metrics' mean
    +- std over seeds from step to step (scales are never mixed on one axis)."""
    from sdtune.evaluation.plot import line_chart_svg

    runs: dict[str, list[dict[str, Any]]] = {}
    for m in results["models"]:
        if m.get("checkpoint"):
            runs.setdefault(m["checkpoint"]["run"], []).append(m)
    out = []
    for run, models in runs.items():
        models = sorted(models, key=lambda m: m["checkpoint"]["step"])
        by_scale: dict[str, list[str]] = {}
        for name, info in results["metrics"].items():
            by_scale.setdefault(f"{info['scale']} [{short_backbone(str(info['backbone']))}]", []).append(name)
        out.append(f"<h2>Across the checkpoints of {html.escape(Path(run).name)}</h2>")
        for scale, names in by_scale.items():
            labels = [f"step {m['checkpoint']['step']}" for m in models]
            series = {results["metrics"][n]["label"]: [(m["metrics"].get(n) or {}).get("mean") for m in models]
                      for n in names}
            spread = {results["metrics"][n]["label"]: [(m["metrics"].get(n) or {}).get("std") for m in models]
                      for n in names}
            out.append(line_chart_svg(labels, series, spread, y_label=scale))
        out.extend(val_loss_chart(run))
    return out


def val_loss_chart(run: str | Path) -> list[str]:
    """The run's validation-loss curve (``validation.loss``, every step it was measured at, from metrics.json), as
    one chart; [] when the run measured none (or is unfinished: its checkpoints' charts above still show)."""
    from sdtune.evaluation.plot import line_chart_svg
    from sdtune.run_folder import read_metrics

    curve = (read_metrics(run) or {}).get("val_loss") or {}
    if not curve:
        return []
    steps = sorted(curve, key=int)
    return [line_chart_svg([f"step {s}" for s in steps], {"validation loss": [curve[s] for s in steps]},
                           title="validation loss on held-out images (fixed noise and timesteps)",
                           y_label="MSE")]


def _grid_table(prompts: list[str], seeds: list[int], rows: list[list[str]],
                below: list[list[str]] | None = None) -> str:
    e = html.escape
    out = ["<table class='grid'><tr><th>prompt</th>" + "".join(f"<th>seed {sd}</th>" for sd in seeds) + "</tr>"]
    for i, prompt in enumerate(prompts):
        cells = "".join(f"<td>{_img(rel, prompt)}" + (f"{_img(below[i][j], 'base')}" if below else "") + "</td>"
                        for j, rel in enumerate(rows[i]))
        out.append(f"<tr><td class='prompt'>{e(prompt)}</td>{cells}</tr>")
    return "".join(out) + "</table>"


def write_reports(results: dict[str, Any], out_dir: Path, *, title: str = "sdtune eval", lead: Sequence[str] = ()
                  ) -> dict[str, Path]:
    """Write results.json, results.csv, results_per_prompt.csv, grids/ and report.html into ``out_dir``
    (``title``, ``lead``: as :func:`render_html`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = write_grids(results, out_dir)
    references = copy_references(results, out_dir)
    (out_dir / "report.html").write_text(render_html(results, grids, references, title=title, lead=lead),
                                           encoding="utf-8")
    return {
        "json": write_json(results, out_dir / "results.json"),
        "csv": write_csv(results, out_dir / "results.csv"),
        "per_prompt_csv": write_per_prompt_csv(results, out_dir / "results_per_prompt.csv"),
        "html": out_dir / "report.html",
    }
