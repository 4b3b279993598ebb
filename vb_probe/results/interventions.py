"""The typed results of the interventions: which heads an ablation takes from a score table
(:func:`top_heads_from_csv`), integrated-gradients agreement (:class:`AttributionResult`) and the causal check
(:class:`CausalResult`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vb_probe.atomic import atomic_files
from vb_probe.errors import DataError
from vb_probe.heads import Head
from vb_probe.results.files import check_scores_shape, csv_text, fields_of, read_table
from vb_probe.results.scores import DIGITS


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
        """The agreement grid, shown at once in a notebook; returns the figure."""
        from vb_probe.viz.notebook import present

        return present(self.figure(ax)) if ax is None else self.figure(ax)

    def figure(self, ax=None):
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
        with fields_of(path):
            summary = json.loads(path.read_text(encoding="utf-8"))
            layers, heads = 1 + max(int(r["layer"]) for r in rows), 1 + max(int(r["head"]) for r in rows)
            n_agree = np.zeros((layers, heads), np.int64)
            for r in rows:
                n_agree[int(r["layer"]), int(r["head"])] = int(r["n_agree"])
            return cls(n_agree, int(summary["n"]), summary)


@dataclass(eq=False)
class CausalResult:
    """The causal check: the family's measure (masked entity-word accuracy, or a decoder's caption log-probability:
    ``summary["measure"]``) with nothing, the top-k grounding heads, or k random heads ablated, with a bootstrap
    interval, an empirical p-value and a verdict (``causal.json``)."""

    summary: dict

    FILES = ("causal.json",)

    def __getitem__(self, key: str):
        return self.summary[key]

    def plot(self, ax=None):
        """The ablation's drops, shown at once in a notebook; returns the figure."""
        from vb_probe.viz.notebook import present

        return present(self.figure(ax)) if ax is None else self.figure(ax)

    def figure(self, ax=None):
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
        from vb_probe.metrics.causal import MEASURES

        measure = s.get("measure", "accuracy")  # files written before decoders had a causal check: accuracy
        ax.set_ylabel(f"drop in {MEASURES[measure]}", wrap=True)
        items = "phrases" if measure == "accuracy" else "captions"
        ax.set_title(f"Ablation on {s['n']} {items}: p = {s['p_value']:.3f}", fontsize=10)
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
