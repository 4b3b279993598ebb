"""Every head scored on one group of queries (:class:`HeadScores`: counts, so nothing is lost), the head chosen on
another split and the controls, as the tables and ``run.json`` hold them (6 decimals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vb_probe.errors import DataError
from vb_probe.heads import Head, SelectedHead
from vb_probe.metrics.intervals import wilson_interval

if TYPE_CHECKING:
    from vb_probe.metrics.grounding import HeadCounts

DIGITS = 6  # printed digits of accuracies, masses and baselines (the CSV's and run.json's)
BASELINES = ("highest_confidence", "random", "oracle")
ENTITY_COLUMNS = ["layer", "head", "n", "n_correct", "accuracy", "region_mass", "ci95_low", "ci95_high"]


def rounded(x: float | None) -> float | None:
    return None if x is None else round(float(x), DIGITS)


@dataclass(eq=False)
class HeadScores:
    """Every head scored on one group of queries.

    ``n_correct`` [layer, head] int: queries whose most-attended region hits gold; ``n`` queries;
    ``region_mass`` [layer, head] mean attention on regions (None where not kept); ``baselines`` name → accuracy
    (``highest_confidence`` None when the features carry no confidence).
    """

    n_correct: np.ndarray
    n: int
    region_mass: np.ndarray | None = None
    baselines: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_counts(cls, counts: "HeadCounts", with_mass: bool = True) -> "HeadScores":
        mass = np.round((counts.region_mass / max(counts.n, 1)).numpy(), DIGITS) if with_mass else None
        return cls(counts.n_correct.numpy().astype(np.int64), counts.n, mass,
                   {k: rounded(v) for k, v in counts.baseline_accuracy().items()})

    @property
    def accuracy(self) -> np.ndarray:
        """[layer, head] share of queries the head grounds (NaN when there were none)."""
        return self.n_correct / self.n if self.n else np.full(self.n_correct.shape, np.nan)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.n_correct.shape)

    def best_head(self) -> Head:
        """The most accurate head (ties: the lowest layer, then head). Chosen on this data: biased upwards."""
        flat = int(np.argmax(self.n_correct))
        layer, head = divmod(flat, self.shape[1])
        return Head(layer, head, float(self.accuracy[layer, head]))

    def per_layer_best(self) -> list[Head]:
        return [Head(layer, int(np.argmax(row)), float(self.accuracy[layer, int(np.argmax(row))]))
                for layer, row in enumerate(self.n_correct)]

    def interval(self, layer: int, head: int) -> tuple[float, float]:
        """95% Wilson interval of one head's accuracy."""
        return wilson_interval(int(self.n_correct[layer, head]), self.n)

    def rows(self) -> list[dict]:
        """One CSV row per head, numbers formatted as the files hold them."""
        rows = []
        for layer in range(self.shape[0]):
            for head in range(self.shape[1]):
                low, high = self.interval(layer, head)
                mass = "" if self.region_mass is None else f"{self.region_mass[layer, head]:.{DIGITS}f}"
                rows.append({"layer": layer, "head": head, "n": self.n, "n_correct": int(self.n_correct[layer, head]),
                             "accuracy": f"{self.accuracy[layer, head]:.{DIGITS}f}", "region_mass": mass,
                             "ci95_low": f"{low:.{DIGITS}f}", "ci95_high": f"{high:.{DIGITS}f}"})
        return rows

    def to_frame(self):
        """A pandas DataFrame, one row per head: layer, head, n, n_correct, accuracy, region_mass, ci95_low/high."""
        import pandas as pd

        frame = pd.DataFrame(self.rows(), columns=ENTITY_COLUMNS)
        for column in ("accuracy", "region_mass", "ci95_low", "ci95_high"):
            frame[column] = pd.to_numeric(frame[column])
        return frame

    def summary(self) -> dict:
        """``n``, ``best_head`` and ``per_layer_best`` as run.json holds them."""
        return {"n": self.n, "best_head": head_dict(self.best_head()),
                "per_layer_best": [head_dict(h) for h in self.per_layer_best()]}

    def equals(self, other: "HeadScores") -> bool:
        same_mass = (self.region_mass is None and other.region_mass is None) or (
            self.region_mass is not None and other.region_mass is not None
            and np.array_equal(self.region_mass, other.region_mass))
        return (self.n == other.n and np.array_equal(self.n_correct, other.n_correct) and same_mass
                and self.baselines == other.baselines)

    __eq__ = equals
    __hash__ = None  # mutable arrays inside

    @classmethod
    def from_rows(cls, rows: list[dict], baselines: dict, where: str) -> "HeadScores":
        """Inverse of :meth:`rows` (CSV rows as read by ``csv.DictReader``)."""
        try:
            if min(min(int(r["layer"]), int(r["head"]), int(r["n_correct"]), int(r["n"])) for r in rows) < 0:
                raise ValueError("a layer, head or count below 0")
            layers = 1 + max(int(r["layer"]) for r in rows)
            heads = 1 + max(int(r["head"]) for r in rows)
            if len(rows) != layers * heads or len({(r["layer"], r["head"]) for r in rows}) != len(rows):
                raise ValueError(f"{len(rows)} rows for a {layers}×{heads} grid of heads")
            n_correct = np.zeros((layers, heads), np.int64)
            mass = np.zeros((layers, heads))
            has_mass = all(r.get("region_mass") not in (None, "") for r in rows)
            for r in rows:
                n_correct[int(r["layer"]), int(r["head"])] = int(r["n_correct"])
                if has_mass:
                    mass[int(r["layer"]), int(r["head"])] = float(r["region_mass"])
            n = int(rows[0]["n"])
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{where}: not a score table of vb-probe ({type(exc).__name__}: {exc}); expected the "
                            "columns " + ", ".join(ENTITY_COLUMNS)) from None
        return cls(n_correct, n, mass if has_mass else None, {k: baselines.get(k) for k in BASELINES})


def head_dict(head: Head) -> dict:
    return {"layer": head.layer, "head": head.head, "accuracy": rounded(head.accuracy)}


def selected_head(main: HeadScores, select: HeadScores | None, split: str | None) -> SelectedHead | None:
    """The head that is best on ``select`` (another split), with its accuracy on ``main``."""
    if select is None or select.n == 0 or split is None:
        return None
    chosen = select.best_head()
    return SelectedHead(chosen.layer, chosen.head, rounded(main.accuracy[chosen.layer, chosen.head]), split,
                        rounded(chosen.accuracy))


def selected_dict(s: SelectedHead | None) -> dict | None:
    return None if s is None else {"selected_on": s.selected_on, "layer": s.layer, "head": s.head,
                                   "accuracy_on_selection_split": s.accuracy_on_selection_split,
                                   "accuracy": s.accuracy}


def selected_from(d: dict | None) -> SelectedHead | None:
    return None if not d else SelectedHead(d["layer"], d["head"], d["accuracy"], d["selected_on"],
                                           d["accuracy_on_selection_split"])


def control_dict(c: HeadScores | None) -> dict | None:
    return None if c is None else {**c.summary(), "n_correct": c.n_correct.tolist()}


def control_from(d: dict | None) -> HeadScores | None:
    if not d:
        return None
    if "n_correct" not in d:
        raise DataError("run.json: control_random_init has no n_correct grid; re-run the probe with this version")
    return HeadScores(np.asarray(d["n_correct"], np.int64), int(d["n"]))


def other_rule_dict(c: HeadScores | None, rule: str) -> dict | None:
    return None if c is None else {"rule": rule, "baselines": c.baselines, **control_dict(c)}


def other_rule_from(d: dict | None) -> HeadScores | None:
    scores = control_from(d)
    if scores is not None:
        scores.baselines = {k: d.get("baselines", {}).get(k) for k in BASELINES}
    return scores


def same_scores(a: HeadScores | None, b: HeadScores | None) -> bool:
    return a == b if a is not None else b is None
