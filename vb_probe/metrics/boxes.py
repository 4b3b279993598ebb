"""Box geometry. Boxes are x1, y1, x2, y2 in pixels; areas are continuous ((x2 - x1) × (y2 - y1), no +1)."""

from __future__ import annotations

import numpy as np

IOU_THRESHOLD = 0.5


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union: ``a`` [n, 4], ``b`` [m, 4] → [n, m]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def region_hits(regions: np.ndarray, gold: np.ndarray, threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """[R] bool: region r is correct when IoU(r, g) ≥ threshold for any gold box g (no union box)."""
    if len(gold) == 0:
        return np.zeros(len(regions), dtype=bool)
    return (iou(regions, gold) >= threshold).any(axis=1)


def centre_hits(cells: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """[R] bool, the pointing rule: the centre of image token r's box ``cells`` [R, 4] lies inside a gold box
    (edges included). For patches, whose cells are rarely IoU ≥ 0.5 with a box, and beside IoU for regions."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 4)
    gold = np.asarray(gold, dtype=np.float64).reshape(-1, 4)
    if len(gold) == 0:
        return np.zeros(len(cells), dtype=bool)
    cx, cy = (cells[:, 0] + cells[:, 2]) / 2, (cells[:, 1] + cells[:, 3]) / 2
    inside = ((cx[:, None] >= gold[None, :, 0]) & (cx[:, None] <= gold[None, :, 2])
              & (cy[:, None] >= gold[None, :, 1]) & (cy[:, None] <= gold[None, :, 3]))
    return inside.any(axis=1)


RULES = ("iou", "pointing")


def rule_hits(rule: str, cells: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """[R] bool under ``rule``: ``iou`` (:func:`region_hits`, the paper's) or ``pointing`` (:func:`centre_hits`)."""
    return region_hits(cells, gold) if rule == "iou" else centre_hits(cells, gold)


def overlaps(boxes: np.ndarray, view: np.ndarray) -> np.ndarray:
    """[n] bool: box i of ``boxes`` [n, 4] shares some area with ``view`` [4] (what the model sees)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ((np.minimum(boxes[:, 2], view[2]) > np.maximum(boxes[:, 0], view[0]))
            & (np.minimum(boxes[:, 3], view[3]) > np.maximum(boxes[:, 1], view[1])))


def query_targets(cells: np.ndarray, gold: np.ndarray, seen: np.ndarray | None = None) -> dict[str, np.ndarray] | None:
    """Which image tokens hit a query, under every rule: rule → [R] bool, from the tokens' ``cells`` [R, 4] and the
    query's ``gold`` boxes [n, 4]; None when no gold box overlaps ``seen`` [4], the part of the image the model sees
    (the query is then skipped as ``outside_view``, never scored as a miss). The one place this is decided: the
    probe, the explorer and Figures 1/5 all ask it."""
    if seen is not None and not overlaps(gold, seen).any():
        return None
    return {rule: rule_hits(rule, cells, gold) for rule in RULES}


# Detectors and annotators round and pad: a box may pass the image edge by this share of the side (≥ 2 px).
BOX_TOLERANCE = 0.02


def outside_image(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """[n] bool: box ``i`` of ``boxes`` [n, 4] reaches outside the ``width`` × ``height`` image by more than
    the tolerance (a box in another image's or normalised coordinates, or a typo)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tol_w, tol_h = max(2.0, BOX_TOLERANCE * width), max(2.0, BOX_TOLERANCE * height)
    xs, ys = boxes[:, [0, 2]], boxes[:, [1, 3]]
    return ((xs < -tol_w) | (xs > width + tol_w)).any(axis=1) | ((ys < -tol_h) | (ys > height + tol_h)).any(axis=1)
