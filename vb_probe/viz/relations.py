"""Figure 4: per dependency relation, each layer's best head against the baseline and a random-init control."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from vb_probe.viz.text import plain

DIRECTION_STYLE = {"head_to_dependent": ("tab:blue", "head → dependent"),
                   "dependent_to_head": ("tab:green", "dependent → head")}


def plot_relation_panels(panels: list[dict], *, title: str = "Syntactic grounding") -> Figure:
    """One panel per relation, side by side. ``panels[i]`` = ``{"relation": str, "directions": {direction: d}}``
    with ``d`` = ``{"n", "layers", "accuracy", "low", "high" (the per-layer best head and its 95% interval),
    "baseline" (highest-confidence, or None), "control" (per-layer best of the random-init control, or None)}``;
    a direction with ``n == 0`` is said in the panel, not dropped. The y-axis spans the data. Returns the figure."""
    fig = Figure(figsize=(3.6 * len(panels) + 0.6, 3.9), dpi=120, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    values = [v for p in panels for d in p["directions"].values() if d["n"]
              for v in [*d["low"], *d["high"], d["baseline"] or 0, *(d["control"] or [])]]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    margin = 0.08 * (high - low or 1)
    for ax, panel in zip(axes, panels):
        missing = []
        for direction, d in panel["directions"].items():
            colour, label = DIRECTION_STYLE.get(direction, ("tab:purple", direction))
            if not d["n"]:
                missing.append(label)
                continue
            layers = np.asarray(d["layers"])
            ax.plot(layers, d["accuracy"], marker="o", ms=3.5, color=colour, label=f"{label} (n={d['n']})")
            ax.fill_between(layers, d["low"], d["high"], color=colour, alpha=0.15, linewidth=0)
            if d["baseline"] is not None:
                ax.axhline(d["baseline"], color=colour, linestyle="--", linewidth=1)
            if d["control"] is not None:
                ax.plot(layers, d["control"], color=colour, linestyle=":", linewidth=1.2)
        for label in missing:
            ax.text(0.02, 0.02 + 0.07 * missing.index(label), f"{label}: no arc reaches a boxed phrase",
                    transform=ax.transAxes, fontsize=7, color="dimgrey")
        ax.set_title(plain(panel["relation"]), fontsize=11)
        ax.set_xlabel("layer")
        ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("accuracy of the layer's best head")
    from matplotlib.lines import Line2D

    key = [Line2D([], [], color="black", marker="o", ms=3.5, label="best head of the layer (band: 95% interval)"),
           Line2D([], [], color="black", ls="--", lw=1, label="highest-confidence region"),
           Line2D([], [], color="black", ls=":", lw=1.2, label="random-init control, best head of the layer")]
    fig.legend(handles=key, loc="outside lower center", ncol=3, fontsize=8, frameon=False,
               title="head → dependent: the head word's attention lands on its dependent's phrase region (e.g. a verb "
                     "on its subject's); dependent → head: the reverse", title_fontsize=8)
    fig.suptitle(plain(title), fontsize=12)
    return fig
