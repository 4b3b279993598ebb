"""Tidy score tables (one row per head) and the ``run.json`` sidecar, written atomically.

Numbers are written with fixed precision so the same inputs give byte-identical files.
"""

from __future__ import annotations

import csv
import io
import platform
from importlib import metadata
from pathlib import Path

from vb_probe.atomic import atomic_files, atomic_open
from vb_probe.errors import VbProbeError
from vb_probe.metrics.grounding import HeadCounts, wilson_interval
from vb_probe.pipeline import DIRECTIONS, ENTITY, PROTOCOL_CHOICES, ProbeResults, SplitResult, config_dict

ENTITY_COLUMNS = ["layer", "head", "n", "n_correct", "accuracy", "region_mass", "ci95_low", "ci95_high"]
SYNTACTIC_COLUMNS = ["relation", "direction", "layer", "head", "n", "n_correct", "accuracy"]


def _f(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("vb-probe", "torch", "transformers", "tokenizers", "numpy", "spacy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def head_rows(counts: HeadCounts) -> list[dict]:
    acc = counts.accuracy()
    mass = counts.region_mass / max(counts.n, 1)
    rows = []
    for layer in range(counts.layers):
        for head in range(counts.heads):
            low, high = wilson_interval(int(counts.n_correct[layer, head]), counts.n)
            rows.append({"layer": layer, "head": head, "n": counts.n, "n_correct": int(counts.n_correct[layer, head]),
                         "accuracy": f"{acc[layer, head]:.6f}", "region_mass": f"{mass[layer, head]:.6f}",
                         "ci95_low": f"{low:.6f}", "ci95_high": f"{high:.6f}"})
    return rows


def csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(csv_text(columns, rows))


def _summary_of(counts: HeadCounts) -> dict:
    return {"n": counts.n, "best_head": _rounded(counts.best_head()),
            "per_layer_best": [_rounded(p) for p in counts.per_layer_best()],
            "baselines": {k: _f(v) for k, v in counts.baseline_accuracy().items()}}


def _rounded(entry: dict) -> dict:
    return {k: (_f(v) if k == "accuracy" else v) for k, v in entry.items()}


def _selected(main: HeadCounts, select: HeadCounts | None, split: str | None) -> dict | None:
    """Head chosen on another split (unbiased), scored on the main split."""
    if select is None or select.n == 0:
        return None
    chosen = select.best_head()
    return {"selected_on": split, "layer": chosen["layer"], "head": chosen["head"],
            "accuracy_on_selection_split": _f(chosen["accuracy"]),
            "accuracy": _f(float(main.accuracy()[chosen["layer"], chosen["head"]]))}


def _common(results: ProbeResults) -> dict:
    cfg = results.config
    return {"split": cfg.split, "n_images": results.main.n_images, "n_captions": results.main.n_captions,
            "checkpoint": results.checkpoint, "mask": cfg.mask, "precision": cfg.precision, "visual_token_type": results.visual_token_type,
            "protocol": PROTOCOL_CHOICES, "versions": versions(), "wall_time_s": round(results.wall_time_s, 2),
            "notes": results.notes, "config": config_dict(cfg)}


def entity_summary(results: ProbeResults) -> dict:
    """The run.json content of an entity-grounding run."""
    main: SplitResult = results.main
    counts = main.counts.get(ENTITY)
    skipped = dict(sorted(main.skipped.get(ENTITY, {}).items()))
    n_phrases = main.n_units.get("phrases", 0)
    if counts is None or counts.n == 0:
        raise VbProbeError(f"no phrase of split {results.config.split!r} could be scored ({n_phrases} phrases, "
                           f"skipped: {skipped or 'none'}); check the split, the annotations and the features")
    assert n_phrases == counts.n + sum(skipped.values()), "every phrase is scored or skipped"
    summary = _summary_of(counts)
    out = {"probe": "entity_grounding", "n_phrases": n_phrases, "n_scored": counts.n, "skipped": skipped,
           "baselines": summary["baselines"], "best_head": summary["best_head"],
           "per_layer_best": summary["per_layer_best"],
           "selected_head": _selected(counts, results.select.counts.get(ENTITY) if results.select else None,
                                      results.config.select_on),
           "control_random_init": None}
    if results.control is not None and ENTITY in results.control.counts:
        control = _summary_of(results.control.counts[ENTITY])
        out["control_random_init"] = {"best_head": control["best_head"], "per_layer_best": control["per_layer_best"]}
    out.update(_common(results))
    return out


def write_entity_grounding(results: ProbeResults, out: Path) -> dict:
    """entity_grounding.csv, run.json and entity_grounding.png into ``out``; returns the run.json dict."""
    from vb_probe.viz.heads import plot_head_grid

    summary = entity_summary(results)
    counts = results.main.counts[ENTITY]
    mass = (counts.region_mass / max(counts.n, 1)).numpy()
    fig = plot_head_grid(counts.accuracy().numpy(), mass, summary["baselines"],
                         title=f"Entity grounding, {results.config.split} split (n={counts.n})")
    with atomic_files(out) as staged:  # the run's files are replaced together or not at all
        staged.text("entity_grounding.csv", csv_text(ENTITY_COLUMNS, head_rows(counts)))
        staged.figure("entity_grounding.png", fig)
        staged.json("run.json", summary)
    return summary


def syntactic_summary(results: ProbeResults) -> dict:
    main = results.main
    cfg = results.config
    present = sorted({g.split("/")[0] for g in list(main.counts) + list(main.skipped) if g != ENTITY})
    wanted = present if "all" in cfg.relations else list(cfg.relations)
    unknown = [r for r in wanted if r not in present]
    if unknown:
        raise VbProbeError(f"relation {', '.join(unknown)} does not occur in the parses of split {cfg.split!r}; "
                           f"relations present: {', '.join(present) or 'none'}")
    relations: dict[str, dict] = {}
    skipped: dict[str, dict] = {}
    for relation in wanted:
        relations[relation] = {}
        for direction in DIRECTIONS:
            group = f"{relation}/{direction}"
            counts = main.counts.get(group)
            skipped[group] = dict(sorted(main.skipped.get(group, {}).items()))
            if counts is None:
                relations[relation][direction] = {"n": 0, "highest_confidence": None, "random": None,
                                                  "oracle": None, "best_head": None, "per_layer_best": []}
                continue
            summary = _summary_of(counts)
            relations[relation][direction] = {
                "n": counts.n, **summary["baselines"], "best_head": summary["best_head"],
                "per_layer_best": summary["per_layer_best"],
                "selected_head": _selected(counts, results.select.counts.get(group) if results.select else None,
                                           cfg.select_on),
            }
            if results.control is not None and group in results.control.counts:
                relations[relation][direction]["control_random_init_best"] = _rounded(
                    results.control.counts[group].best_head())
    out = {"probe": "syntactic", "relations": relations, "arcs_seen": main.n_units.get("arcs", 0),
           "skipped": skipped, "parser": results.parser}
    out.update(_common(results))
    return out


def write_syntactic(results: ProbeResults, out: Path) -> dict:
    """syntactic.csv, run.json and syntactic_<relation>.png into ``out``; returns the run.json dict."""
    from vb_probe.viz.relations import plot_relation_curves

    summary = syntactic_summary(results)
    rows = []
    with atomic_files(out) as staged:  # the run's files are replaced together or not at all
        for relation, per_direction in summary["relations"].items():
            for direction in DIRECTIONS:
                counts = results.main.counts.get(f"{relation}/{direction}")
                if counts is None:
                    continue
                for row in head_rows(counts):
                    rows.append({"relation": relation, "direction": direction, **row})
            staged.figure(f"syntactic_{relation}.png", plot_relation_curves(relation, per_direction))
        staged.text("syntactic.csv", csv_text(SYNTACTIC_COLUMNS, rows))
        staged.json("run.json", summary)
    return summary


def write_attribution(result: dict, out: Path) -> dict:
    """``attribution_heads.csv`` (per head: how often its argmax region is the top-attributed one) and
    ``attribution.json`` (the rest of :func:`vb_probe.interventions.attribute`'s result); returns the latter."""
    agreement, n_agree = result["agreement"], result["n_agree"]
    summary = {k: v for k, v in result.items() if k not in ("agreement", "n_agree")}
    with atomic_files(out) as staged:
        staged.text("attribution_heads.csv", csv_text(
            ["layer", "head", "n", "n_agree", "agreement"],
            [{"layer": l, "head": h, "n": result["n"], "n_agree": int(n_agree[l, h]), "agreement": f"{agreement[l, h]:.6f}"}
             for l in range(agreement.shape[0]) for h in range(agreement.shape[1])]))
        staged.json("attribution.json", summary)
    return summary


def format_entity_summary(summary: dict) -> str:
    b = summary["baselines"]
    hc = "n/a (features carry no confidence)" if b["highest_confidence"] is None else f"{b['highest_confidence']:.3f}"
    lines = [
        f"entity grounding on {summary['split']}: {summary['n_scored']} of {summary['n_phrases']} phrases scored "
        f"({summary['n_images']} images); skipped {summary['skipped'] or 'none'}",
        f"best head L{summary['best_head']['layer']}H{summary['best_head']['head']}: "
        f"{summary['best_head']['accuracy']:.3f}   baselines: highest-confidence {hc}, random {b['random']:.3f}, "
        f"oracle {b['oracle']:.3f}",
        "per-layer best: " + "  ".join(f"L{p['layer']}H{p['head']}={p['accuracy']:.2f}" for p in summary["per_layer_best"]),
    ]
    if summary.get("selected_head"):
        s = summary["selected_head"]
        lines.append(f"head chosen on {s['selected_on']}: L{s['layer']}H{s['head']} scores {s['accuracy']:.3f} here")
    if summary.get("control_random_init"):
        c = summary["control_random_init"]["best_head"]
        lines.append(f"control, random-init model of the same shape: best head L{c['layer']}H{c['head']} {c['accuracy']:.3f}")
    return "\n".join(lines)


def format_syntactic_summary(summary: dict) -> str:
    lines = [f"syntactic grounding on {summary['split']} ({summary['arcs_seen']} arcs of the chosen relations; "
             f"parser {summary['parser']})"]
    for relation, per_direction in summary["relations"].items():
        for direction, info in per_direction.items():
            if not info["n"]:
                lines.append(f"  {relation:8s} {direction:18s} n=0 (skipped: {summary['skipped'][f'{relation}/{direction}']})")
                continue
            best = info["best_head"]
            hc = "n/a" if info["highest_confidence"] is None else f"{info['highest_confidence']:.3f}"
            lines.append(f"  {relation:8s} {direction:18s} n={info['n']:5d} best L{best['layer']}H{best['head']} "
                         f"{best['accuracy']:.3f}  highest-confidence {hc}")
    return "\n".join(lines)
