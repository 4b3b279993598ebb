"""Scoring attention heads by the region they attend to most, and the baselines through the same rule.

A *query* is one token's attention row; its *target* is a bool vector over the image's regions (region r
hits when its IoU with a gold box is ≥ 0.5). A head is correct on a query when the argmax over the
valid region columns hits. Ties go to the lowest region index (``torch.argmax`` returns the first
maximum); padding regions never win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def head_choices(region_rows: torch.Tensor, region_valid: torch.Tensor) -> torch.Tensor:
    """``region_rows`` [layer, n, head, R] attention on region columns, ``region_valid`` [n, R] bool →
    chosen region per (layer, query, head) [layer, n, head]."""
    masked = region_rows.masked_fill(~region_valid[None, :, None, :], float("-inf"))
    return masked.argmax(dim=-1)


def chosen_hits(choice: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """[layer, n, head] bool: whether each chosen region (``choice`` [layer, n, head]) hits (``hits`` [n, R])."""
    expanded = hits[None, :, None, :].expand(choice.shape[0], -1, choice.shape[2], -1)
    return expanded.gather(-1, choice[..., None]).squeeze(-1)


def head_correct(region_rows: torch.Tensor, region_valid: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """[layer, n, head] bool: the head's most-attended valid region hits the target (``hits`` [n, R])."""
    return chosen_hits(head_choices(region_rows, region_valid), hits)


def baseline_scores(
    hits: torch.Tensor, region_valid: torch.Tensor, confidences: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Per query [n]: ``highest_confidence`` (1/0; absent without confidences), ``random`` (expected
    accuracy of a uniform valid region), ``oracle`` (some region hits)."""
    hits_f = (hits & region_valid).float()
    scores = {
        "random": hits_f.sum(-1) / region_valid.float().sum(-1).clamp(min=1),
        "oracle": hits_f.amax(-1) if hits.shape[-1] else torch.zeros(hits.shape[0]),
    }
    if confidences is not None:
        best = confidences.masked_fill(~region_valid, float("-inf")).argmax(-1)
        scores["highest_confidence"] = hits_f.gather(-1, best[:, None]).squeeze(-1)
    return scores


@dataclass
class HeadCounts:
    """Running counts for one group of queries (e.g. entity phrases, or one relation and direction)."""

    layers: int
    heads: int
    n: int = 0
    n_correct: torch.Tensor = field(default=None)  # [layer, head] int64
    region_mass: torch.Tensor = field(default=None)  # [layer, head] float64 sum over queries
    baselines: dict[str, float] = field(default_factory=dict)  # name → sum over queries
    has_confidence: bool = True
    # the same queries scored another way: the other rule ("iou" / "pointing") and the permuted-geometry control
    # ("permuted"); name → HeadCounts whose region mass stays 0 (the picks' mass is the main counts')
    alternatives: dict[str, "HeadCounts"] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_correct is None:
            self.n_correct = torch.zeros(self.layers, self.heads, dtype=torch.int64)
        if self.region_mass is None:
            self.region_mass = torch.zeros(self.layers, self.heads, dtype=torch.float64)

    def add(self, correct: torch.Tensor, mass: torch.Tensor | None, baselines: dict[str, torch.Tensor]) -> None:
        """``correct`` [layer, n, head] bool, ``mass`` [layer, n, head] (None: not kept), baselines name → [n]."""
        self.n += correct.shape[1]
        self.n_correct += correct.sum(1).to(torch.int64).cpu()
        if mass is not None:
            self.region_mass += mass.double().sum(1).cpu()
        if "highest_confidence" not in baselines:
            self.has_confidence = False
        for name, values in baselines.items():
            self.baselines[name] = self.baselines.get(name, 0.0) + float(values.double().sum())

    def add_alternative(self, name: str, correct: torch.Tensor, baselines: dict[str, torch.Tensor]) -> None:
        """The same queries as the last :meth:`add`, scored another way (``correct`` [layer, n, head] bool)."""
        if name not in self.alternatives:
            self.alternatives[name] = HeadCounts(self.layers, self.heads)
        self.alternatives[name].add(correct, None, baselines)

    def merge(self, other: "HeadCounts") -> None:
        """Add ``other`` (counts of other batches) to these: the same operations, in the same order, as adding its
        batches here one by one, so folding per-batch counts in batch order gives these counts bit for bit."""
        self.n += other.n
        self.n_correct += other.n_correct
        self.region_mass += other.region_mass
        self.has_confidence = self.has_confidence and other.has_confidence
        for name, value in other.baselines.items():
            self.baselines[name] = self.baselines.get(name, 0.0) + value
        for name, sub in other.alternatives.items():
            self.alternatives.setdefault(name, HeadCounts(self.layers, self.heads)).merge(sub)

    def accuracy(self) -> torch.Tensor:
        return self.n_correct.double() / max(self.n, 1)

    def baseline_accuracy(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in ("highest_confidence", "random", "oracle"):
            if name == "highest_confidence" and not self.has_confidence:
                out[name] = None
            else:
                out[name] = self.baselines.get(name, 0.0) / self.n if self.n else None
        return out

    def best_head(self) -> dict:
        acc = self.accuracy()
        flat = int(acc.flatten().argmax())  # ties: the lowest (layer, head)
        layer, head = divmod(flat, self.heads)
        return {"layer": layer, "head": head, "accuracy": float(acc[layer, head])}

    def ranked(self) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """Every head from most hits to fewest (ties: the lower layer, then head) as (layer, head), and each head's
        rank [layer, head] in that order (1: the most hits)."""
        order = torch.argsort(-self.n_correct.flatten(), stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(1, len(order) + 1)
        return [divmod(int(j), self.heads) for j in order], rank.reshape(self.layers, self.heads)

    def per_layer_best(self) -> list[dict]:
        acc = self.accuracy()
        return [{"layer": l, "head": int(acc[l].argmax()), "accuracy": float(acc[l].max())} for l in range(self.layers)]

    def to_state(self) -> dict:
        return {"layers": self.layers, "heads": self.heads, "n": self.n, "n_correct": self.n_correct.tolist(),
                "region_mass": self.region_mass.tolist(), "baselines": self.baselines,
                "has_confidence": self.has_confidence,
                "alternatives": {name: counts.to_state() for name, counts in self.alternatives.items()}}

    @classmethod
    def from_state(cls, state: dict) -> "HeadCounts":
        return cls(state["layers"], state["heads"], state["n"], torch.tensor(state["n_correct"], dtype=torch.int64),
                   torch.tensor(state["region_mass"], dtype=torch.float64), dict(state["baselines"]),
                   state["has_confidence"],
                   {name: cls.from_state(sub) for name, sub in state.get("alternatives", {}).items()})


def tensor_state(tensor: torch.Tensor) -> dict:
    """A tensor as JSON holds it exactly: dtype, shape and its bytes in base64."""
    import base64

    array = tensor.contiguous().numpy()
    return {"dtype": str(array.dtype), "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def tensor_from_state(state: dict) -> torch.Tensor:
    import base64

    import numpy as np

    array = np.frombuffer(base64.b64decode(state["data"]), dtype=np.dtype(state["dtype"]))
    return torch.from_numpy(array.reshape(state["shape"]).copy())
