"""Figure 4: per layer, the best head's accuracy on a dependency relation against the baseline."""

from __future__ import annotations

from matplotlib.figure import Figure


def plot_relation_curves(
    relation: str,
    per_direction: dict[str, dict],
    *,
    ax=None,
) -> Figure:
    """``per_direction[direction]`` = ``{"per_layer_best": [{layer, head, accuracy}…], "highest_confidence": x,
    "n": n}``. One solid line per direction; its baseline dashed in the same colour."""
    if ax is None:
        fig = Figure(figsize=(6.0, 3.6), dpi=120)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    colours = {"head_to_dependent": "tab:blue", "dependent_to_head": "tab:green"}
    for direction, info in per_direction.items():
        colour = colours.get(direction, "tab:purple")
        layers = [p["layer"] for p in info["per_layer_best"]]
        acc = [p["accuracy"] for p in info["per_layer_best"]]
        if not layers:
            continue
        ax.plot(layers, acc, marker="o", color=colour, label=f"{direction} best head (n={info['n']})")
        if info.get("highest_confidence") is not None:
            ax.axhline(info["highest_confidence"], color=colour, linestyle="--", linewidth=1,
                       label=f"{direction} highest-confidence baseline")
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy of the layer's best head")
    ax.set_ylim(0, 1)
    ax.set_title(f"Syntactic grounding: {relation}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no arcs of this relation reach a phrase with boxes", ha="center", transform=ax.transAxes)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
