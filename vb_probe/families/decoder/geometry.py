"""Which pixels of the original image each image token of a decoder VLM covers, per model, from its own processor.

Every model here lays its image tokens out as a row-major grid over the picture its image processor made (its
*view*): LLaVA-1.5 a 24 × 24 grid over a 336² centre crop of the image resized to a short side of 336 (or, with
``do_pad``, over the image padded to a square first), Qwen2-VL one token per 28 × 28 cell of the image
``smart_resize``-d to multiples of 28 (the grid read from ``image_grid_thw``), PaliGemma a 16 × 16 grid over the
image squashed to 224². The sizes come from the processor's own output (never re-derived); mapping a view pixel
back to the original is then an offset and a scale per axis, kept in :class:`ViewMap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vb_probe.data.features import Regions
from vb_probe.errors import DataError


@dataclass(frozen=True)
class ViewMap:
    """View pixel ``(u, v)`` → original pixel ``(x, y) = ((u + left) · sx − pad_x, (v + top) · sy − pad_y)``: ``left``,
    ``top`` where a crop starts in the resized image, ``sx``, ``sy`` resized → (padded) original, ``pad_x``,
    ``pad_y`` the padding added around the original before resizing. ``size`` (height, width) of the view."""

    size: tuple[int, int]
    scale: tuple[float, float]
    crop: tuple[int, int] = (0, 0)  # (top, left)
    pad: tuple[float, float] = (0.0, 0.0)  # (pad_y, pad_x)

    def to_original(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sy, sx = self.scale
        return (u + self.crop[1]) * sx - self.pad[1], (v + self.crop[0]) * sy - self.pad[0]

    def to_view(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The inverse of :meth:`to_original`: original pixel ``(x, y)`` → view pixel ``(u, v)``."""
        sy, sx = self.scale
        return (x + self.pad[1]) / sx - self.crop[1], (y + self.pad[0]) / sy - self.crop[0]

    def seen(self) -> np.ndarray:
        """[4] the part of the original image the view shows, (x1, y1, x2, y2)."""
        x, y = self.to_original(np.array([0.0, self.size[1]]), np.array([0.0, self.size[0]]))
        return np.array([x[0], y[0], x[1], y[1]], dtype=np.float64)


def cell_boxes(grid: tuple[int, int], view: ViewMap) -> np.ndarray:
    """[rows · cols, 4] float32: each grid cell of the view, row-major, as a box in the original image's pixels."""
    rows, cols = grid
    height, width = view.size
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    u1, v1 = c.ravel() * width / cols, r.ravel() * height / rows
    x1, y1 = view.to_original(u1, v1)
    x2, y2 = view.to_original(u1 + width / cols, v1 + height / rows)
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


@dataclass
class ImageCells(Regions):
    """One image as a decoder VLM sees it: ``boxes`` [R, 4] its image tokens' cells in the original pixels, the
    first view's row-major over ``grid`` (rows, columns) through ``view`` (the processor's resize/crop); ``processed``
    the processor's own output for the prompt's prefix with this image (input_ids, pixel_values, image_grid_thw …).

    ``slots`` [T]: for each position of the image token in the prompt (in order), the cell it is, or -1 for a token
    in the image span that is no cell (LLaVA-NeXT's row newlines); None: each position the next cell. ``views``
    names the views the cells belong to (one: ``image``; tiled models: ``global``, ``tile 1,2`` …) and ``view_of``
    [R] each cell's view (None: all the first). ``keys`` [R]: a cross-attention model's (Llama 3.2 Vision's) index of
    each cell among the vision states its text attends to (None: the image tokens are in the prompt)."""

    grid: tuple[int, int] = (0, 0)
    view: ViewMap | None = None
    processed: dict[str, torch.Tensor] = field(default_factory=dict)
    slots: np.ndarray | None = None
    views: tuple[str, ...] = ("image",)
    view_of: np.ndarray | None = None
    keys: np.ndarray | None = None
    kind = "pixels"

    def places(self) -> np.ndarray:
        """[R] int64 each cell's place (:mod:`vb_probe.metrics.positions`) on the primary view: its own cell's place
        for the primary view's cells; for another view's (a tile, a crop), the place of the primary view holding
        the cell's centre, so a place is one part of the picture whichever view a head picks it in."""
        from vb_probe.metrics.positions import SIDE, cell_places

        primary = self.grid[0] * self.grid[1]
        places = np.empty(len(self.boxes), np.int64)
        places[:primary] = cell_places(torch.tensor([self.grid]), primary)[0].numpy()
        if len(self.boxes) > primary:
            centre_x = (self.boxes[primary:, 0] + self.boxes[primary:, 2]) / 2
            centre_y = (self.boxes[primary:, 1] + self.boxes[primary:, 3]) / 2
            u, v = self.view.to_view(centre_x.astype(np.float64), centre_y.astype(np.float64))
            by = np.clip(np.floor(v / self.view.size[0] * SIDE), 0, SIDE - 1).astype(np.int64)
            bx = np.clip(np.floor(u / self.view.size[1] * SIDE), 0, SIDE - 1).astype(np.int64)
            places[primary:] = by * SIDE + bx
        return places


def squashed_view(width: int, height: int, size: tuple[int, int], covered: tuple[int, int] | None = None) -> ViewMap:
    """A processor that resizes to a fixed ``size`` (height, width) whatever the aspect ratio (PaliGemma's SigLIP;
    Qwen2-VL's ``smart_resize`` also lands on a size of its own choosing with no crop). ``covered``: the part of it
    the tower's patches cover, from the top left (a 384² SigLIP view in 14-pixel patches: 27 × 14 = 378; the last
    6 pixels are read by no patch)."""
    return ViewMap(covered or size, (height / size[0], width / size[1]))


def patch_cover(side: int, patch: int) -> int:
    """Pixels a side of a ``side``² view that whole ``patch``-pixel patches cover (a stride-``patch`` convolution
    drops the rest)."""
    return side // patch * patch


@dataclass(frozen=True)
class View:
    """One picture a model's processor makes of the image (the whole image, a tile, a crop): its ``name``, how
    its pixels map to the original (``view``) and its grid of image tokens (rows, columns), row-major."""

    name: str
    view: ViewMap
    grid: tuple[int, int]


def views_cells(image_id: str, width: int, height: int, views: list[View], processed: dict,
                slots: np.ndarray | None = None) -> ImageCells:
    """An image seen through several ``views`` (the first the primary one, the whole image: its grid is the one
    places and spatial entropies are read on): the cells of every view in order, each cell's view, and
    ``slots`` (see :class:`ImageCells`; None: the prompt's image tokens are the cells in this order)."""
    boxes = np.concatenate([cell_boxes(v.grid, v.view) for v in views])
    view_of = np.concatenate([np.full(v.grid[0] * v.grid[1], i, np.int64) for i, v in enumerate(views)])
    primary = views[0]
    return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                      primary.view.seen(), primary.grid, primary.view, processed, slots,
                      tuple(v.name for v in views), view_of)


def image_slots(positions: torch.Tensor, cells: ImageCells) -> torch.Tensor:
    """[R] the prompt positions of ``cells``' image tokens, in cell order: ``positions`` [T] are where the image token
    id stands; ``cells.slots`` says which of them are which cell (the rest, such as row newlines, are no cell)."""
    if cells.slots is None:
        if len(positions) != len(cells.boxes):
            raise DataError(f"image {cells.image_id}: the prompt holds {len(positions)} image tokens but the processor's "
                            f"grid has {len(cells.boxes)} cells; the processor does not match the model")
        return positions
    if len(positions) != len(cells.slots):
        raise DataError(f"image {cells.image_id}: the prompt holds {len(positions)} image tokens but the processor "
                        f"laid out {len(cells.slots)}; the processor does not match the model")
    order = torch.full((len(cells.boxes),), -1, dtype=torch.long)
    slots = torch.as_tensor(cells.slots, dtype=torch.long)
    is_cell = slots >= 0
    order[slots[is_cell]] = positions[is_cell]
    return order
