"""Tables and text: CSV writing, the package versions run.json records, and the CLI's summaries of typed results.
The score tables themselves are written by :mod:`vb_probe.results`.

Numbers are written with fixed precision so the same inputs give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from vb_probe.atomic import atomic_open
from vb_probe.metrics.intervals import shown
from vb_probe.queries import DIRECTIONS
from vb_probe.results import GroundingResult, SyntacticResult, csv_text, versions

__all__ = ["csv_text", "versions", "write_csv", "format_entity_summary", "format_syntactic_summary"]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(csv_text(columns, rows))


def format_entity_summary(result: GroundingResult, extra_lines: list[str] = ()) -> str:
    """The console summary of an entity-grounding result; ``extra_lines``: what the model's family adds for its
    own blocks (:meth:`~vb_probe.families.base.FamilyBase.summary_lines`)."""
    b = result.baselines
    hc = "n/a (no detector confidences)" if b["highest_confidence"] is None else f"{b['highest_confidence']:.3f}"
    best = result.best_head()
    lines = [
        f"entity grounding on {result.split}: {result.n} of {result.n_phrases} phrases scored "
        f"({result.provenance.get('n_images')} images); skipped {result.skipped or 'none'}",
        f"best head {best.label}: {best.accuracy:.3f}   baselines: highest-confidence {hc}, random {b['random']:.3f}, "
        f"oracle {b['oracle']:.3f}",
        "per-layer best: " + "  ".join(f"{h.label}={h.accuracy:.2f}" for h in result.per_layer_best()),
    ]
    if result.other_rule is not None and result.other_rule.n:
        o, ob = result.other_rule.best_head(), result.other_rule.baselines
        lines.append(f"{result.other_rule_name} rule (beside the grid's {result.rule}): best head {o.label} "
                     f"{o.accuracy:.3f}, random {shown(ob.get('random'))}")
    if result.permuted is not None and result.permuted.n:
        p = result.permuted.best_head()
        lines.append(f"control, permuted geometry (each image's cells shuffled): best head {p.label} {p.accuracy:.3f}")
    if result.selected_head:
        s = result.selected_head
        lines.append(f"head chosen on {s.selected_on}: {s.label} scores {s.accuracy:.3f} here")
    if result.control is not None:
        c = result.control.best_head()
        lines.append(f"control, random-init model of the same shape: best head {c.label} {c.accuracy:.3f}")
    lines.extend(extra_lines)
    return "\n".join(lines)


SUMMARY_RELATIONS = 20  # relations the console summary lists; the CSV has every one


def format_syntactic_summary(result: SyntacticResult) -> str:
    lines = [f"syntactic grounding on {result.split} ({result.arcs_seen} arcs of the chosen relations; "
             f"parser {result.parser})"]
    shown = result.most_frequent(count=SUMMARY_RELATIONS)
    for relation in shown:
        for direction in DIRECTIONS:
            scores = result.scores.get((relation, direction))
            if scores is None:
                lines.append(f"  {relation:8s} {direction:18s} n=0 (skipped: {result.skipped[f'{relation}/{direction}']})")
                continue
            best = scores.best_head()
            hc = scores.baselines.get("highest_confidence")
            chosen = result.selected.get((relation, direction))
            chosen_text = f"chosen on {chosen.selected_on} {chosen.label} {chosen.accuracy:.3f}  " if chosen else ""
            lines.append(f"  {relation:8s} {direction:18s} n={scores.n:5d} {chosen_text}best {best.label} "
                         f"{best.accuracy:.3f}  highest-confidence {'n/a' if hc is None else f'{hc:.3f}'}")
    if len(shown) < len(result.relations):
        lines.append(f"  … and {len(result.relations) - len(shown):,} relations with fewer arcs (syntactic.csv has "
                     "every one)")
    return "\n".join(lines)
