"""Figure 3: entity-grounding accuracy of every head on a layer × head grid."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

SMALL_MASS = 0.2  # the paper draws heads with under 20% of their attention on regions as small dots


def plot_head_grid(
    accuracy: np.ndarray,
    region_mass: np.ndarray,
    baselines: dict[str, float | None] | None = None,
    *,
    title: str = "Entity grounding per head",
    ax=None,
) -> Figure:
    """``accuracy`` and ``region_mass`` [layer, head] in [0, 1]. Colour = accuracy; dot size = region mass
    (under 20% drawn small); baselines marked on the colour bar."""
    accuracy, region_mass = np.asarray(accuracy, float), np.asarray(region_mass, float)
    layers, heads = accuracy.shape
    if ax is None:
        fig = Figure(figsize=(1.0 + 0.45 * heads, 1.0 + 0.42 * layers), dpi=120)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    hh, ll = np.meshgrid(np.arange(heads), np.arange(layers))
    sizes = np.where(region_mass >= SMALL_MASS, 40 + 180 * region_mass, 12)
    shown = {k: v for k, v in (baselines or {}).items() if v is not None}
    # colour scale up to the best head (or a baseline above it); the oracle is named in the title instead
    top = max([float(np.nanmax(accuracy))] + [v for k, v in shown.items() if k != "oracle"] + [1e-6])
    points = ax.scatter(hh.ravel(), ll.ravel(), c=accuracy.ravel(), s=sizes.ravel(), cmap="viridis",
                        vmin=0.0, vmax=top, edgecolors="black", linewidths=0.3)
    best = np.unravel_index(np.nanargmax(accuracy), accuracy.shape)
    ax.scatter([best[1]], [best[0]], s=340, facecolors="none", edgecolors="red", linewidths=1.5)
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xlim(-0.7, heads - 0.3)
    ax.set_ylim(layers - 0.3, -0.7)
    styles = {"highest_confidence": ("darkorange", "highest-confidence"), "random": ("grey", "random"),
              "oracle": ("black", "oracle")}
    baseline_text = ", ".join(f"{styles[k][1]} {v:.3f}" for k, v in shown.items() if k in styles)
    ax.set_title(f"{title}\nbest L{best[0]}H{best[1]} = {accuracy[best]:.3f} (red ring); small dots: <20% attention "
                 f"on regions\nbaselines: {baseline_text} (lines on the colour bar)", fontsize=8)
    bar = fig.colorbar(points, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("accuracy")
    for name, value in shown.items():
        if name in styles and value <= top:
            bar.ax.axhline(value, color=styles[name][0], linewidth=2.5)
    fig.tight_layout()
    return fig
