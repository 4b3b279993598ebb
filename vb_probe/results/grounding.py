"""The typed results of the grounding probes: :class:`GroundingResult` (entity grounding, Figure 3) and
:class:`SyntacticResult` (per relation and direction, Figure 4). ``save(dir)`` writes the CLI's files (CSV,
``run.json``, figure) together or not at all; ``load(dir)`` reads them back equal. No engine, torch or
transformers import: a notebook loads them in a second."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vb_probe.errors import DataError
from vb_probe.heads import Head, SelectedHead
from vb_probe.metrics.intervals import shown
from vb_probe.queries import DIRECTIONS
from vb_probe.results.files import fields_of, read_maps_file, read_queries, read_run, read_table, save_run
from vb_probe.results.scores import (
    ENTITY_COLUMNS,
    HeadScores,
    control_dict,
    control_from,
    other_rule_dict,
    other_rule_from,
    same_scores,
    selected_dict,
    selected_from,
)

MAX_PANELS = 8  # relations Figure 4 draws side by side; the rest are in the CSV


def _record_files(queries, maps) -> tuple[list[dict] | None, dict | None]:
    """A result's per-query table as ``queries.csv`` rows, and its maps, for :func:`save_run`."""
    from vb_probe.results.records import frame_to_csv_rows

    return (frame_to_csv_rows(queries) if queries is not None else None), maps
# region mass is Figure 3's dot size; Figure 4 has no use for it (and it is the one float a batch size can move)
SYNTACTIC_COLUMNS = ["relation", "direction", *(c for c in ENTITY_COLUMNS if c != "region_mass")]


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
    # what a family's own tally adds (decoders: "localization", the fixed-position baseline and the heads chosen
    # without boxes): block name → the block, each at the top of run.json under its name
    extras: dict[str, dict] = field(default_factory=dict)
    queries: object = None  # a pandas table, one row a query (per_query), or None; see vb_probe.records
    maps: dict | None = None  # the maps of the heads asked for, with their cells (maps.npz), or None

    FILES = ("entity_grounding.csv", "run.json", "entity_grounding.png")

    @property
    def rule(self) -> str:
        """The rule of the grid: ``iou`` (regions, the paper's) or ``pointing`` (patches): the model family's."""
        return str(self.provenance.get("rule", "iou"))

    @property
    def token_kind(self) -> str:
        """What the image tokens are: regions, patches, image tokens (the family's; runs of earlier versions: told by
        the rule)."""
        return str(self.provenance.get("token_kind") or ("patches" if self.rule == "pointing" else "regions"))

    @property
    def other_rule_name(self) -> str:
        return "pointing" if self.rule == "iou" else "iou"

    def run_json(self) -> dict:
        summary = self.summary()
        return {"probe": "entity_grounding", "n_phrases": self.n_phrases, "n_scored": self.n,
                "skipped": dict(sorted(self.skipped.items())), "baselines": self.baselines,
                "best_head": summary["best_head"], "per_layer_best": summary["per_layer_best"],
                "selected_head": selected_dict(self.selected_head), "control_random_init": control_dict(self.control),
                "other_rule": other_rule_dict(self.other_rule, self.other_rule_name),
                "control_permuted_geometry": control_dict(self.permuted), "split": self.split,
                **self.extras, **({"extras": sorted(self.extras)} if self.extras else {}), **self.provenance}

    def plot(self, ax=None):
        """Figure 3, shown at once in a notebook (``fig = result.plot()`` too); returns the figure."""
        from vb_probe.viz.notebook import present

        return present(self.figure(ax)) if ax is None else self.figure(ax)

    def figure(self, ax=None):
        """Figure 3 (the layer × head grid, with the head chosen on another split and the control's best head);
        returns the figure."""
        from vb_probe.viz.head_grid import plot_head_grid

        selected = self.selected_head
        control = self.control.best_head() if self.control is not None else None
        return plot_head_grid(self.accuracy, self.region_mass, self.baselines, rule=self.rule,
                              token_kind=self.token_kind,
                              title=f"Entity grounding, {self.split} split ({self.n} phrases)",
                              selected=(selected.layer, selected.head, selected.selected_on) if selected else None,
                              control_best=(control.label, control.accuracy) if control else None, ax=ax)

    def save(self, folder: str | Path) -> Path:
        """``entity_grounding.csv``, ``run.json`` and ``entity_grounding.png``, replaced together."""
        return save_run(Path(folder), "entity_grounding", ENTITY_COLUMNS, self.rows(), self.figure(), self.run_json(),
                        *_record_files(self.queries, self.maps))

    @classmethod
    def load(cls, folder: str | Path) -> "GroundingResult":
        """Read a folder written by :meth:`save` (or by ``vb-probe entity-grounding``) back, equal."""
        folder = Path(folder)
        folder = folder.parent if folder.is_file() else folder
        run = read_run(folder, "entity_grounding")
        known = {"probe", "n_phrases", "n_scored", "skipped", "baselines", "best_head", "per_layer_best",
                 "selected_head", "control_random_init", "split", "other_rule", "control_permuted_geometry",
                 "extras", *run.get("extras", [])}
        with fields_of(folder / "run.json"):
            scores = HeadScores.from_rows(read_table(folder / "entity_grounding.csv"), dict(run.get("baselines", {})),
                                          str(folder / "entity_grounding.csv"))
            result = cls(scores.n_correct, scores.n, scores.region_mass, scores.baselines, split=str(run["split"]),
                         n_phrases=int(run["n_phrases"]), skipped={str(k): int(v) for k, v in run["skipped"].items()},
                         selected_head=selected_from(run.get("selected_head")),
                         control=control_from(run.get("control_random_init")),
                         provenance={k: v for k, v in run.items() if k not in known},
                         other_rule=other_rule_from(run.get("other_rule")),
                         permuted=control_from(run.get("control_permuted_geometry")),
                         extras={str(k): run[k] for k in run.get("extras", [])}, queries=read_queries(folder),
                         maps=read_maps_file(folder))
        if result.n_phrases != result.n + sum(result.skipped.values()):
            raise DataError(f"{folder / 'run.json'}: n_phrases {result.n_phrases} is not the {result.n} scored plus "
                            f"{sum(result.skipped.values())} skipped; the files do not belong together, run the probe again")
        return result

    def equals(self, other: "GroundingResult") -> bool:
        return (HeadScores.equals(self, other) and self.split == other.split and self.n_phrases == other.n_phrases
                and self.skipped == other.skipped and self.selected_head == other.selected_head
                and (self.control == other.control if self.control is not None else other.control is None)
                and self.provenance == other.provenance
                and same_scores(self.other_rule, other.other_rule) and same_scores(self.permuted, other.permuted)
                and self.extras == other.extras)

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
    queries: object = None  # a pandas table, one row a query (per_query), or None; see vb_probe.records
    maps: dict | None = None  # the maps of the heads asked for, with their cells (maps.npz), or None

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
        """Figure 4, shown at once in a notebook (``fig = result.plot()`` too); returns the figure."""
        from vb_probe.viz.notebook import present

        return present(self.figure(relations))

    def figure(self, relations: Sequence[str] | None = None):
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
                         "selected_head": selected_dict(self.selected.get(key))}
                if key in self.control:
                    entry["control_random_init"] = control_dict(self.control[key])
                relations[relation][direction] = entry
        return {"probe": "syntactic", "relations": relations, "arcs_seen": self.arcs_seen,
                "skipped": self.skipped, "parser": self.parser, "split": self.split, **self.provenance}

    def save(self, folder: str | Path) -> Path:
        """``syntactic.csv``, ``run.json`` and ``syntactic.png`` (Figure 4), replaced together."""
        return save_run(Path(folder), "syntactic", SYNTACTIC_COLUMNS, self.rows(), self.figure(), self.run_json(),
                        *_record_files(self.queries, self.maps))

    @classmethod
    def load(cls, folder: str | Path) -> "SyntacticResult":
        folder = Path(folder)
        folder = folder.parent if folder.is_file() else folder
        run = read_run(folder, "syntactic")
        rows = read_table(folder / "syntactic.csv")
        with fields_of(folder / "run.json"):
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
                selected[key] = selected_from(info["selected_head"])
            if info.get("control_random_init"):
                control[key] = control_from(info["control_random_init"])
        known = {"probe", "relations", "arcs_seen", "skipped", "parser", "split"}
        return cls(list(run["relations"]), scores, run["skipped"], run["split"], run["arcs_seen"], run["parser"],
                   selected, control, {k: v for k, v in run.items() if k not in known}, read_queries(folder),
                   read_maps_file(folder))

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
