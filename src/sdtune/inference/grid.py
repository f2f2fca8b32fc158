"""Contact sheets: rows of images in one PNG, so a whole sweep can be seen (and shared) at a glance."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

GAP = 2  # pixels of white between cells, enough to tell neighbouring images apart


def make_grid(rows: Sequence[Sequence[Image.Image | None]], gap: int = GAP,
              background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Lay images out row by row; a ``None`` cell stays blank. Cells take the largest image's size."""
    cells = [im for row in rows for im in row if im is not None]
    if not cells:
        raise ValueError("make_grid needs at least one image")
    cell_w = max(im.width for im in cells)
    cell_h = max(im.height for im in cells)
    n_cols = max(len(row) for row in rows)
    grid = Image.new("RGB", (n_cols * cell_w + (n_cols - 1) * gap, len(rows) * cell_h + (len(rows) - 1) * gap),
                     background)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            if im is not None:
                grid.paste(im.convert("RGB"), (c * (cell_w + gap), r * (cell_h + gap)))
    return grid
