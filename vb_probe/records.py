"""Per-query records of a probe pass, for auditing a run (``--per-query``): one row per query with its caption, word,
token position, whether it was scored or why it was skipped, and every head's pick and hit; and, for the heads
asked for (``--save-maps``), each query's whole attention map with every image token's cell in the image's pixels.

A :class:`QueryRecords` is a :class:`~vb_probe.families.base.Tally` the engine keeps beside the counts, so a resumed
run and a run sharded under torchrun record exactly what one process records. The records become a pandas table
(:func:`vb_probe.results.records.records_frame`; ``queries.csv``) and the maps one ``.npz`` (:func:`maps_arrays`;
``maps.npz``, read back with :func:`vb_probe.results.records.read_maps`). The cost: a pick and a hit per head and
query ([n, layer × head] small integers), and the map's row for each asked head.
"""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.families.base import Tally

SCORED = "scored"


class QueryRecords(Tally):
    """Every query of a pass: meta data, each head's pick (the argmax image token) and hit, in batch order; and the
    maps of ``map_heads`` (layer, head) pairs with their cells."""

    key = "queries"

    def __init__(self, map_heads: tuple[tuple[int, int], ...] = ()):
        self.map_heads = tuple(tuple(int(v) for v in pair) for pair in map_heads)
        self.meta: list[list] = []  # [group, unit, image_id, caption, word_index, word, position, status]
        self.picks: list[np.ndarray] = []  # [layer · head] int32, for scored queries
        self.hits: list[np.ndarray] = []  # [layer · head] bool
        self.maps: list[tuple[int, int, int, np.ndarray, np.ndarray]] = []  # (row, layer, head, attention, cells)

    def empty(self) -> QueryRecords:
        return QueryRecords(self.map_heads)

    def add(self, batch, rows: torch.Tensor, mass: torch.Tensor, choice: torch.Tensor, hits: torch.Tensor) -> None:
        """One batch: each scored query (``choice`` [layer, n, head] its picks, ``hits`` [n, R] which tokens hit), and
        the queries the batch skipped (cut by truncation, outside the view)."""
        layers, n, heads = choice.shape
        picked = choice.permute(1, 0, 2).reshape(n, layers * heads).cpu()  # [n, layer · head]
        correct = hits.cpu().gather(-1, picked)  # [n, layer · head]
        for number, query in enumerate(batch.scored):
            row = int(batch.batch_index[number])
            self.meta.append(_meta(query, batch, row, int(batch.query_index[number]), SCORED))
            self.picks.append(picked[number].numpy().astype(np.int32))
            self.hits.append(correct[number].numpy().astype(bool))
            for layer, head in self.map_heads:
                valid = int(batch.region_valid[number].sum())
                self.maps.append((len(self.meta) - 1, layer, head, rows[layer, number, head, :valid].cpu().numpy(),
                                  np.asarray(batch.cells[row][:valid], np.float32)))
        for reason, queries in (("truncated", batch.truncated), ("outside_view", batch.outside_view)):
            for query in queries:
                row = next(b for b, item_queries in enumerate(batch.item_queries) if any(q is query for q in item_queries))
                self.meta.append(_meta(query, batch, row, None, reason))
                self.picks.append(np.zeros(0, np.int32))
                self.hits.append(np.zeros(0, bool))

    def merge(self, other: QueryRecords) -> None:
        offset = len(self.meta)
        self.meta += other.meta
        self.picks += other.picks
        self.hits += other.hits
        self.maps += [(row + offset, layer, head, attention, cells) for row, layer, head, attention, cells in other.maps]

    def state(self) -> dict:
        from vb_probe.metrics.grounding import tensor_state

        def packed(arrays: list[np.ndarray], dtype) -> dict:
            lengths = np.array([len(a) for a in arrays], np.int64)
            flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
            return {"lengths": tensor_state(torch.from_numpy(lengths)), "flat": tensor_state(torch.from_numpy(flat))}

        return {"map_heads": [list(p) for p in self.map_heads], "meta": self.meta,
                "picks": packed(self.picks, np.int32), "hits": packed(self.hits, np.bool_),
                "maps": {"rows": [[r, l, h] for r, l, h, _, _ in self.maps],
                         "attention": packed([m[3].astype(np.float32) for m in self.maps], np.float32),
                         "cells": packed([m[4].reshape(-1) for m in self.maps], np.float32)}}

    def restored(self, state: dict) -> QueryRecords:
        from vb_probe.metrics.grounding import tensor_from_state

        def unpacked(packed: dict) -> list[np.ndarray]:
            lengths = tensor_from_state(packed["lengths"]).numpy()
            flat = tensor_from_state(packed["flat"]).numpy()
            return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []

        records = QueryRecords(tuple(tuple(p) for p in state["map_heads"]))
        records.meta = [list(m) for m in state["meta"]]
        records.picks, records.hits = unpacked(state["picks"]), unpacked(state["hits"])
        attention, cells = unpacked(state["maps"]["attention"]), unpacked(state["maps"]["cells"])
        records.maps = [(int(r), int(l), int(h), a, c.reshape(-1, 4))
                        for (r, l, h), a, c in zip(state["maps"]["rows"], attention, cells)]
        return records

    def report(self, counts, select, split, select_on) -> dict:
        return {"queries": len(self.meta)}


def _meta(query, batch, row: int, position: int | None, status: str) -> list:
    words = batch.item_words[row]
    return [query.group, query.unit, batch.image_ids[row], batch.keys[row], query.word_index,
            words[query.word_index] if query.word_index < len(words) else "", position, status]


def maps_arrays(records: QueryRecords | None, groups: set[str] | None = None) -> dict[str, np.ndarray] | None:
    """The maps of the asked heads as flat arrays (``maps.npz``): ``query`` [M] the row of the per-query table,
    ``layer``, ``head`` [M], ``offsets`` [M + 1] into ``attention`` [Σ R] (each map's row over its image tokens) and
    ``cells`` [Σ R, 4] (each token's box in the image's pixels). None without maps."""
    if records is None or not records.maps:
        return None
    kept = [m for m in records.maps if groups is None or records.meta[m[0]][0] in groups]
    if not kept:
        return None
    table_rows = {old: new for new, old in enumerate(i for i, meta in enumerate(records.meta)
                                                     if groups is None or meta[0] in groups)}
    lengths = [len(m[3]) for m in kept]
    return {"query": np.array([table_rows[m[0]] for m in kept], np.int64),
            "layer": np.array([m[1] for m in kept], np.int64), "head": np.array([m[2] for m in kept], np.int64),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "attention": np.concatenate([m[3] for m in kept]).astype(np.float32),
            "cells": np.concatenate([m[4] for m in kept]).astype(np.float32)}
