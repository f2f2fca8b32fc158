"""The demo report shows the person, class and composite grids large enough to judge (16 seeds wrap 4 to a row)
and fits the window."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from sdtune.toy.report import write_report
from tests.browser import assert_fits


def _group(prompts: list[str], seeds: int) -> dict:
    images = [Image.new("RGB", (32, 32), (40 * (i % 6), 100, 200)) for i in range(len(prompts) * seeds)]
    return {"images_pil": images, "seeds": list(range(seeds)), "prompts": prompts}


def test_person_grids_wrap_to_rows_of_four_and_the_page_fits(tmp_path: Path) -> None:
    results = {name: {"old": _group(["a red circle", "a blue star"], 4), "person": _group(["a photo of sks"], 16),
                      "cls": _group(["a photo of a red square"], 16), "composite": _group(["sks red arrow"], 16)}
               for name in ("base", "concept", "person")}
    page = write_report(tmp_path, results, {"person": {"person_judge": 1.0}}, {"total": 1.0}, {"person": {}})
    assert Image.open(tmp_path / "02-person.png").size == (4 * 32 * 2, 4 * 32 * 2), "16 seeds: 4 rows of 4"
    assert Image.open(tmp_path / "00-old.png").size == (4 * 32 * 2, 2 * 32 * 2), "one row per old prompt"
    text = page.read_text()
    assert "16 seeds, 4 to a row." in text and "Columns: 4 seeds." in text
    shown = assert_fits(page)
    assert shown
