"""Render an HTML report in headless Chromium and measure what a reader sees: does every image, chart and table
fit the window, did every image load, is any raw JSON on the page? Plus a screenshot whose right margin must stay
empty (content cut at the window's edge shows there).

CI installs Chromium (.ci/run) and sets SDTUNE_REQUIRE_BROWSER=1, so a missing browser fails there instead of
skipping."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

_CHECK = """<script>
window.addEventListener('load', () => {
  const W = document.documentElement.clientWidth;
  const over = [];
  const scrolls = el => {  // inside a box that scrolls sideways and itself fits: the reader scrolls that box
    for (let box = el.parentElement; box && box !== document.body; box = box.parentElement) {
      const x = getComputedStyle(box).overflowX;
      if ((x === 'auto' || x === 'scroll') && box.getBoundingClientRect().right <= W + 1) return true;
    }
    return false;
  };
  for (const el of document.querySelectorAll('img, svg, table, figure, pre')) {
    if (scrolls(el)) continue;
    const r = el.getBoundingClientRect();
    if (r.right > W + 1) over.push(el.tagName + ' ' + (el.getAttribute('src') || '') + ' right=' + Math.round(r.right));
  }
  const broken = [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));
  const text = document.body.innerText;
  const json = text.match(/[{\\[]\\s*"[^"\\n]{1,80}"\\s*:/g) || [];
  const out = {width: W, scrollWidth: document.documentElement.scrollWidth, over: over, broken: broken, json: json,
               images: document.images.length, charts: document.querySelectorAll('svg').length};
  const pre = document.createElement('pre');
  pre.id = 'layout-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    """The browser, or skip (fail under SDTUNE_REQUIRE_BROWSER=1, as CI sets it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("SDTUNE_REQUIRE_BROWSER") == "1":
            pytest.fail("headless Chromium is required here (SDTUNE_REQUIRE_BROWSER=1): apt-get install chromium")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return found


def _run(args: list[str]) -> str:
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def layout(page: Path, width: int) -> dict:
    """Measurements of ``page`` laid out in a ``width``-px window (a copy with a measuring script beside it)."""
    probe = page.with_name(f".probe-{width}-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    try:
        dom = _run([f"--window-size={width},1000", "--virtual-time-budget=15000", "--dump-dom", probe.as_uri()])
    finally:
        probe.unlink()
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert found, f"the measuring script did not run: {dom[-500:]}"
    return json.loads(html.unescape(found.group(1)))


def right_margin_is_blank(page: Path, width: int, shot: Path, margin: int = 6) -> bool:
    """Screenshot ``page`` at ``width`` px; True when its rightmost ``margin`` columns hold nothing but one
    background colour (a grid or table wider than the page would be cut off there)."""
    _run([f"--window-size={width},2400", f"--screenshot={shot}", page.as_uri()])
    with Image.open(shot) as im:
        strip = im.convert("RGB").crop((im.width - margin, 0, im.width, im.height))
        colours = strip.getcolors(maxcolors=4096) or []
    return len(colours) == 1


def assert_fits(page: Path, widths: tuple[int, ...] = (500, 800, 1280)) -> dict:
    """Every image, chart and table fits each window width (500 px, headless Chromium's narrowest window, too; a
    wide table may scroll sideways in its own box); every image loads; no raw JSON is visible."""
    last: dict = {}
    for width in widths:
        last = layout(page, width)
        assert last["scrollWidth"] <= last["width"], f"{width}px: the page scrolls sideways ({last})"
        assert not last["over"], f"{width}px: wider than the window: {last['over'][:5]}"
        assert not last["broken"], f"images that did not load: {last['broken'][:5]}"
        assert not last["json"], f"raw JSON on the page: {last['json'][:3]}"
        assert right_margin_is_blank(page, width, page.with_name(f".shot-{width}.png")), \
            f"{width}px: the screenshot's right edge is not empty: content is cut off"
    return last
