"""From attention maps on an image grid to boxes, and the spatial entropy that chooses the heads: every variant of
Kang et al. (CVPR 2025) as a named setting, pure functions over numpy arrays (no model, no torch).

The paper and its released code differ at each step; each difference is a named choice here, so two runs that
differ in one step differ in one key (docs/PROTOCOL.md walks through them side by side):

- **smoothing**: the paper's 7-tap Gaussian of σ 1 (radius 3) or the released ``bbox.py``'s, scipy's default
  ``gaussian_filter`` of σ 1 (truncated at 4 σ: 9 taps); both reflect at the edges, as scipy does by default.
- **foreground**: the cells above the map's mean (the paper) or above twice the mean with a floor of 0.001 (the
  released selection code, 2025-08).
- **components**: 8-connected, labelled by ``scipy.ndimage.label`` (many maps in one call: a structuring element
  that connects cells within one map only).
- **spatial entropy**: over the components, each weighted by its area (the paper) or its attention mass (the
  released code); a map with no component is +inf (not localized: the paper) or 0 (best: the released code).
- **readout**: the tight box of the largest component by area (the paper), the box around all foreground cells
  (the released ``bbox.py``), the peak cell, or the cell holding the attention-weighted centroid.

Shapes: ``maps`` [M, h, w] float (M maps of one grid), ``mask`` [M, h, w] bool; a readout's cells [h · w] bool,
row-major as the grid's image tokens are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

PAPER_TAPS, RELEASED_TAPS = 7, 9  # the paper's kernel; scipy's default at σ 1 (radius = int(4 σ + 0.5) = 4)
SIGMA = 1.0
RELEASED_FLOOR = 0.001  # the released selection code's lowest threshold

Threshold = Literal["mean", "2mean"]
Weight = Literal["area", "mass"]
Readout = Literal["blob", "all", "peak", "centroid"]
READOUTS: tuple[Readout, ...] = ("blob", "all", "peak", "centroid")


@dataclass(frozen=True)
class EntropyVariant:
    """How a map's spatial entropy is computed (:func:`spatial_entropies`)."""

    threshold: Threshold
    weight: Weight
    floor: float = 0.0
    empty: float = float("inf")  # a map with nothing above its threshold


ENTROPY_VARIANTS: dict[str, EntropyVariant] = {
    "paper": EntropyVariant("mean", "area"),  # Kang et al.'s text: above the mean, components by area
    "released-mean": EntropyVariant("mean", "mass"),  # above the mean, components by attention mass
    "released": EntropyVariant("2mean", "mass", RELEASED_FLOOR, 0.0),  # the 2025-08 code: 2 × mean, floor, empty 0
}


@dataclass(frozen=True)
class BoxReadout:
    """How a summed map becomes cells (:func:`readout_cells`): smoothing taps (0: none), threshold, readout."""

    taps: int
    threshold: Threshold
    readout: Readout


READOUT_SETTINGS: dict[str, BoxReadout] = {
    "paper": BoxReadout(PAPER_TAPS, "mean", "blob"),  # 7-tap σ 1, above the mean, the largest blob's tight box
    "released": BoxReadout(RELEASED_TAPS, "mean", "all"),  # scipy's 9 taps, the box around all foreground
    "peak": BoxReadout(0, "mean", "peak"),  # the cell of highest attention
    "centroid": BoxReadout(0, "mean", "centroid"),  # the cell holding the attention-weighted centre
}

# 8-connectivity within each map of a stack, none across maps
_EIGHT_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_EIGHT_IN_PLANE[1] = True


def gaussian_smooth(maps: np.ndarray, taps: int = PAPER_TAPS, sigma: float = SIGMA) -> np.ndarray:
    """Each map of ``maps`` [M, h, w] (or one [h, w]) convolved with a ``taps``-tap Gaussian of ``sigma`` along
    rows and columns (separable, edges reflected); ``taps`` 0 or 1 returns the maps unchanged (as float64)."""
    maps = np.asarray(maps, dtype=np.float64)
    if taps <= 1:
        return maps.copy()
    if taps % 2 == 0:
        raise ValueError(f"a Gaussian of {taps} taps has no centre; use an odd number")
    radius = taps // 2
    sigmas = (0.0,) * (maps.ndim - 2) + (sigma, sigma)
    # scipy's radius is int(truncate · σ + 0.5): truncate = radius / σ gives exactly ``taps`` taps
    return ndimage.gaussian_filter(maps, sigmas, truncate=radius / sigma, mode="reflect")


def foreground(maps: np.ndarray, threshold: Threshold = "mean", floor: float = 0.0) -> np.ndarray:
    """``maps`` [M, h, w] → [M, h, w] bool: the cells strictly above ``threshold`` (the map's mean, or twice it),
    and above ``floor``."""
    maps = np.asarray(maps, dtype=np.float64)
    factor = {"mean": 1.0, "2mean": 2.0}[threshold]
    level = np.maximum(factor * maps.mean(axis=(-2, -1), keepdims=True), floor)
    return maps > level


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of each map of ``mask`` [M, h, w] bool, in one ``scipy.ndimage.label`` call:
    labels [M, h, w] int (0 background, 1.. unique across the stack, in raster order of the stack) and how many."""
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask.reshape(-1, *mask.shape[-2:]), structure=_EIGHT_IN_PLANE)
    return labels.reshape(mask.shape), int(count)


def spatial_entropies(maps: np.ndarray, variant: EntropyVariant = ENTROPY_VARIANTS["released-mean"]) -> np.ndarray:
    """``maps`` [M, h, w] → [M] float64: each map's entropy (nats) over its components under ``variant``: 0 for
    one component, log k for k equal ones, ``variant.empty`` for a map with nothing above its threshold."""
    maps = np.asarray(maps, dtype=np.float64)
    count = maps.shape[0]
    labels, n = label_components(foreground(maps, variant.threshold, variant.floor))
    weights = maps.ravel() if variant.weight == "mass" else None
    size = np.bincount(labels.ravel(), weights=weights, minlength=n + 1)[1:]  # [n] each component's weight
    owner = np.zeros(n + 1, dtype=np.int64)  # the map each component lies in
    owner[labels.ravel()] = np.repeat(np.arange(count), labels[0].size)
    owner = owner[1:]
    total = np.bincount(owner, weights=size, minlength=count)  # [M]
    p = size / np.maximum(total[owner], np.finfo(np.float64).tiny)
    terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    entropy = np.bincount(owner, weights=terms, minlength=count) + 0.0
    has = np.bincount(owner, minlength=count) > 0
    return np.where(has, entropy, variant.empty)


def readout_cells(summed: np.ndarray, setting: BoxReadout) -> np.ndarray:
    """One summed map ``summed`` [h, w] → [h · w] bool, the cells the readout keeps (row-major): the largest
    8-connected foreground component by area (ties: the one holding more attention, then the first in raster
    order), all foreground cells, the peak cell, or the cell holding the attention-weighted centroid. A map with
    nothing above its threshold keeps its peak cell (a box is always given)."""
    summed = np.asarray(summed, dtype=np.float64)
    height, width = summed.shape
    cells = np.zeros(height * width, dtype=bool)
    if setting.readout == "peak":
        cells[int(np.argmax(summed))] = True
        return cells
    if setting.readout == "centroid":
        total = summed.sum()
        if total <= 0:
            cells[int(np.argmax(summed))] = True
            return cells
        rows, cols = np.mgrid[0:height, 0:width]
        r, c = (summed * rows).sum() / total, (summed * cols).sum() / total
        cells[int(min(height - 1, np.floor(r + 0.5))) * width + int(min(width - 1, np.floor(c + 0.5)))] = True
        return cells
    mask = foreground(summed[None], setting.threshold)[0]
    if not mask.any():
        cells[int(np.argmax(summed))] = True
        return cells
    if setting.readout == "all":
        return mask.ravel()
    labels, n = label_components(mask[None])
    labels = labels[0].ravel()
    area = np.bincount(labels, minlength=n + 1)[1:]
    mass = np.bincount(labels, weights=summed.ravel(), minlength=n + 1)[1:]
    best = max(range(n), key=lambda i: (area[i], mass[i], -i)) + 1
    return labels == best


def summed_map(maps: np.ndarray, taps: int = PAPER_TAPS, sigma: float = SIGMA) -> np.ndarray:
    """The heads' maps [k, h, w] of one query each smoothed, then summed: [h, w] (Kang et al.'s combination)."""
    return gaussian_smooth(maps, taps, sigma).sum(0)


def cells_box(cells: np.ndarray, cell_boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """The tight box [4] (x1, y1, x2, y2, original pixels) around the kept ``cells`` [R] bool, each cell's box in
    ``cell_boxes`` [R, 4] (original pixels: a padded view's cells may lie outside the image), clipped to the
    ``width`` × ``height`` image; a box wholly outside it is empty (zero area)."""
    chosen = np.asarray(cell_boxes, dtype=np.float64)[np.asarray(cells, dtype=bool)]
    box = np.array([chosen[:, 0].min(), chosen[:, 1].min(), chosen[:, 2].max(), chosen[:, 3].max()])
    box[[0, 2]] = np.clip(box[[0, 2]], 0.0, width)
    box[[1, 3]] = np.clip(box[[1, 3]], 0.0, height)
    return box


def point_in_boxes(point: np.ndarray, boxes: np.ndarray) -> bool:
    """Whether ``point`` (x, y) lies in any of ``boxes`` [n, 4] (edges included): the pointing rule."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y = float(point[0]), float(point[1])
    return bool(((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])).any())


def jaccard(a, b) -> float:
    """|a ∩ b| / |a ∪ b| of two sets of heads (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


__all__ = ["ENTROPY_VARIANTS", "PAPER_TAPS", "READOUTS", "READOUT_SETTINGS", "RELEASED_TAPS", "BoxReadout",
           "EntropyVariant", "cells_box", "foreground", "gaussian_smooth", "jaccard", "label_components",
           "point_in_boxes", "readout_cells", "spatial_entropies", "summed_map"]
