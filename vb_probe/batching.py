"""Captions + regions → padded model inputs, with the positions of the probed query tokens.

Layout of every batch: ``[CLS] sub-words [SEP] [PAD]…`` (T_max columns) then regions ``[R_max]`` columns;
region column r of row b is sequence position ``T_max + r``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from vb_probe.data.features import RegionFeatures, Regions
from vb_probe.tokenization import tokenize_words

T = TypeVar("T")


@dataclass(eq=False)  # identity, not field-wise equality (fields hold arrays)
class Query:
    """One attention row to score: the last sub-word of ``word_index``; ``gold`` [n, 4] the boxes it should
    land on (None: nothing to score, e.g. a row read for display). Which regions hit them is worked out when
    the image's regions are read, batch by batch."""

    group: str
    word_index: int
    gold: np.ndarray | None
    unit: str = ""  # what it counts (phrase id, arc) — for messages and resumable bookkeeping


@dataclass
class ProbeItem:
    """A caption, its image and the queries to score on it. ``regions`` is read from the feature store when
    the item's batch is collated (so a split never sits in memory), unless given here."""

    key: str  # <image_id>_<caption_index>
    words: tuple[str, ...]
    image_id: str
    queries: list[Query]
    regions: Regions | None = None


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
    image_ids: list[str] = field(default_factory=list)  # [B] the image of each row (named in errors)


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
    if all(len(r) == r_max for r in regions):  # detectors often give every image the same count: one copy
        visual = torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in regions]))
    else:
        visual = torch.empty(batch, r_max, regions[0].shape[1], dtype=torch.float32)
        for b, features in enumerate(regions):
            visual[b, :len(features)] = torch.tensor(np.asarray(features, dtype=np.float32))  # may be read-only
            visual[b, len(features):] = 0.0
    visual_mask = torch.zeros(batch, r_max, dtype=torch.long)
    visual_types = torch.zeros(batch, r_max, dtype=torch.long)
    for b, features in enumerate(regions):
        visual_mask[b, :len(features)] = 1
        visual_types[b, :len(features)] = region_types if isinstance(region_types, int) else \
            torch.tensor(region_types[b], dtype=torch.long)
    inputs.update(visual_embeds=visual, visual_attention_mask=visual_mask, visual_token_type_ids=visual_types)
    return inputs


def collate(
    items: list[ProbeItem], tokenizer, visual_token_type: int, max_text_len: int,
    features: RegionFeatures | None = None,
) -> ProbeBatch:
    """Pad a list of items into one batch (text right-padded, regions right-padded), on the CPU. Regions are
    read from ``features`` once per image of the batch; a query's hits are its gold boxes' IoU ≥ 0.5 regions."""
    from vb_probe.metrics.boxes import region_hits

    read: dict[str, Regions] = {}
    hits_of: dict[tuple[int, int], np.ndarray] = {}  # (regions, gold boxes) → hits: a phrase's captions share them
    for item in items:
        if item.regions is None and item.image_id not in read:
            read[item.image_id] = features[item.image_id]
    all_regions = [item.regions if item.regions is not None else read[item.image_id] for item in items]
    tokenized = [tokenize_words(tokenizer, list(item.words), max_length=max_text_len) for item in items]
    t_max = max(len(t.input_ids) for t in tokenized)
    r_max = max(len(r) for r in all_regions)
    inputs = pad_inputs([t.input_ids for t in tokenized], tokenizer.pad_token_id,
                        regions=[r.features for r in all_regions], region_types=visual_token_type)
    b_idx, q_idx, hits, valid, confs, groups, truncated = [], [], [], [], [], [], []
    any_confidence = all(r.confidences is not None for r in all_regions)
    for b, (item, tokens, regions) in enumerate(zip(items, tokenized, all_regions)):
        n_reg = len(regions)
        for query in item.queries:
            position = tokens.word_last_token[query.word_index]
            if position is None:
                truncated.append(query)
                continue
            b_idx.append(b)
            q_idx.append(position)
            hit = np.zeros(r_max, dtype=bool)
            if query.gold is not None:
                key = (id(regions), id(query.gold))
                if key not in hits_of:
                    hits_of[key] = region_hits(regions.boxes, query.gold)
                hit[:n_reg] = hits_of[key]
            hits.append(hit)
            ok = np.zeros(r_max, dtype=bool)
            ok[:n_reg] = True
            valid.append(ok)
            if any_confidence:
                conf = np.zeros(r_max, dtype=np.float32)
                conf[:n_reg] = regions.confidences
                confs.append(conf)
            groups.append(query.group)
    n = len(b_idx)
    return ProbeBatch(
        inputs=inputs,
        text_len=t_max,
        batch_index=torch.tensor(b_idx, dtype=torch.long),
        query_index=torch.tensor(q_idx, dtype=torch.long),
        hits=torch.from_numpy(np.stack(hits)) if n else torch.zeros(0, r_max, dtype=torch.bool),
        region_valid=torch.from_numpy(np.stack(valid)) if n else torch.zeros(0, r_max, dtype=torch.bool),
        confidences=torch.from_numpy(np.stack(confs)) if (n and any_confidence) else None,
        groups=groups,
        truncated=truncated,
        image_ids=[item.image_id for item in items],
    )


def prefetched(jobs: Iterator[Callable[[], T]], depth: int = 2) -> Iterator[T]:
    """Run ``jobs`` (thunks, e.g. reading and collating one batch each) in a background thread, at most ``depth``
    ahead of the consumer, and yield their results in order. An exception in a job is raised here, at its turn;
    a consumer that stops early (an error, Ctrl-C) stops the thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        for job in jobs:
            if stop.is_set():
                return
            try:
                outcome = (True, job())
            except BaseException as exc:  # handed to the consumer, which raises it in order
                outcome = (False, exc)
            while not stop.is_set():
                try:
                    results.put(outcome, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not outcome[0]:
                return
        results.put((True, _DONE))

    worker = threading.Thread(target=work, name="vb-probe-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is _DONE:
                return
            yield value
    finally:
        stop.set()
        worker.join(timeout=5)


_DONE = object()


def to_device(batch: ProbeBatch, device: torch.device | str, pin: bool = False) -> ProbeBatch:
    """The batch's tensors on ``device`` (through pinned memory, and without waiting, when ``pin``)."""
    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

    return ProbeBatch({k: move(v) for k, v in batch.inputs.items()}, batch.text_len, move(batch.batch_index),
                      move(batch.query_index), batch.hits, batch.region_valid, batch.confidences, batch.groups,
                      batch.truncated, batch.image_ids)
