"""Probe items → a batch: the model's inputs (a family builds them; opaque here) plus the layout the engine scores
with: for each query its row (batch index, sequence position), and for each image token whether it is real,
whether it hits the query's gold boxes, and its detector confidence. Reading ahead in a thread, and moving to a
device, are here too.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from vb_probe.data.features import Regions
from vb_probe.errors import DataError
from vb_probe.queries import ProbeItem, Query

T = TypeVar("T")


@dataclass
class ProbeBatch:
    """Model inputs plus, per scored query: its row (batch index, token position), targets and image-token info.

    ``inputs`` are the family's (the engine never reads them); ``extras`` what the family's ``rows`` needs
    besides (e.g. where the image tokens start). ``targets`` holds each rule's hits (``iou``, ``pointing``); the
    engine scores the grid by the family's own. ``permutation`` [n, R] re-deals each image's token cells among its tokens
    (the same for every query of an image, seeded by its id): the permuted-geometry control scores against
    ``targets[rule].gather(-1, permutation)``."""

    inputs: dict[str, torch.Tensor]
    batch_index: torch.Tensor  # [n]
    query_index: torch.Tensor  # [n]
    targets: dict[str, torch.Tensor]  # rule → [n, R_max] bool: which image tokens hit the query's gold boxes
    region_valid: torch.Tensor  # [n, R_max] bool
    confidences: torch.Tensor | None  # [n, R_max]
    groups: list[str]
    truncated: list[Query]  # queries whose word fell past the text limit (counted as skipped)
    image_ids: list[str] = field(default_factory=list)  # [B] the image of each row (named in errors)
    region_features: list[np.ndarray] = field(default_factory=list)  # [B] each row's region features [R_b, D]
    # (region families: read only when attention is not finite, to say whether the features are to blame)
    extras: dict = field(default_factory=dict)
    permutation: torch.Tensor | None = None  # [n, R_max] long
    outside_view: list[Query] = field(default_factory=list)  # queries whose gold the model cannot see (skipped)
    scored: list[Query] = field(default_factory=list)  # [n] the query of each scored row
    keys: list[str] = field(default_factory=list)  # [B] each row's caption key
    item_words: list[tuple[str, ...]] = field(default_factory=list)  # [B] each row's caption words
    item_queries: list[list[Query]] = field(default_factory=list)  # [B] each row's queries, scored or not
    cells: list[np.ndarray] = field(default_factory=list)  # [B] each row's image tokens' boxes [R_b, 4]


def pad_text(token_ids: Sequence[Sequence[int]], pad_id: int, token_types: Sequence[Sequence[int]] | None = None
             ) -> dict[str, torch.Tensor]:
    """Right-padded BERT-style text inputs: ``input_ids``, ``attention_mask`` and ``token_type_ids`` [B, T_max]
    (``token_types[b]`` the segments of row b, default 0; padding: pad_id, 0, 0)."""
    batch, t_max = len(token_ids), max(len(ids) for ids in token_ids)
    input_ids = torch.full((batch, t_max), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(batch, t_max, dtype=torch.long)
    types = torch.zeros(batch, t_max, dtype=torch.long)
    for b, ids in enumerate(token_ids):
        input_ids[b, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, :len(ids)] = 1
        if token_types is not None:
            types[b, :len(ids)] = torch.tensor(token_types[b], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": types}


def pad_regions(rows: Sequence[np.ndarray]) -> torch.Tensor:
    """Per-image arrays [R_b, D] → [B, R_max, D] float32, zero-padded (one stacked copy when every R_b is equal,
    as detectors often give)."""
    r_max = max(len(r) for r in rows)
    if all(len(r) == r_max for r in rows):
        return torch.from_numpy(np.stack([np.asarray(r, dtype=np.float32) for r in rows]))
    padded = torch.zeros(len(rows), r_max, np.asarray(rows[0]).shape[1], dtype=torch.float32)
    for b, row in enumerate(rows):
        padded[b, :len(row)] = torch.tensor(np.asarray(row, dtype=np.float32))  # may be read-only
    return padded


def read_regions(items: list[ProbeItem], features) -> list[Regions]:
    """Each item's regions: given on the item, else read from ``features`` once per image of the batch."""
    read: dict[str, Regions] = {}
    for item in items:
        if item.regions is None and item.image_id not in read:
            read[item.image_id] = features[item.image_id]
    return [item.regions if item.regions is not None else read[item.image_id] for item in items]


def layout(items: list[ProbeItem], word_positions: Sequence[Sequence[int | None]], cells: Sequence[np.ndarray],
           confidences: Sequence[np.ndarray | None], inputs: dict[str, torch.Tensor], *,
           views: Sequence[np.ndarray | None] | None = None, cell_views: Sequence[np.ndarray | None] | None = None,
           **extras) -> ProbeBatch:
    """The engine's view of a batch. ``word_positions[b][w]``: the sequence position of word w's last sub-word
    in row b (None: cut by truncation); ``cells[b]`` [R_b, 4] each image token's box in the original image's
    pixels; ``confidences[b]`` [R_b] or None; ``views[b]`` [4] the part of the original image the model sees
    (None: all of it), a query none of whose gold boxes overlaps it is skipped (``outside_view``);
    ``cell_views[b]`` [R_b] which of the model's views of the image each cell is in (tiled models; None: one view),
    so the permuted-geometry control re-deals cells within a view. Hits are
    computed once per image and gold set under both rules (a phrase's captions share them); which one makes the
    grid is the family's rule, the engine's choice."""
    from vb_probe.metrics.boxes import RULES, query_targets

    r_max = max(len(c) for c in cells)
    any_confidence = all(c is not None for c in confidences)
    hits_of: dict[tuple[int, int], dict[str, np.ndarray] | None] = {}
    b_idx, q_idx, hit_keys, groups, truncated, outside, scored = [], [], [], [], [], [], []
    for b, (item, positions, boxes) in enumerate(zip(items, word_positions, cells)):  # which queries are scored
        view = views[b] if views is not None else None
        for query in item.queries:
            position = positions[query.word_index]
            if position is None:
                truncated.append(query)
                continue
            key = (id(boxes), id(query.gold))
            if query.gold is not None and key not in hits_of:
                hits_of[key] = query_targets(boxes, query.gold, view)
            if query.gold is not None and hits_of[key] is None:
                outside.append(query)
                continue
            b_idx.append(b)
            q_idx.append(position)
            hit_keys.append(key if query.gold is not None else None)
            groups.append(query.group)
            scored.append(query)
    # then each row of the batch's arrays filled in place (one allocation an array, not one a query)
    n = len(b_idx)
    targets = {name: np.zeros((n, r_max), dtype=bool) for name in RULES}
    valid = np.zeros((n, r_max), dtype=bool)
    perms = np.empty((n, r_max), dtype=np.int64)
    confs = np.zeros((n, r_max), dtype=np.float32) if any_confidence else None
    perm_of: dict[tuple[str, int], np.ndarray] = {}  # one shuffle an image (its captions share it), not a row
    for i, (b, key) in enumerate(zip(b_idx, hit_keys)):
        n_tokens = len(cells[b])
        if key is not None:
            for name in RULES:
                targets[name][i, :n_tokens] = hits_of[key][name]
        valid[i, :n_tokens] = True
        image = (items[b].image_id, n_tokens)
        if image not in perm_of:
            perm_of[image] = np.arange(r_max)
            perm_of[image][:n_tokens] = image_permutation(items[b].image_id, n_tokens,
                                                          cell_views[b] if cell_views is not None else None)
        perms[i] = perm_of[image]
        if confs is not None:
            confs[i, :n_tokens] = confidences[b]

    return ProbeBatch(
        inputs=inputs,
        batch_index=torch.tensor(b_idx, dtype=torch.long),
        query_index=torch.tensor(q_idx, dtype=torch.long),
        targets={name: torch.from_numpy(rows) for name, rows in targets.items()},
        region_valid=torch.from_numpy(valid),
        confidences=torch.from_numpy(confs) if (n and confs is not None) else None,
        groups=groups,
        truncated=truncated,
        image_ids=[item.image_id for item in items],
        extras=extras,
        permutation=torch.from_numpy(perms),
        outside_view=outside,
        scored=scored,
        keys=[item.key for item in items],
        item_words=[item.words for item in items],
        item_queries=[item.queries for item in items],
        cells=list(cells),
    )


def check_finite_rows(region_rows: torch.Tensor, batch, source: str) -> None:
    """Non-finite attention is an error naming the image, never a pick (``argmax`` over NaN would still "choose"
    a region and every number downstream would look plausible). ``region_rows`` [layer, n, head, R]."""
    finite = torch.isfinite(region_rows)
    if bool(finite.all()):
        return
    bad_layer, query = (int(i) for i in (~finite).nonzero()[0][:2])
    row = int(batch.batch_index[query])
    image_id = batch.image_ids[row] if batch.image_ids else "?"
    largest = float(np.abs(batch.region_features[row]).max()) if batch.region_features else 0.0
    cause = (f"its region features reach {largest:.3g}, beyond what the model's arithmetic holds; rescale or "
             "re-extract them" if largest > 1e4 or not math.isfinite(largest) else
             "the model's weights are not finite (a damaged or diverged checkpoint); use another checkpoint")
    raise DataError(f"{source}: image {image_id}: attention is not finite (NaN or infinite) from layer {bad_layer} "
                    f"on; {cause}")


def image_permutation(image_id: str, n_tokens: int, view_of: np.ndarray | None = None) -> np.ndarray:
    """The permuted-geometry control's shuffle of one image's ``n_tokens`` cells: seeded by the image's id alone,
    so it does not depend on batching, order or resuming; with ``view_of`` [n_tokens] (each cell's view of a tiled
    model) each view's cells are re-dealt among themselves, a tile's map staying on that tile."""
    import hashlib

    seed = int.from_bytes(hashlib.sha256(f"permuted-geometry:{image_id}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    if view_of is None or not len(view_of) or view_of.min() == view_of.max():
        return rng.permutation(n_tokens)
    order = np.arange(n_tokens)
    for view in np.unique(view_of):
        cells = np.flatnonzero(view_of == view)
        order[cells] = cells[rng.permutation(len(cells))]
    return order


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

    from dataclasses import replace

    return replace(batch, inputs={k: move(v) for k, v in batch.inputs.items()}, batch_index=move(batch.batch_index),
                   query_index=move(batch.query_index))
