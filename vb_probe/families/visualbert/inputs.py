"""VisualBERT's inputs: captions and regions → padded tensors, text first, then regions.

Layout of every batch: ``[CLS] sub-words [SEP] [PAD]…`` (T_max columns) then regions ``[R_max]`` columns;
region column r of row b is sequence position ``T_max + r``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vb_probe.batching import ProbeBatch, layout, pad_regions, pad_text, read_regions
from vb_probe.data.features import RegionFeatures
from vb_probe.queries import ProbeItem
from vb_probe.tokenization import tokenize_captions


def pad_inputs(
    token_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    token_types: Sequence[Sequence[int]] | None = None,
    regions: Sequence[np.ndarray] | None = None,
    region_types: Sequence[Sequence[int]] | int = 1,
) -> dict[str, torch.Tensor]:
    """Right-pad rows of text and of regions into VisualBERT's inputs (text first, then regions).

    ``token_ids[b]`` the ids of row b (``token_types[b]`` their segments, default 0); ``regions[b]`` [R_b, D]
    features (None: text only); ``region_types``: one token type for every region, or one list per row.
    Returns ``input_ids``/``attention_mask``/``token_type_ids`` [B, T_max] and ``visual_embeds`` [B, R_max, D],
    ``visual_attention_mask``/``visual_token_type_ids`` [B, R_max] (padding: pad_id, 0, 0).
    """
    batch = len(token_ids)
    inputs = pad_text(token_ids, pad_id, token_types)
    if regions is None:
        return inputs
    r_max = max(len(r) for r in regions)
    visual = pad_regions(regions)
    visual_mask = torch.zeros(batch, r_max, dtype=torch.long)
    visual_types = torch.zeros(batch, r_max, dtype=torch.long)
    for b, features in enumerate(regions):
        visual_mask[b, :len(features)] = 1
        visual_types[b, :len(features)] = region_types if isinstance(region_types, int) else \
            torch.tensor(region_types[b], dtype=torch.long)
    inputs.update(visual_embeds=visual, visual_attention_mask=visual_mask, visual_token_type_ids=visual_types)
    return inputs


def collate(items: list[ProbeItem], tokenizer, visual_token_type: int, max_text_len: int,
            features: RegionFeatures | None = None) -> ProbeBatch:
    """Pad a list of items into one batch (text right-padded, regions right-padded), on the CPU. Regions are
    read from ``features`` once per image of the batch; a query's hits are its gold boxes' IoU ≥ 0.5 regions."""
    all_regions = read_regions(items, features)
    tokenized = tokenize_captions(tokenizer, [list(item.words) for item in items], max_length=max_text_len)
    inputs = pad_inputs([t.input_ids for t in tokenized], tokenizer.pad_token_id,
                        regions=[r.features for r in all_regions], region_types=visual_token_type)
    batch = layout(items, [t.word_last_token for t in tokenized], [r.boxes for r in all_regions],
                   [r.confidences for r in all_regions], inputs, text_len=inputs["input_ids"].shape[1])
    batch.region_features = [r.features for r in all_regions]
    return batch
