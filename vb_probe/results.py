"""Typed probe results: what the CLI writes, the demo reports, the notebooks plot and the explorer reads.

:class:`HeadScores` holds one group of queries scored by every head (counts, so nothing is lost);
:class:`GroundingResult` is entity grounding (Figure 3), :class:`SyntacticResult` one :class:`HeadScores` per
relation and direction (Figure 4). ``save(dir)`` writes the CLI's files (CSV + ``run.json`` + figures) together
or not at all, and ``load(dir)`` reads them back equal.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from vb_probe.atomic import atomic_files
from vb_probe.errors import DataError, VbProbeError
from vb_probe.metrics.intervals import shown, wilson_interval
from vb_probe.queries import DIRECTIONS

if TYPE_CHECKING:
    from vb_probe.metrics.grounding import HeadCounts

DIGITS = 6  # printed digits of accuracies, masses and baselines (the CSV's and run.json's)
BASELINES = ("highest_confidence", "random", "oracle")
MAX_PANELS = 8  # relations Figure 4 draws side by side; the rest are in the CSV

ENTITY_COLUMNS = ["layer", "head", "n", "n_correct", "accuracy", "region_mass", "ci95_low", "ci95_high"]
# region mass is Figure 3's dot size; Figure 4 has no use for it (and it is the one float a batch size can move)
SYNTACTIC_COLUMNS = ["relation", "direction", *(c for c in ENTITY_COLUMNS if c != "region_mass")]


def head_label(layer: int, head: int) -> str:
    """``L{layer}H{head}``, 0-based: the one place heads are named, in tables, files and figures."""
    return f"L{layer}H{head}"


class Head(NamedTuple):
    """One head and its accuracy; ``L{layer}H{head}``, 0-based, everywhere."""

    layer: int
    head: int
    accuracy: float

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)


class SelectedHead(NamedTuple):
    """A head chosen on another split (``selected_on``) and scored here: the unbiased number to report."""

    layer: int
    head: int
    accuracy: float
    selected_on: str
    accuracy_on_selection_split: float

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("vb-probe", "torch", "transformers", "tokenizers", "numpy", "spacy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _round(x: float | None) -> float | None:
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
                   {k: _round(v) for k, v in counts.baseline_accuracy().items()})

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
        return {"n": self.n, "best_head": _head_dict(self.best_head()),
                "per_layer_best": [_head_dict(h) for h in self.per_layer_best()]}

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


def _head_dict(head: Head) -> dict:
    return {"layer": head.layer, "head": head.head, "accuracy": _round(head.accuracy)}


def _selected(main: HeadScores, select: HeadScores | None, split: str | None) -> SelectedHead | None:
    """The head that is best on ``select`` (another split), with its accuracy on ``main``."""
    if select is None or select.n == 0 or split is None:
        return None
    chosen = select.best_head()
    return SelectedHead(chosen.layer, chosen.head, _round(main.accuracy[chosen.layer, chosen.head]), split,
                        _round(chosen.accuracy))


def _selected_dict(s: SelectedHead | None) -> dict | None:
    return None if s is None else {"selected_on": s.selected_on, "layer": s.layer, "head": s.head,
                                   "accuracy_on_selection_split": s.accuracy_on_selection_split,
                                   "accuracy": s.accuracy}


def _selected_from(d: dict | None) -> SelectedHead | None:
    return None if not d else SelectedHead(d["layer"], d["head"], d["accuracy"], d["selected_on"],
                                           d["accuracy_on_selection_split"])


def _control_dict(c: HeadScores | None) -> dict | None:
    return None if c is None else {**c.summary(), "n_correct": c.n_correct.tolist()}


def _control_from(d: dict | None) -> HeadScores | None:
    if not d:
        return None
    if "n_correct" not in d:
        raise DataError("run.json: control_random_init has no n_correct grid; re-run the probe with this version")
    return HeadScores(np.asarray(d["n_correct"], np.int64), int(d["n"]))


def _other_rule_dict(c: HeadScores | None, rule: str) -> dict | None:
    return None if c is None else {"rule": rule, "baselines": c.baselines, **_control_dict(c)}


def _other_rule_from(d: dict | None) -> HeadScores | None:
    scores = _control_from(d)
    if scores is not None:
        scores.baselines = {k: d.get("baselines", {}).get(k) for k in BASELINES}
    return scores


def _same(a: HeadScores | None, b: HeadScores | None) -> bool:
    return a == b if a is not None else b is None


def _read_run(folder: Path, probe: str) -> dict:
    path = folder / "run.json" if folder.is_dir() else folder
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; pass the --out folder of `vb-probe {probe.replace('_', '-')}`") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}); expected the run.json of a probe run") from None
    if not isinstance(run, dict) or run.get("probe") != probe:
        raise DataError(f"{path}: is not the run.json of a {probe} run (probe: "
                        f"{run.get('probe') if isinstance(run, dict) else None!r})")
    return run


def _refuse_other_run(folder: Path, probe: str) -> None:
    """A folder holds one run: never replace the run.json of another probe (entity then syntactic into one --out)."""
    path = folder / "run.json"
    if not path.is_file():
        return
    try:
        other = json.loads(path.read_text(encoding="utf-8")).get("probe")
    except (OSError, ValueError, AttributeError, RecursionError):
        other = None
    if other != probe:
        raise VbProbeError(f"{folder}: already holds the run.json of {other or 'another'} run; write this "
                           f"{probe} run to another --out (nothing was changed)")


def check_result_folder(folder: str | Path, probe: str, names: Sequence[str]) -> None:
    """Before a probe runs: ``folder`` may receive its files ``names`` (absent, or vb-probe's own and unchanged) and
    holds no other probe's run. The same checks run again when the files are saved."""
    from vb_probe.atomic import check_outputs

    check_outputs(folder, names)
    if Path(folder).is_dir():
        _refuse_other_run(Path(folder), probe)


def check_scores_shape(scores: tuple[int, int], model: tuple[int, int], source: str | Path) -> None:
    """Scores of a model of another shape (layers × heads) would show or ablate the wrong heads: refused."""
    if tuple(scores) != tuple(model):
        raise DataError(f"--scores {source}: the scores are of a {scores[0]}×{scores[1]} (layers × heads) model but "
                        f"this model is {model[0]}×{model[1]}; pass the scores of this checkpoint")


def _save_run(folder: Path, probe: str, columns: list[str], rows: list[dict], figure, run: dict) -> Path:
    """``<probe>.csv``, ``<probe>.png`` and ``run.json`` into ``folder``, replaced together or not at all; a folder
    holding another probe's run is refused."""
    _refuse_other_run(folder, probe)
    with atomic_files(folder) as staged:
        staged.text(f"{probe}.csv", csv_text(columns, rows))
        staged.figure(f"{probe}.png", figure)
        staged.json("run.json", run)
    return folder


@contextmanager
def _fields_of(path: Path):
    """A run.json whose fields are missing or of the wrong type is one line naming it, never a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, VbProbeError):
            raise
        raise DataError(f"{path}: a field is missing or of the wrong type ({type(exc).__name__}: {exc}); expected the "
                        "run.json vb-probe writes, run the probe again") from None


def read_table(path: Path, what: str = "") -> list[dict]:
    """The rows of a CSV table vb-probe wrote (``entity_grounding.csv``, ``syntactic.csv``, …), as dicts of strings:
    the one reader of them. One-line errors name the file; ``what`` prefixes the name (``--scores``)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError(f"{what}{path}: file not found; the folder lacks the probe's table (run the probe again)") \
            from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{what}{path}: cannot read it ({type(exc).__name__}); expected a table vb-probe wrote") \
            from None
    if not rows:
        raise DataError(f"{what}{path}: no rows; run the probe again")
    return rows


# ----------------------------------------------------------------------------------------- entity grounding

@dataclass(eq=False)
class GroundingResult(HeadScores):
    """Entity grounding (Figure 3): every head over every scored phrase of ``split``.

    Beyond :class:`HeadScores`: ``n_phrases`` considered, ``skipped`` reason → count
    (``n_phrases == n + sum(skipped)``), ``selected_head`` (chosen on another split, scored here),
    ``control`` (the same probe on a random-initialised model), and ``provenance`` (checkpoint, options,
    protocol, versions: run.json's record of how the numbers were made).
    """

    split: str = "test"
    n_phrases: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    selected_head: SelectedHead | None = None
    control: HeadScores | None = None
    provenance: dict = field(default_factory=dict)
    other_rule: HeadScores | None = None  # the same picks under the other rule, with its own baselines
    permuted: HeadScores | None = None  # the permuted-geometry control: the same picks against shuffled cells
    localization: dict | None = None  # decoder families: the fixed-position baseline and the unsupervised heads

    FILES = ("entity_grounding.csv", "run.json", "entity_grounding.png")

    @property
    def rule(self) -> str:
        """The rule of the grid: ``iou`` (regions, the paper's) or ``pointing`` (patches): the model family's."""
        return str(self.provenance.get("rule", "iou"))

    @property
    def other_rule_name(self) -> str:
        return "pointing" if self.rule == "iou" else "iou"

    def run_json(self) -> dict:
        summary = self.summary()
        return {"probe": "entity_grounding", "n_phrases": self.n_phrases, "n_scored": self.n,
                "skipped": dict(sorted(self.skipped.items())), "baselines": self.baselines,
                "best_head": summary["best_head"], "per_layer_best": summary["per_layer_best"],
                "selected_head": _selected_dict(self.selected_head), "control_random_init": _control_dict(self.control),
                "other_rule": _other_rule_dict(self.other_rule, self.other_rule_name),
                "control_permuted_geometry": _control_dict(self.permuted), "split": self.split,
                **({"localization": self.localization} if self.localization is not None else {}), **self.provenance}

    def plot(self, ax=None):
        """Figure 3 (the layer × head grid, with the head chosen on another split and the control's best head);
        returns the figure."""
        from vb_probe.viz.head_grid import plot_head_grid

        selected = self.selected_head
        control = self.control.best_head() if self.control is not None else None
        return plot_head_grid(self.accuracy, self.region_mass, self.baselines,
                              title=f"Entity grounding, {self.split} split ({self.n} phrases)",
                              selected=(selected.layer, selected.head, selected.selected_on) if selected else None,
                              control_best=(control.label, control.accuracy) if control else None, ax=ax)

    def save(self, folder: str | Path) -> Path:
        """``entity_grounding.csv``, ``run.json`` and ``entity_grounding.png``, replaced together."""
        return _save_run(Path(folder), "entity_grounding", ENTITY_COLUMNS, self.rows(), self.plot(), self.run_json())

    @classmethod
    def load(cls, folder: str | Path) -> "GroundingResult":
        """Read a folder written by :meth:`save` (or by ``vb-probe entity-grounding``) back, equal."""
        folder = Path(folder)
        folder = folder.parent if folder.is_file() else folder
        run = _read_run(folder, "entity_grounding")
        known = {"probe", "n_phrases", "n_scored", "skipped", "baselines", "best_head", "per_layer_best",
                 "selected_head", "control_random_init", "split", "other_rule", "control_permuted_geometry",
                 "localization"}
        with _fields_of(folder / "run.json"):
            scores = HeadScores.from_rows(read_table(folder / "entity_grounding.csv"), dict(run.get("baselines", {})),
                                          str(folder / "entity_grounding.csv"))
            result = cls(scores.n_correct, scores.n, scores.region_mass, scores.baselines, split=str(run["split"]),
                         n_phrases=int(run["n_phrases"]), skipped={str(k): int(v) for k, v in run["skipped"].items()},
                         selected_head=_selected_from(run.get("selected_head")),
                         control=_control_from(run.get("control_random_init")),
                         provenance={k: v for k, v in run.items() if k not in known},
                         other_rule=_other_rule_from(run.get("other_rule")),
                         permuted=_control_from(run.get("control_permuted_geometry")),
                         localization=run.get("localization"))
        if result.n_phrases != result.n + sum(result.skipped.values()):
            raise DataError(f"{folder / 'run.json'}: n_phrases {result.n_phrases} is not the {result.n} scored plus "
                            f"{sum(result.skipped.values())} skipped; the files do not belong together, run the probe again")
        return result

    def equals(self, other: "GroundingResult") -> bool:
        return (HeadScores.equals(self, other) and self.split == other.split and self.n_phrases == other.n_phrases
                and self.skipped == other.skipped and self.selected_head == other.selected_head
                and (self.control == other.control if self.control is not None else other.control is None)
                and self.provenance == other.provenance
                and _same(self.other_rule, other.other_rule) and _same(self.permuted, other.permuted)
                and self.localization == other.localization)

    __eq__ = equals
    __hash__ = None

    def __repr__(self) -> str:
        best = self.best_head()
        return (f"GroundingResult(split={self.split!r}, n={self.n} of {self.n_phrases} phrases, best {best.label} "
                f"{shown(best.accuracy)}, highest-confidence {shown(self.baselines.get('highest_confidence'))}, "
                f"{self.shape[0]}×{self.shape[1]} heads)")


# ----------------------------------------------------------------------------------------- syntactic grounding

@dataclass(eq=False)
class SyntacticResult:
    """Syntactic grounding (Figure 4): one :class:`HeadScores` per (relation, direction) with arcs.

    ``scores[(relation, direction)]``; ``relations`` in the order asked; ``skipped`` per ``relation/direction``
    group: reason → count; ``selected`` and ``control`` per (relation, direction) where computed.
    """

    relations: list[str]
    scores: dict[tuple[str, str], HeadScores]
    skipped: dict[str, dict[str, int]]
    split: str = "test"
    arcs_seen: int = 0
    parser: str | None = None
    selected: dict[tuple[str, str], SelectedHead] = field(default_factory=dict)
    control: dict[tuple[str, str], HeadScores] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    FILES = ("syntactic.csv", "run.json", "syntactic.png")

    def __getitem__(self, key: tuple[str, str]) -> HeadScores:
        if key not in self.scores:
            raise KeyError(f"{key}: no arcs of this relation and direction reached a phrase with boxes "
                           f"(skipped: {self.skipped.get('/'.join(key), {})})")
        return self.scores[key]

    def best_head(self, relation: str, direction: str = "head_to_dependent") -> Head:
        return self[(relation, direction)].best_head()

    def per_layer_best(self, relation: str, direction: str = "head_to_dependent") -> list[Head]:
        return self[(relation, direction)].per_layer_best()

    def to_frame(self):
        """One row per (relation, direction, layer, head), with the 95% interval."""
        import pandas as pd

        frames = []
        for (relation, direction), scores in self.scores.items():
            frame = scores.to_frame()
            frame.insert(0, "direction", direction)
            frame.insert(0, "relation", relation)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SYNTACTIC_COLUMNS)

    def rows(self) -> list[dict]:
        return [{"relation": r, "direction": d, **row} for (r, d), s in self.scores.items() for row in s.rows()]

    def panel(self, relation: str) -> dict:
        """What Figure 4 draws for one relation: per direction, each layer's best head with its 95% interval,
        the highest-confidence baseline and the random-init control's per-layer best."""
        directions = {}
        for direction in DIRECTIONS:
            scores = self.scores.get((relation, direction))
            if scores is None:
                directions[direction] = {"n": 0}
                continue
            best = scores.per_layer_best()
            intervals = [scores.interval(h.layer, h.head) for h in best]
            control = self.control.get((relation, direction))
            directions[direction] = {
                "n": scores.n, "layers": [h.layer for h in best], "accuracy": [h.accuracy for h in best],
                "low": [lo for lo, _ in intervals], "high": [hi for _, hi in intervals],
                "baseline": scores.baselines.get("highest_confidence"),
                "control": [h.accuracy for h in control.per_layer_best()] if control is not None else None}
        return {"relation": relation, "directions": directions}

    def most_frequent(self, relations: Sequence[str] | None = None, count: int = MAX_PANELS) -> list[str]:
        """Of ``relations`` (default: all), the ``count`` with the most scored arcs (both directions), in their own
        order."""
        chosen = list(relations or self.relations)
        if len(chosen) <= count:
            return chosen
        arcs = {r: sum(self.scores[(r, d)].n for d in DIRECTIONS if (r, d) in self.scores) for r in chosen}
        kept = set(sorted(chosen, key=lambda r: (-arcs[r], chosen.index(r)))[:count])
        return [r for r in chosen if r in kept]

    def plot(self, relations: Sequence[str] | None = None):
        """Figure 4: the relations side by side (all of them unless ``relations`` names some), at most
        :data:`MAX_PANELS`: those with the most arcs, the title saying how many were left out (Visual Genome has
        tens of thousands of predicates); returns the figure."""
        from vb_probe.viz.relations import plot_relation_panels

        asked = list(relations or self.relations)
        shown = self.most_frequent(asked)
        title = f"Syntactic grounding, {self.split} split"
        if len(shown) < len(asked):
            title += (f": the {len(shown)} of {len(asked):,} relations with the most arcs (the other "
                      f"{len(asked) - len(shown):,} in syntactic.csv)")
        return plot_relation_panels([self.panel(r) for r in shown], title=title)

    def run_json(self) -> dict:
        relations: dict[str, dict] = {}
        for relation in self.relations:
            relations[relation] = {}
            for direction in DIRECTIONS:
                key = (relation, direction)
                scores = self.scores.get(key)
                if scores is None:
                    relations[relation][direction] = {"n": 0, "highest_confidence": None, "random": None,
                                                      "oracle": None, "best_head": None, "per_layer_best": []}
                    continue
                entry = {"n": scores.n, **scores.baselines, **{k: v for k, v in scores.summary().items() if k != "n"},
                         "selected_head": _selected_dict(self.selected.get(key))}
                if key in self.control:
                    entry["control_random_init"] = _control_dict(self.control[key])
                relations[relation][direction] = entry
        return {"probe": "syntactic", "relations": relations, "arcs_seen": self.arcs_seen,
                "skipped": self.skipped, "parser": self.parser, "split": self.split, **self.provenance}

    def save(self, folder: str | Path) -> Path:
        """``syntactic.csv``, ``run.json`` and ``syntactic.png`` (Figure 4), replaced together."""
        return _save_run(Path(folder), "syntactic", SYNTACTIC_COLUMNS, self.rows(), self.plot(), self.run_json())

    @classmethod
    def load(cls, folder: str | Path) -> "SyntacticResult":
        folder = Path(folder)
        folder = folder.parent if folder.is_file() else folder
        run = _read_run(folder, "syntactic")
        rows = read_table(folder / "syntactic.csv")
        with _fields_of(folder / "run.json"):
            return cls._from_files(folder, run, rows)

    @classmethod
    def _from_files(cls, folder: Path, run: dict, rows: list[dict]) -> "SyntacticResult":
        by_group: dict[tuple[str, str], list[dict]] = {}
        for row in rows:
            by_group.setdefault((row["relation"], row["direction"]), []).append(row)
        scores, selected, control = {}, {}, {}
        for key, group_rows in by_group.items():
            info = run["relations"][key[0]][key[1]]
            scores[key] = HeadScores.from_rows(group_rows, info, str(folder / "syntactic.csv"))
            if info.get("selected_head"):
                selected[key] = _selected_from(info["selected_head"])
            if info.get("control_random_init"):
                control[key] = _control_from(info["control_random_init"])
        known = {"probe", "relations", "arcs_seen", "skipped", "parser", "split"}
        return cls(list(run["relations"]), scores, run["skipped"], run["split"], run["arcs_seen"], run["parser"],
                   selected, control, {k: v for k, v in run.items() if k not in known})

    def equals(self, other: "SyntacticResult") -> bool:
        return (self.relations == other.relations and self.scores.keys() == other.scores.keys()
                and all(self.scores[k] == other.scores[k] for k in self.scores)
                and self.control.keys() == other.control.keys()
                and all(self.control[k] == other.control[k] for k in self.control)
                and (self.skipped, self.split, self.arcs_seen, self.parser, self.selected, self.provenance)
                == (other.skipped, other.split, other.arcs_seen, other.parser, other.selected, other.provenance))

    __eq__ = equals
    __hash__ = None

    def __repr__(self) -> str:
        parts = [f"{r}/{d} n={s.n} best {s.best_head().label} {s.best_head().accuracy:.3f}"
                 for (r, d), s in self.scores.items()]
        return f"SyntacticResult(split={self.split!r}, " + "; ".join(parts) + ")"


# ----------------------------------------------------------------------------------------- interventions

def top_heads_from_csv(path: Path, k: int, model_shape: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """The ``k`` most accurate heads of an ``entity_grounding.csv`` (or the folder holding it; ties: lower layer,
    then head). With ``model_shape`` (layers, heads), scores of a model of another shape are refused."""
    path = Path(path)
    path = path / "entity_grounding.csv" if path.is_dir() else path
    expected = "expected the entity_grounding.csv of `vb-probe entity-grounding` (layer, head, accuracy columns)"
    try:
        rows = [(-float(r["accuracy"]), int(r["layer"]), int(r["head"])) for r in read_table(path, "--scores ")]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"--scores {path}: cannot read it ({type(exc).__name__}); {expected}") from None
    if not rows:
        raise DataError(f"--scores {path}: no rows; {expected}")
    bad = next((r for r in rows if not np.isfinite(r[0]) or r[1] < 0 or r[2] < 0), None)
    if bad is not None:
        raise DataError(f"--scores {path}: the row of layer {bad[1]}, head {bad[2]} has accuracy {-bad[0]}; expected "
                        f"heads numbered from 0 and finite accuracies; {expected}")
    if model_shape is not None:
        check_scores_shape((1 + max(r[1] for r in rows), 1 + max(r[2] for r in rows)), model_shape, path)
    if not 1 <= k <= len(rows) // 2:
        raise DataError(f"-k {k}: the scores list {len(rows)} heads, and the control ablates k other heads; "
                        f"use -k between 1 and {len(rows) // 2}")
    return [(layer, head) for _, layer, head in sorted(rows)[:k]]



ATTRIBUTION_COLUMNS = ["layer", "head", "n", "n_agree", "agreement"]


@dataclass(eq=False)
class AttributionResult:
    """Integrated gradients of masked entity words against each head's attention.

    ``n_agree`` [layer, head]: of ``n`` masked phrase words, how often the head's most-attended region is the region
    with the largest attribution; ``summary`` the rest, as ``attribution.json`` holds it (steps, the top-attributed
    region's grounding accuracy, the completeness error, the image's share of the attribution, the best agreeing
    head, per phrase outcomes). ``save``/``load`` write and read ``attribution_heads.csv`` + ``attribution.json``.
    """

    n_agree: np.ndarray
    n: int
    summary: dict = field(default_factory=dict)

    FILES = ("attribution_heads.csv", "attribution.json")

    @property
    def agreement(self) -> np.ndarray:
        """[layer, head] share of phrases where the head's pick is the top-attributed region."""
        return self.n_agree / max(self.n, 1)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.n_agree.shape)

    def __getitem__(self, key: str):
        return self.summary[key]

    def best_head(self) -> Head:
        layer, head = divmod(int(np.argmax(self.n_agree)), self.shape[1])
        return Head(layer, head, float(self.agreement[layer, head]))

    def rows(self) -> list[dict]:
        agreement = self.agreement
        return [{"layer": l, "head": h, "n": self.n, "n_agree": int(self.n_agree[l, h]),
                 "agreement": f"{agreement[l, h]:.{DIGITS}f}"}
                for l in range(self.shape[0]) for h in range(self.shape[1])]

    def plot(self, ax=None):
        """Each head's agreement with integrated gradients on the layer × head grid; returns the figure."""
        from vb_probe.viz.head_grid import plot_head_grid

        return plot_head_grid(self.agreement, None, title=f"Attention vs integrated gradients ({self.n} masked "
                              "phrase words)", value_label="agreement: most-attended region = top-attributed region",
                              ax=ax)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        with atomic_files(folder) as staged:
            staged.text(self.FILES[0], csv_text(ATTRIBUTION_COLUMNS, self.rows()))
            staged.json(self.FILES[1], self.summary)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "AttributionResult":
        folder = Path(folder)
        folder = folder.parent if folder.is_file() else folder
        rows = read_table(folder / cls.FILES[0])
        path = folder / cls.FILES[1]
        with _fields_of(path):
            summary = json.loads(path.read_text(encoding="utf-8"))
            layers, heads = 1 + max(int(r["layer"]) for r in rows), 1 + max(int(r["head"]) for r in rows)
            n_agree = np.zeros((layers, heads), np.int64)
            for r in rows:
                n_agree[int(r["layer"]), int(r["head"])] = int(r["n_agree"])
            return cls(n_agree, int(summary["n"]), summary)


@dataclass(eq=False)
class CausalResult:
    """The causal check: masked entity-word accuracy with nothing, the top-k grounding heads, or k random heads
    ablated, with a bootstrap interval, an empirical p-value and a verdict (``causal.json``)."""

    summary: dict

    FILES = ("causal.json",)

    def __getitem__(self, key: str):
        return self.summary[key]

    def plot(self, ax=None):
        """The drop in accuracy from ablating the top-k heads (with its interval) beside each random draw's."""
        from matplotlib.figure import Figure

        fig = ax.figure if ax is not None else Figure(figsize=(6, 3.2), dpi=120, layout="constrained")
        ax = ax or fig.add_subplot()
        s = self.summary
        draws = s["drop_random_k_draws"]
        ax.scatter(np.zeros(len(draws)) + 1, draws, color="dimgrey", s=14, label=f"{s['k']} random heads, each draw")
        low, high = s["drop_top_k_ci95"]
        ax.errorbar([0], [s["drop_top_k"]], yerr=[[s["drop_top_k"] - low], [high - s["drop_top_k"]]], fmt="o",
                    color="tab:red", capsize=5, label=f"top-{s['k']} grounding heads (95% interval)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks([0, 1], [f"top-{s['k']}", "random"])
        ax.set_ylabel("drop in masked entity-word accuracy")
        ax.set_title(f"Ablation on {s['n']} phrases: p = {s['p_value']:.3f}", fontsize=10)
        ax.legend(fontsize=7)
        return fig

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        with atomic_files(folder) as staged:
            staged.json(self.FILES[0], self.summary)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "CausalResult":
        folder = Path(folder)
        path = folder / cls.FILES[0] if folder.is_dir() else folder
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise DataError(f"{path}: cannot read ({type(exc).__name__}); expected the causal.json of "
                            "`vb-probe causal`") from None
        return cls(summary)
