"""Opening an annotation set whatever its format: :func:`open_grounding_set` asks every registered reader
(:class:`~vb_probe.data.annotations.GroundingSet`: Flickr30K Entities, the RefCOCO family and Visual Genome built
in, any a user's code registers) whether a folder holds its files, as :func:`~vb_probe.families.family_of` asks
the families about a checkpoint. Queries, counts, tables, figures and the explorer stay dataset-free.

The built-in readers are imported here, so that they register; they import only the records' leaf module
(:mod:`vb_probe.data.annotations`), never this one: no circle.
"""

from __future__ import annotations

from pathlib import Path

from vb_probe.data import flickr30k, refcoco, visual_genome  # noqa: F401 (each registers its reader)
from vb_probe.data.annotations import GROUNDING_SETS, GroundingSet
from vb_probe.errors import DataError


def formats() -> tuple[str, ...]:
    """The names of the registered formats (the built-in three first)."""
    return tuple(GROUNDING_SETS)


def detect_format(root: Path) -> str | None:
    """The name of the format whose files ``root`` holds (the first reader that recognises it), or None."""
    return next((name for name, reader in GROUNDING_SETS.items() if reader.detect(Path(root))), None)


def open_grounding_set(source, kind: str | None = None, *, split_by: str | None = None,
                       relations: bool = False) -> GroundingSet:
    """A reader for ``source``: a reader object as it is, or a folder of the format ``kind`` (told by its files when
    None). ``split_by`` (RefCOCO's refs file) and ``relations`` (Visual Genome's relationships) go to the readers that
    take them."""
    if isinstance(source, GroundingSet):
        return source
    if not isinstance(source, (str, Path)):
        raise DataError(f"{type(source).__name__}: not an annotation set; pass a folder or a reader "
                        "(vb_probe.Flickr30kEntities, RefCoco, VisualGenome)")
    root = Path(source)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass a Flickr30K Entities root, a RefCOCO folder (refs(unc).p and "
                        "instances.json) or a Visual Genome folder (region_descriptions.json, …)")
    kind = kind or detect_format(root)
    if kind is None:
        raise DataError(f"{root}: neither Flickr30K Entities (Sentences/, Annotations/), RefCOCO (refs(unc).p, "
                        "instances.json) nor Visual Genome (region_descriptions.json); pass one of those folders")
    if kind not in GROUNDING_SETS:
        raise DataError(f"--dataset {kind}: unknown format; use one of {', '.join(formats())}")
    return GROUNDING_SETS[kind].open(root, split_by=split_by, relations=relations)


__all__ = ["detect_format", "formats", "open_grounding_set"]
