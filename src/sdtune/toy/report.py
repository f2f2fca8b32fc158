"""The demo's report: a table (with the benchmark's spread beside the single run), a chart of the metrics across
stages and the person stage's checkpoints, and image grids - one HTML page that fits any window, no raw data on
it (``results.json`` beside it holds every number)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from sdtune.evaluation.plot import line_chart_svg
from sdtune.toy.evaluate import save_grid
from sdtune.toy.world import PERSON
from sdtune.words import counted

# (key, label, what it measures) of the table; fractions of generated images unless said
_PERSON_PROMPT, _COMPOSITE_PROMPT = PERSON.instance_prompt, PERSON.composite_prompt()  # the demo's person
COLUMNS: list[tuple[str, str, str]] = [
    ("old_both", "old acc", "colour and shape right on the pretraining world's prompts (forgetting)"),
    ("concept", "concept", "'a <colour> arrow' draws the arrow"),
    ("person_judge", "person", f"'{_PERSON_PROMPT}': the judge sees the {PERSON.pattern} {PERSON.colour} and "
                               f"{PERSON.colour2}"),
    ("person_pixels", "person (px)", "the same, by the pixel check (both colours cover the image)"),
    ("class_solid", "class plain", f"'{PERSON.class_prompt}' stays a plain "
                                   f"{PERSON.shape} (no drift)"),
    ("composite", "composite", f"'{_COMPOSITE_PROMPT}': the person's identity in the arrow's form (judge); "
                               "no stage trains on it"),
    ("composite_pixels", "composite (px)", "the composite, identity by the pixel check"),
    ("clip_score_old", "CLIP old", "toy-CLIP score (0-100) of the old prompts' images against their prompts"),
]
GROUPS = {"old": "old world prompts (forgetting)", "concept": "the concept: a <colour> arrow",
          "person": f"the person: {_PERSON_PROMPT}", "cls": f"the class: {PERSON.class_prompt} (drift)",
          "composite": f"the composite: {_COMPOSITE_PROMPT} (the person doing the concept)"}
PLOTTED = [("old_both", "old acc"), ("concept", "concept"), ("person_judge", "person"),
           ("composite", "composite"), ("class_solid", "class plain")]
CSS = """
body{font-family:system-ui,sans-serif;margin:16px auto;max-width:1100px;padding:0 12px;color:#222}
table{border-collapse:collapse;margin:8px 0;max-width:100%}
.wide{overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left}
tr.bench td{background:#f4f7fb;font-style:italic}
.grids{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;flex:1 1 220px;max-width:340px}
figure img{width:100%;height:auto;image-rendering:pixelated;display:block;border:1px solid #ddd}
figcaption{font-size:85%;color:#444}
.note{color:#555;font-size:90%}
"""


def _cell(value: Any, spread: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    digits = 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}" + (f" ± {spread:.{digits}f}" if spread is not None else "")


def format_table(table: dict[str, dict[str, float]], benchmark: dict[str, Any] | None = None) -> str:
    """The table as plain text; with ``benchmark`` (mean, std) rows under the single run's."""
    width = max(len(n) for n in [*table, *((benchmark or {}).get("rows") or {})]) + 2
    lines = [f"{'model':{width}s}" + "".join(f"{label:>15s}" for _, label, _ in COLUMNS)]
    for name, row in table.items():
        lines.append(f"{name:{width}s}" + "".join(f"{_cell(row.get(k)):>15s}" for k, _, _ in COLUMNS))
    for name, row in ((benchmark or {}).get("rows") or {}).items():
        lines.append(f"{name:{width}s}" + "".join(
            f"{_cell(*(row[k] if k in row else (None, None))):>15s}" for k, _, _ in COLUMNS))
    return "\n".join(lines)


def _columns(group: dict[str, Any]) -> int:
    """Images per grid row: one row per prompt (its seeds), except one prompt's many seeds (the person, class and
    composite groups: 16), wrapped 4 to a row so each 32 px image is shown large enough to judge."""
    seeds = len(group["seeds"])
    return 4 if len(group["prompts"]) == 1 and seeds > 8 else seeds


def write_report(folder: Path, results: dict[str, Any], table: dict[str, dict[str, float]],
                 seconds: dict[str, float], chart: dict[str, dict[str, float]],
                 benchmark: dict[str, Any] | None = None, notes: list[str] | None = None) -> Path:
    """``results.json`` + one grid per model and prompt group + ``index.html``; returns the page's path.

    ``table``: the models' rows; ``chart``: the points of the chart (stages and checkpoints, in order);
    ``benchmark``: ``{"label": ..., "rows": {name: {key: (mean, std)}}}`` shown under the single run."""
    e = html.escape
    folder.mkdir(parents=True, exist_ok=True)
    grids: dict[str, dict[str, str]] = {}
    plain: dict[str, Any] = {}
    for index, (name, res) in enumerate(results.items()):
        grids[name] = {}
        plain[name] = {k: v for k, v in res.items() if k not in GROUPS}
        for group in GROUPS:
            if group in res:
                rel = f"{index:02d}-{group}.png"
                save_grid(res[group]["images_pil"], _columns(res[group]), folder / rel)
                grids[name][group] = rel
                plain[name][group] = {k: v for k, v in res[group].items() if k != "images_pil"}
    (folder / "results.json").write_text(json.dumps({"table": table, "chart": chart, "benchmark": benchmark,
                                                     "results": plain, "seconds": seconds}, indent=2))
    head = "".join(f"<th title='{e(what)}'>{e(label)}</th>" for _, label, what in COLUMNS)
    rows = [f"<tr><td>{e(name)}</td>" + "".join(f"<td>{_cell(row.get(k))}</td>" for k, _, _ in COLUMNS) + "</tr>"
            for name, row in table.items()]
    for name, row in ((benchmark or {}).get("rows") or {}).items():
        rows.append(f"<tr class='bench'><td>{e(name)}</td>" + "".join(
            f"<td>{_cell(*(row[k] if k in row else (None, None)))}</td>" for k, _, _ in COLUMNS) + "</tr>")
    series = {label: [point.get(key) for point in chart.values()] for key, label in PLOTTED}
    svg = line_chart_svg(list(chart), series, title="the metrics across stages and the person stage's checkpoints",
                         y_label="fraction of images")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sdtune demo</title><style>{CSS}</style>"
             "</head><body><h1>sdtune demo: two-stage fine-tuning of the toy model</h1>",
             "<p>Fractions of generated images the toy judge reads as asked (prompt × seed, guidance 4, 20 steps). "
             "This is <b>one run</b>: the same settings on other seeds or another machine move these numbers; the "
             "shaded rows are the benchmark's mean ± std over training seeds "
             "(<code>benchmarks/two_stage.py</code>).</p>",
             # the results scroll sideways in their own box on a narrow screen, the page does not
             f"<div class='wide'><table><tr><th>model</th>{head}</tr>{''.join(rows)}</table></div>",
             "<ul class='note'>" + "".join(f"<li><b>{e(label)}</b>: {e(what)}</li>" for _, label, what in COLUMNS)
             + "".join(f"<li>{e(n)}</li>" for n in notes or []) + "</ul>",
             f"<h2>Across stages and checkpoints</h2>{svg}"]
    for group, title in GROUPS.items():
        figures = "".join(f"<figure><img src='{e(g[group])}' alt='{e(name)}'><figcaption>{e(name)}</figcaption>"
                          "</figure>" for name, g in grids.items() if group in g)
        if not figures:
            continue
        first = next(r for r in results.values() if group in r)[group]
        seeds, columns = len(first["seeds"]), _columns(first)
        shown = counted(seeds, "seed")
        layout = f"Columns: {shown}." if columns == seeds else f"{shown}, {columns} to a row."
        parts.append(f"<h2>{e(title)}</h2><p class='note'>rows: {e('; '.join(first['prompts']))}. {layout}</p>"
                     f"<div class='grids'>{figures}</div>")
    timing = "".join(f"<tr><td>{e(step)}</td><td>{secs:.0f} s</td></tr>" for step, secs in seconds.items())
    parts.append(f"<h2>Time</h2><table>{timing}</table><p class='note'>All numbers: results.json.</p>"
                 "</body></html>")
    (folder / "index.html").write_text("\n".join(parts), encoding="utf-8")
    return folder / "index.html"
