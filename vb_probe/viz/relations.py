"""Figure 4: per dependency relation, each layer's best head against the baseline and a random-init control."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from vb_probe.viz.text import plain

DIRECTION_STYLE = {"head_to_dependent": ("tab:blue", "head → dependent"),
                   "dependent_to_head": ("tab:green", "dependent → head")}


MIN_N = 20  # fewer arcs than this: the direction is drawn in grey, its accuracies too noisy to read


def plot_relation_panels(panels: list[dict], *, title: str = "Syntactic grounding", min_n: int = MIN_N) -> Figure:
    """One panel per relation, side by side. ``panels[i]`` = ``{"relation": str, "directions": {direction: d}}``
    with ``d`` = ``{"n", "layers", "accuracy", "low", "high" (the per-layer best head and its 95% interval),
    "baseline" (highest-confidence, or None), "control" (per-layer best of the random-init control, or None)}``;
    a direction with ``n == 0`` is said in the panel, not dropped; one with fewer than ``min_n`` arcs is drawn in
    grey with its n, and leaves the y-axis to the others. The key lists the control only when one was run.
    Returns the figure."""
    import textwrap

    from matplotlib.lines import Line2D

    fig = Figure(figsize=(max(3.6 * len(panels) + 0.6, 7.5), 4.3), dpi=120, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    values = [v for p in panels for d in p["directions"].values() if d["n"] >= min_n
              for v in [*d["low"], *d["high"], d["baseline"] or 0, *(d["control"] or [])]] or \
        [v for p in panels for d in p["directions"].values() if d["n"] for v in [*d["low"], *d["high"]]]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    margin = 0.08 * (high - low or 1)
    any_control = False
    for ax, panel in zip(axes, panels):
        notes = []
        for direction, d in panel["directions"].items():
            colour, label = DIRECTION_STYLE.get(direction, ("tab:purple", direction))
            if not d["n"]:
                notes.append(f"{label}: no arc reaches a boxed phrase")
                continue
            layers = np.asarray(d["layers"])
            if d["n"] < min_n:  # too few arcs: shown, greyed, not on the same footing
                ax.plot(layers, d["accuracy"], marker="o", ms=2.5, color="silver", lw=0.8,
                        label=f"{label} (n={d['n']}, too few to read)")
                notes.append(f"{label}: only {d['n']} arc{'s' if d['n'] != 1 else ''} (fewer than {min_n})")
                continue
            ax.plot(layers, d["accuracy"], marker="o", ms=3.5, color=colour, label=f"{label} (n={d['n']})")
            ax.fill_between(layers, d["low"], d["high"], color=colour, alpha=0.15, linewidth=0)
            if d["baseline"] is not None:
                ax.axhline(d["baseline"], color=colour, linestyle="--", linewidth=1)
            if d["control"] is not None:
                any_control = True
                ax.plot(layers, d["control"], color=colour, linestyle=":", linewidth=1.2)
        for number, note in enumerate(notes):
            ax.text(0.02, 0.02 + 0.07 * number, note, transform=ax.transAxes, fontsize=7, color="dimgrey")
        ax.set_title(plain(panel["relation"]), fontsize=11)
        ax.set_xlabel("layer")
        ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy of the layer's best head")
    key = [Line2D([], [], color="black", marker="o", ms=3.5, label="best head of the layer (band: 95% interval)"),
           Line2D([], [], color="black", ls="--", lw=1, label="highest-confidence region")]
    if any_control:
        key.append(Line2D([], [], color="black", ls=":", lw=1.2, label="random-init control, best head of the layer"))
    explanation = ("head → dependent: the head word's attention lands on its dependent's phrase region (e.g. a verb "
                   "on its subject's); dependent → head: the reverse")
    width = int(fig.get_figwidth() * 14)  # characters that fit the figure's width at the title's size
    fig.legend(handles=key, loc="outside lower center", ncol=len(key), fontsize=8, frameon=False,
               title=textwrap.fill(explanation, width), title_fontsize=8)
    fig.suptitle(plain(title), fontsize=12)
    return fig
