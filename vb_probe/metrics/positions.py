"""Places on a patch grid, for the fixed-position baseline and the unsupervised choice of localization heads.

A *place* is one of ``SIDE × SIDE`` bins of the model's view (its resized image), so images whose grids differ
(Qwen2-VL) share places: a grid cell's place is the bin holding its centre, and a place's cell in an image is the
cell holding the bin's centre (for grids of at most ``SIDE`` cells a side the two agree, cell for cell). The
*fixed-position baseline* always points at the place the probed heads pick most often on the selection split: a
head that only ever looks there (an attention sink, an image corner) scores no better than it.
"""

from __future__ import annotations

import torch

SIDE = 64  # bins a side
BINS = SIDE * SIDE


def cell_places(grids: torch.Tensor, r_max: int) -> torch.Tensor:
    """``grids`` [n, 2] (rows, columns) → [n, r_max] each row-major cell's place (cells beyond the grid: 0)."""
    cells = torch.arange(r_max)[None, :]
    rows, cols = grids[:, :1], grids[:, 1:]
    r, c = cells // cols.clamp(min=1), cells % cols.clamp(min=1)
    by = ((2 * r + 1) * SIDE) // (2 * rows.clamp(min=1))  # floor(SIDE · (r + ½) / rows), exactly in integers
    bx = ((2 * c + 1) * SIDE) // (2 * cols.clamp(min=1))
    return torch.where(cells < rows * cols, by * SIDE + bx, torch.zeros(()).long())


def place_cells(grids: torch.Tensor) -> torch.Tensor:
    """``grids`` [n, 2] → [n, BINS] the row-major cell of each image holding each place's centre."""
    place = torch.arange(BINS)[None, :]
    by, bx = place // SIDE, place % SIDE
    rows, cols = grids[:, :1], grids[:, 1:]
    r = ((2 * by + 1) * rows) // (2 * SIDE)  # floor(rows · (by + ½) / SIDE)
    c = ((2 * bx + 1) * cols) // (2 * SIDE)
    return r * cols + c


def place_label(place: int) -> tuple[float, float]:
    """A place's centre as (row, column) fractions of the view, 0 top/left to 1 bottom/right."""
    by, bx = divmod(int(place), SIDE)
    return ((by + 0.5) / SIDE, (bx + 0.5) / SIDE)


def picks_per_place(choice: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
    """``choice`` [layer, n, head] the picked cell of every head, ``places`` [n, R] → [BINS] int64 picks per place."""
    picked = places[None, :, None, :].expand(choice.shape[0], -1, choice.shape[2], -1).gather(-1, choice[..., None])
    return torch.bincount(picked.flatten().cpu(), minlength=BINS)


def hits_per_place(hits: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    """``hits`` [n, R] which cells hit each query's gold, ``grids`` [n, 2] → [BINS] int64: for each place, how many
    queries a pointer fixed there would get right."""
    return hits.gather(-1, place_cells(grids).to(hits.device)).sum(0).to(torch.int64).cpu()
