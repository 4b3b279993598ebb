"""Figure 3: entity-grounding accuracy of every head on a layer × head grid."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vb_probe.heads import head_label
from vb_probe.viz.text import plain

SMALL_MASS = 0.2  # the paper draws heads with under 20% of their attention on regions as small dots
BASELINE_STYLES = {"highest_confidence": ("darkorange", "highest-confidence {unit}"), "random": ("dimgrey", "random {unit}"),
                   "control": ("tab:purple", "random-init control, best head")}
RULE_TEXT = {"iou": "IoU ≥ 0.5 with a gold box", "pointing": "pointing rule: the {unit}'s centre in a gold box"}


def singular(kind: str) -> str:
    """``regions`` → region, ``patches`` → patch, ``image tokens`` → image token: one image token of a kind."""
    return kind[:-2] if kind.endswith("ches") else kind[:-1] if kind.endswith("s") else kind
LEGEND_MARKER = 10  # points: the legend's rings and squares, small enough that rows never overlap


def _dot_size(mass: np.ndarray) -> np.ndarray:
    return np.where(mass >= SMALL_MASS, 40 + 180 * mass, 12)


def _spread(values: list[float], gap: float) -> list[float]:
    """Label positions for ``values`` (ascending order kept), at least ``gap`` apart, as close to them as may be."""
    placed: list[float] = []
    for value in values:
        placed.append(max(value, placed[-1] + gap) if placed else value)
    return placed


def plot_head_grid(
    accuracy: np.ndarray,
    region_mass: np.ndarray | None,
    baselines: dict[str, float | None] | None = None,
    *,
    title: str = "Entity grounding per head",
    selected: tuple[int, int, str] | None = None,
    control_best: tuple[str, float] | None = None,
    value_label: str | None = None,
    rule: str = "iou",
    token_kind: str = "regions",
    ax=None,
) -> Figure:
    """``accuracy`` and ``region_mass`` [layer, head] in [0, 1] (mass None: all dots one size). Colour = accuracy,
    dot size = region mass (a key below); the baselines are labelled on the colour bar; a red ring marks the best
    head, a blue square the head chosen on another split (``selected`` = layer, head, split); ``control_best`` =
    (label, accuracy) of a random-initialised model's best head; ``value_label`` names what the colour shows
    (the colour bar's label; default: accuracy under the run's ``rule``). ``token_kind`` names the image tokens
    (regions, patches, image tokens) in every label. Without ``region_mass`` there is no dot-size key. Returns the
    figure."""
    unit = singular(token_kind)
    value_label = value_label or f"accuracy ({RULE_TEXT.get(rule, rule).format(unit=unit)})"
    accuracy = np.asarray(accuracy, float)
    mass = np.ones_like(accuracy) if region_mass is None else np.asarray(region_mass, float)
    layers, heads = accuracy.shape
    if ax is None:
        # never narrower than the two keys below the grid side by side, nor lower than the colour bar's label: a small
        # grid's keys must not overlap, nor its label leave the figure
        fig = Figure(figsize=(max(2.6 + 0.5 * heads, 8.2), max(2.4 + 0.42 * layers, 4.8)), dpi=120,
                     layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    shown = {k: v for k, v in (baselines or {}).items() if v is not None and k in BASELINE_STYLES}
    if control_best is not None:  # the control sits on the colour bar beside the baselines it is compared with
        shown["control"] = control_best[1]
    top = max([float(np.nanmax(accuracy))] + list(shown.values()) + [1e-6])
    hh, ll = np.meshgrid(np.arange(heads), np.arange(layers))
    points = ax.scatter(hh.ravel(), ll.ravel(), c=accuracy.ravel(), s=_dot_size(mass).ravel(), cmap="viridis",
                        vmin=0.0, vmax=top, edgecolors="black", linewidths=0.3)
    best = np.unravel_index(np.nanargmax(accuracy), accuracy.shape)
    handles = [Line2D([], [], marker="o", ls="", ms=LEGEND_MARKER, mfc="none", mec="red", mew=1.6,
                      label=f"best head {head_label(*best)} {accuracy[best]:.3f} (chosen on these data)")]
    ax.scatter([best[1]], [best[0]], s=340, facecolors="none", edgecolors="red", linewidths=1.6)
    if selected is not None:
        layer, head, split = selected
        ax.scatter([head], [layer], s=420, marker="s", facecolors="none", edgecolors="tab:blue", linewidths=1.6)
        handles.append(Line2D([], [], marker="s", ls="", ms=LEGEND_MARKER, mfc="none", mec="tab:blue", mew=1.6,
                              label=f"chosen on {plain(split)}: {head_label(layer, head)} {accuracy[layer, head]:.3f} here"))
    if control_best is not None:
        handles.append(Line2D([], [], color=BASELINE_STYLES["control"][0], lw=2.5,
                              label=f"random-init control: best {control_best[0]} {control_best[1]:.3f} (on the bar)"))
    sizes = [Line2D([], [], marker="o", ls="", mfc="lightgrey", mec="black", mew=0.3,
                    ms=np.sqrt(_dot_size(np.array(value))), label=label)
             for value, label in ((0.1, f"<{SMALL_MASS:.0%}"), (0.2, "20%"), (0.6, "60%"), (1.0, "100%"))]
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xlim(-0.7, heads - 0.3)
    ax.set_ylim(layers - 0.3, -0.7)
    ax.set_title(plain(title), fontsize=11)
    bar = fig.colorbar(points, ax=ax, fraction=0.05, pad=0.02)
    import textwrap

    bar.set_label(textwrap.fill(value_label, max(24, int((fig.get_figheight() - 1.8) * 9))))  # on the bar's height
    bar.ax.yaxis.set_ticks_position("left")
    bar.ax.yaxis.set_label_position("left")
    names = sorted(shown, key=shown.get)
    for name, y in zip(names, _spread([shown[n] for n in names], gap=0.07 * top)):
        colour, label = BASELINE_STYLES[name][0], BASELINE_STYLES[name][1].format(unit=unit)
        bar.ax.axhline(shown[name], color=colour, linewidth=2.5)
        bar.ax.annotate(f"{label}\n{shown[name]:.3f}", xy=(1.0, shown[name]), xytext=(1.5, y),
                        textcoords=("axes fraction", "data"), xycoords=("axes fraction", "data"), fontsize=8,
                        color=colour, va="center", arrowprops=dict(arrowstyle="-", color=colour, lw=0.8))
    fig.legend(handles=handles, loc="outside lower left", ncol=1, fontsize=8, frameon=False, labelspacing=1.0)
    if region_mass is not None:
        fig.legend(handles=sizes, loc="outside lower right", ncol=4, fontsize=8, frameon=False, columnspacing=0.8,
                   title=f"dot size: attention on {token_kind}", title_fontsize=8)
    return fig
