"""One caption's attention rows on one image, outside a probe pass: what the explorer, ``visualize`` and
``region_attention`` read. The same family calls as the probe (collate, rows), on one item whose queries are every
word of the caption."""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.batching import check_finite_rows, to_device
from vb_probe.data.features import Regions
from vb_probe.families import family_of
from vb_probe.probe_config import MaskMode
from vb_probe.queries import ProbeItem, Query


class SingleImage:
    """One image's regions as a feature store (what a family prepares for one caption's rows)."""

    def __init__(self, regions: Regions):
        self.regions = regions
        self.source = f"image {regions.image_id}"
        self.kind = regions.kind  # a detector's regions, or a pixel family's cells

    def add_names(self, names: dict[str, str]) -> None:
        """One image by id: nothing to rename."""

    def __contains__(self, image_id: str) -> bool:
        return image_id == self.regions.image_id

    def __getitem__(self, image_id: str) -> Regions:
        return self.regions

    def ids(self) -> list[str]:
        return [self.regions.image_id]

    @property
    def dim(self) -> int:
        return int(self.regions.features.shape[1])


class OneImage:
    """One picture as an image folder of one image (what a pixel family reads one caption's image through)."""

    kind = "pixels"
    source = "the image"

    def __init__(self, image):
        self.picture = image

    def image(self, image_id: str):
        return self.picture.convert("RGB")

    def __contains__(self, image_id: str) -> bool:
        return True

    def add_names(self, names: dict[str, str]) -> None:
        """One image: nothing to rename."""


@torch.no_grad()
def word_region_attention(
    model, tokenizer, words: tuple[str, ...], regions: Regions, facts: dict | None = None, max_text_len: int = 128,
    mask: MaskMode = "posthoc",
) -> np.ndarray:
    """For one caption: each word's last sub-word's attention on the image's tokens (regions), in every head of
    the model's first site. ``facts``: the family's (default: prepared for these regions).

    Returns [layer, head, n_words, R] float32 (NaN rows for words cut by truncation: a caption longer than the
    model takes is cut, never an error).
    """
    family = family_of(model)
    facts = facts if facts is not None else family.prepare(model, SingleImage(regions), {})
    site = family.sites(model)[0]
    item = ProbeItem("view", tuple(words), regions.image_id, [Query("view", w, None) for w in range(len(words))],
                     regions=regions)
    max_text_len = min(max_text_len, family.text_limit(model))
    batch = to_device(family.collate(model, [item], tokenizer, facts, max_text_len), next(model.parameters()).device)
    out = np.full((site.layers, site.heads, len(words), len(regions)), np.nan, dtype=np.float32)
    if len(batch.groups):
        rows = family.rows(model, batch, site, mask)  # [layer, n, head, R]
        check_finite_rows(rows, batch, "the features")
        cut = {id(q) for q in batch.truncated}
        kept = [q.word_index for q in item.queries if id(q) not in cut]
        out[:, :, kept] = rows.permute(0, 2, 1, 3).numpy()
    return out


def word_region_choices(
    model, tokenizer, words: tuple[str, ...], regions: Regions, facts: dict | None = None, max_text_len: int = 128,
    mask: MaskMode = "posthoc",
) -> np.ndarray:
    """For one caption: the region each word's last sub-word attends to most, in every head.

    Returns [layer, head, n_words] region indices (-1 for a word cut by truncation); ties: the lowest index.
    """
    rows = word_region_attention(model, tokenizer, words, regions, facts, max_text_len, mask)
    cut = np.isnan(rows).any(-1)
    return np.where(cut, -1, np.nan_to_num(rows, nan=-np.inf).argmax(-1)).astype(np.int64)
