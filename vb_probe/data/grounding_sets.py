"""What the probes read annotations through, whatever the dataset: Flickr30K Entities, the RefCOCO family or
Visual Genome. Each reader answers the same questions as :class:`~vb_probe.data.flickr30k.Flickr30kEntities`
(``split(name)``, ``captions(image_id)``, ``annotation(image_id)``, ``check_entities``, ``root``, ``name``), so
queries, counts, tables, figures and the explorer stay dataset-free. :func:`open_grounding_set` tells the formats
apart by their files.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vb_probe.errors import DataError

FORMATS = ("flickr30k", "refcoco", "visual_genome")


def detect_format(root: Path) -> str | None:
    """``flickr30k`` (Sentences/ and Annotations/), ``refcoco`` (a refs(<split_by>).p), ``visual_genome``
    (region_descriptions.json), or None."""
    if (root / "Sentences").is_dir() and (root / "Annotations").is_dir():
        return "flickr30k"
    if any(root.glob("refs(*).p")):
        return "refcoco"
    if (root / "region_descriptions.json").is_file() or (root / "relationships.json").is_file():
        return "visual_genome"
    return None


def open_grounding_set(source, kind: str | None = None, **options):
    """A reader for ``source``: a reader object as it is, or a folder of the given ``kind`` (detected from its
    files when None). ``options`` go to the reader (``split_by`` for RefCOCO, ``relations`` for Visual Genome)."""
    from vb_probe.data.flickr30k import Flickr30kEntities

    if not isinstance(source, (str, Path)):
        return source
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a Flickr30K Entities root, a RefCOCO folder (refs(unc).p and "
                        "instances.json) or a Visual Genome folder (region_descriptions.json, …)")
    kind = kind or detect_format(root)
    if kind is None:
        raise DataError(f"{root}: neither Flickr30K Entities (Sentences/, Annotations/), RefCOCO (refs(unc).p, "
                        "instances.json) nor Visual Genome (region_descriptions.json); pass one of those folders")
    if kind == "refcoco":
        from vb_probe.data.refcoco import RefCoco

        return RefCoco(root, **{k: v for k, v in options.items() if k == "split_by"})
    if kind == "visual_genome":
        from vb_probe.data.visual_genome import VisualGenome

        return VisualGenome(root, **{k: v for k, v in options.items() if k == "relations"})
    if kind != "flickr30k":
        raise DataError(f"--dataset {kind}: unknown format; use one of {', '.join(FORMATS)}")
    return Flickr30kEntities(root)


def xywh_box(value, where: str, width: float | None = None, height: float | None = None) -> np.ndarray:
    """A COCO / Visual Genome box ``[x, y, w, h]`` (pixels) → [1, 4] x1, y1, x2, y2 float32; one line naming
    ``where`` for anything that is not four finite numbers with a positive width and height inside the image."""
    from vb_probe.metrics.boxes import outside_image

    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise DataError(f"{where}: box {value!r:.80} is not four finite numbers [x, y, w, h]; fix the record")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box [x, y, w, h] = {value!r:.80} has a width or height of 0 or less; fix or "
                        "drop the record")
    box = np.array([[x, y, x + w, y + h]], dtype=np.float32)
    if width is not None and height is not None and outside_image(box, width, height).any():
        raise DataError(f"{where}: box {value!r:.80} reaches outside the {width:g} × {height:g} image; fix the "
                        "record or the image's size")
    return box


MAX_SIDE = 1 << 20  # pixels: no camera or scanner makes a side longer; a larger size is a broken record


def image_size(entry: dict, where: str) -> tuple[int, int]:
    """(width, height) of an image record, positive integers of at most :data:`MAX_SIDE`, else one line naming it."""
    try:
        width, height = entry["width"], entry["height"]
        if isinstance(width, bool) or isinstance(height, bool) or not all(
                (isinstance(v, (int, float)) and -MAX_SIDE <= v <= MAX_SIDE) or (isinstance(v, str) and len(v) <= 8)
                for v in (width, height)):
            raise TypeError
        width, height = int(width), int(height)
        if max(width, height) > MAX_SIDE:
            raise ValueError
    except (KeyError, TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: needs integer width and height of at most {MAX_SIDE:,} pixels; fix the record") \
            from None
    if width <= 0 or height <= 0:
        raise DataError(f"{where}: width × height {width} × {height}: must be positive; fix the record")
    return width, height


def head_word(heads: tuple[int, ...], first: int, last: int) -> int:
    """The head of the words ``first``..``last`` in a dependency parse (``heads[i]`` 1-based, 0 the root): the word
    of the span whose head lies outside it (the last such, when there are several)."""
    outside = [i for i in range(first, last + 1) if not (first <= heads[i] - 1 <= last)]
    return outside[-1] if outside else last
