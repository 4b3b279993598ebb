"""Captions + regions → padded model inputs, with the positions of the probed query tokens.

Layout of every batch: ``[CLS] sub-words [SEP] [PAD]…`` (T_max columns) then regions ``[R_max]`` columns;
region column r of row b is sequence position ``T_max + r``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vb_probe.data.features import Regions
from vb_probe.tokenization import tokenize_words


@dataclass(eq=False)  # identity, not field-wise equality (fields hold arrays)
class Query:
    """One attention row to score: the last sub-word of ``word_index``; ``hits`` [R] bool over regions."""

    group: str
    word_index: int
    hits: np.ndarray
    unit: str = ""  # what it counts (phrase id, arc) — for messages and resumable bookkeeping


@dataclass
class ProbeItem:
    """A caption with its image's regions and the queries to score on it."""

    key: str  # <image_id>_<caption_index>
    words: tuple[str, ...]
    regions: Regions
    queries: list[Query]


@dataclass
class ProbeBatch:
    """Model inputs plus, per scored query: its row (batch index, token position), target and region info."""

    inputs: dict[str, torch.Tensor]
    text_len: int  # T_max: first region column
    batch_index: torch.Tensor  # [n]
    query_index: torch.Tensor  # [n]
    hits: torch.Tensor  # [n, R_max] bool
    region_valid: torch.Tensor  # [n, R_max] bool
    confidences: torch.Tensor | None  # [n, R_max]
    groups: list[str]
    truncated: list[Query]  # queries whose word fell past the text limit (counted as skipped)


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
    batch, t_max = len(token_ids), max(len(ids) for ids in token_ids)
    input_ids = torch.full((batch, t_max), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, t_max, dtype=torch.long)
    types = torch.zeros(batch, t_max, dtype=torch.long)
    for b, ids in enumerate(token_ids):
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, :len(ids)] = 1
        if token_types is not None:
            types[b, :len(ids)] = torch.tensor(token_types[b], dtype=torch.long)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": types}
    if regions is None:
        return inputs
    r_max = max(len(r) for r in regions)
    visual = torch.zeros(batch, r_max, regions[0].shape[1], dtype=torch.float32)
    visual_mask = torch.zeros(batch, r_max, dtype=torch.long)
    visual_types = torch.zeros(batch, r_max, dtype=torch.long)
    for b, features in enumerate(regions):
        visual[b, :len(features)] = torch.from_numpy(np.asarray(features, dtype=np.float32))
        visual_mask[b, :len(features)] = 1
        visual_types[b, :len(features)] = region_types if isinstance(region_types, int) else \
            torch.tensor(region_types[b], dtype=torch.long)
    inputs.update(visual_embeds=visual, visual_attention_mask=visual_mask, visual_token_type_ids=visual_types)
    return inputs


def collate(
    items: list[ProbeItem], tokenizer, visual_token_type: int, max_text_len: int, device: torch.device | str = "cpu"
) -> ProbeBatch:
    """Pad a list of items into one batch (text right-padded, regions right-padded)."""
    tokenized = [tokenize_words(tokenizer, list(item.words), max_length=max_text_len) for item in items]
    t_max = max(len(t.input_ids) for t in tokenized)
    r_max = max(len(item.regions) for item in items)
    inputs = pad_inputs([t.input_ids for t in tokenized], tokenizer.pad_token_id,
                        regions=[item.regions.features for item in items], region_types=visual_token_type)
    b_idx, q_idx, hits, valid, confs, groups, truncated = [], [], [], [], [], [], []
    any_confidence = all(item.regions.confidences is not None for item in items)
    for b, (item, tokens) in enumerate(zip(items, tokenized)):
        n_reg = len(item.regions)
        for query in item.queries:
            position = tokens.word_last_token[query.word_index]
            if position is None:
                truncated.append(query)
                continue
            b_idx.append(b)
            q_idx.append(position)
            hit = np.zeros(r_max, dtype=bool)
            hit[:n_reg] = query.hits
            hits.append(hit)
            ok = np.zeros(r_max, dtype=bool)
            ok[:n_reg] = True
            valid.append(ok)
            if any_confidence:
                conf = np.zeros(r_max, dtype=np.float32)
                conf[:n_reg] = item.regions.confidences
                confs.append(conf)
            groups.append(query.group)
    n = len(b_idx)
    return ProbeBatch(
        inputs={k: v.to(device) for k, v in inputs.items()},
        text_len=t_max,
        batch_index=torch.tensor(b_idx, dtype=torch.long, device=device),
        query_index=torch.tensor(q_idx, dtype=torch.long, device=device),
        hits=torch.from_numpy(np.stack(hits)) if n else torch.zeros(0, r_max, dtype=torch.bool),
        region_valid=torch.from_numpy(np.stack(valid)) if n else torch.zeros(0, r_max, dtype=torch.bool),
        confidences=torch.from_numpy(np.stack(confs)) if (n and any_confidence) else None,
        groups=groups,
        truncated=truncated,
    )
