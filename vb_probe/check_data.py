"""``vb-probe check-data``: is a data folder laid out right, before hours of probing? Counts per split (images,
captions, phrases, phrases with gold boxes, skips by reason, images with features) beside the numbers the real
Flickr30K Entities release has (for RefCOCO and Visual Genome folders the counts alone), and a list of what is
missing. Reads only; the same queries the probe makes
(:mod:`vb_probe.queries`), so its counts are the probe's."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vb_probe.data.annotations import GroundingSet
from vb_probe.data.features import RegionFeatures
from vb_probe.errors import DataError
from vb_probe.queries import ENTITY, Collection, entity_queries

# Flickr30K Entities (Plummer et al.): 31,783 images, five captions each (158,915), split 29,783 / 1,000 / 1,000
FLICKR30K_IMAGES = {"train": 29_783, "val": 1_000, "test": 1_000}
CAPTIONS_PER_IMAGE = 5


@dataclass
class SplitReport:
    """What one split holds, counted the way the probe counts it."""

    split: str
    images: int = 0
    captions: int = 0
    phrases: int = 0
    with_boxes: int = 0  # phrases the entity probe scores (gold boxes, features present)
    skipped: Counter = field(default_factory=Counter)
    with_features: int = 0
    missing: list[str] = field(default_factory=list)  # one line per problem (first of each kind kept)

    def problems(self) -> int:
        return len(self.missing)


def check_split(dataset: GroundingSet, split: str, features: RegionFeatures | None, progress: bool = False,
                images=None) -> SplitReport:
    """Count ``split`` (reading every caption and annotation file once); problems are collected, not raised.
    ``features`` (region features) or ``images`` (an :class:`~vb_probe.data.images.ImageFolder`): each image's
    presence, and for images their size against the annotation's (upright, as the probe reads them)."""
    from tqdm.auto import tqdm

    from vb_probe.data.images import check_sizes

    report = SplitReport(split)
    try:
        image_ids = dataset.split(split)
    except DataError as exc:
        report.missing.append(str(exc))
        return report
    report.images = len(image_ids)
    seen = Collection()
    for image_id in tqdm(image_ids, desc=f"checking {split}", unit="image", disable=not progress, leave=False):
        store = images if images is not None else features
        present = store is None or image_id in store
        report.with_features += present
        if not present:
            report.missing.append(f"{store.source}: no {'image' if images is not None else 'features'} for image "
                                  f"{image_id}")
        try:
            if images is not None and present:  # the picture the model will read, of its annotation's size
                annotation = dataset.annotation(image_id)
                check_sizes(images, {image_id: (annotation.width, annotation.height)})
            for caption in dataset.captions(image_id):
                report.captions += 1
                entity_queries(dataset, caption, present, seen, skip_unannotated=True)
        except DataError as exc:  # a missing or broken file: said, and the count goes on
            report.missing.append(str(exc))
    report.phrases = seen.n_units["phrases"]
    report.skipped = seen.skipped.get(ENTITY, Counter())
    report.with_boxes = report.phrases - sum(report.skipped.values())
    return report


def format_report(reports: list[SplitReport], features: RegionFeatures | None, shown: int = 5,
                  dataset: str = "flickr30k") -> str:
    """The reports as a table (beside the Flickr30K Entities release's numbers for a Flickr30K folder), then what
    is missing."""
    is_flickr = dataset == "flickr30k"
    held = "with images  " if features is not None and features.kind == "pixels" else "with features"
    lines = ["split   images (Flickr30K Entities)   captions (5 an image)   phrases   with boxes   " + held
             if is_flickr else "split   images                        captions                phrases   with boxes   " + held,
             "------  ----------------------------  ----------------------  --------  -----------  -------------"]
    for r in reports:
        expected = FLICKR30K_IMAGES.get(r.split) if is_flickr else None
        images = f"{r.images:,}" + (f" ({expected:,})" if expected else "")
        captions = f"{r.captions:,}" + (f" ({CAPTIONS_PER_IMAGE * r.images:,})" if r.images and is_flickr else "")
        feats = "not checked" if features is None else f"{r.with_features:,} of {r.images:,}"
        lines.append(f"{r.split:6s}  {images:28s}  {captions:22s}  {r.phrases:8,}  {r.with_boxes:11,}  {feats}")
    for r in reports:
        if r.skipped:
            lines.append(f"{r.split}: phrases without gold boxes, by reason: "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(r.skipped.items())))
    if features is not None and features.kind == "pixels":
        lines.append(f"images: {features.source} (each of its annotation's size)")
    elif features is not None:
        lines.append(f"features: {features.source}, {features.dim}-d")
    problems = [line for r in reports for line in r.missing]
    if problems:
        lines.append(f"missing or broken ({len(problems):,}):")
        lines += [f"  {line}" for line in problems[:shown]]
        if len(problems) > shown:
            lines.append(f"  … and {len(problems) - shown:,} more")
    else:
        lines.append("nothing is missing")
    return "\n".join(lines)


def check_data(annotations: str | Path, features: str | Path | None = None, splits: tuple[str, ...] | None = None,
               progress: bool = False, kind: str | None = None, split_by: str | None = None,
               images: str | Path | None = None) -> tuple[list[SplitReport], RegionFeatures | None]:
    """Reports for ``splits`` (default: the set's own) of the annotation folder ``annotations`` (Flickr30K Entities,
    RefCOCO or Visual Genome; ``kind`` None: told by its files) and of ``features`` or ``images`` when given."""
    from vb_probe.data.features import open_features
    from vb_probe.data.grounding_sets import open_grounding_set
    from vb_probe.data.images import ImageFolder

    dataset = open_grounding_set(annotations, kind, split_by=split_by)
    store = open_features(features) if features is not None else None
    folder = ImageFolder(images) if images is not None else None
    if folder is not None:
        folder.add_names(dataset.image_files())
    splits = splits or dataset.splits
    return [check_split(dataset, split, store, progress, folder) for split in splits], store or folder
