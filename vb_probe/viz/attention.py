"""Figures 1 and 5: which region each entity word attends to most, on the image, for one head per layer."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vb_probe.viz.text import plain

FUNCTION_WORDS = {"a", "an", "the", "two", "his", "her", "its", "their", "some"}  # not drawn: they carry no entity
# entity colours unlike the plain red, blue, green, yellow, black and white of common objects (and of the
# world's shapes) come first; every box also gets a white halo, so it stands out on any picture
PALETTE = ["#00bcd4", "#e377c2", "#bcbd22", "#8c564b", "#9467bd", "#ff7f0e", "#1f77b4", "#d62728"]


def _luminance(colour: str) -> float:
    """WCAG relative luminance of a ``#rrggbb`` colour."""
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def text_colour(background: str) -> str:
    """Black or white, whichever contrasts more with ``background``."""
    lum = _luminance(background)
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two colours (``#rrggbb``, or black / white)."""
    named = {"black": "#000000", "white": "#ffffff"}
    la, lb = sorted((_luminance(named.get(a, a)), _luminance(named.get(b, b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def _separate(texts: list, ax, renderer, tries: int = 30) -> None:
    """Place labels one by one where they overlap none placed before, measured on the drawn figure: at their own
    spot if free, else the nearest free spot a label's height below or above it, inside the picture."""
    low_edge, high_edge = sorted(ax.get_ylim())  # data y of the picture's top and bottom (the y-axis is inverted)
    placed = []
    for text in texts:
        x, y = text.get_position()
        box = text.get_window_extent(renderer)
        (_, a), (_, b) = ax.transData.inverted().transform([(0, box.y0), (0, box.y1)])
        tall = abs(a - b) + 1
        for k in range(tries):  # 0, +1, -1, +2, -2, … label heights
            shift = (k + 1) // 2 * tall * (1 if k % 2 else -1)
            candidate = y + shift
            if not low_edge + tall <= candidate <= high_edge:
                continue
            text.set_position((x, candidate))
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(text.get_window_extent(renderer))


def _label_positions(boxes: list[np.ndarray], texts: list[str], size: tuple[float, float]) -> list[tuple[float, float]]:
    """Top-left corners for the labels of ``boxes`` so that no two overlap: each starts at its box's top-left
    corner and moves down a line at a time past the labels placed before it (sizes estimated from the text)."""
    width, height = size
    line = 0.065 * height
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for box, text in zip(boxes, texts):
        w = (0.019 * len(text) + 0.02) * width
        x, y = float(min(box[0], width - w)), float(max(box[1], 0))
        while any(x < px + pw and px < x + w and y < py + line and py < y + line for px, py, pw, _ in placed):
            y += line
        placed.append((x, y, w, line))
        out.append((x, min(y, height - line)))
    return out


def plot_attention_on_image(
    image: np.ndarray | None,
    size: tuple[float, float],
    boxes: np.ndarray,
    words: list[str],
    word_groups: list[int | None],
    panels: list[dict],
    *,
    gold: dict[int, np.ndarray] | None = None,
    hits: dict[int, np.ndarray] | None = None,
    title: str = "",
    rule: str = "iou",
    token_kind: str | None = None,
) -> Figure:
    """``boxes`` [R, 4] the regions (or a patch model's cells: ``rule`` "pointing" says so in the key);
    ``word_groups[i]`` the entity of word i (None: not in a boxed phrase; an entity's words share a colour and a
    number); ``gold[entity]`` [n, 4] its gold boxes (dashed); ``hits[entity]`` [R] bool, which regions hit them
    (by ``rule``: IoU ≥ 0.5, or the pointing rule). ``panels``: dicts with ``layer``, ``head``, ``accuracy`` and
    ``choices`` (the attended region per word, -1 to leave it out). Only picked and gold boxes are drawn: solid
    when the pick hits gold, dotted when it misses. Returns a figure of up to 2×3 panels."""
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea

    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    width, height = size
    panel_height = 4.4 * height / width
    fig = Figure(figsize=(4.4 * cols, panel_height * rows + 1.5), dpi=120, layout="constrained")
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[panel_height] * rows + [0.55])
    groups = [g for g in dict.fromkeys(word_groups) if g is not None]
    colour_of = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    number_of = {g: i + 1 for i, g in enumerate(groups)}
    axes = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(n)]
    panel_texts: list[tuple] = []
    for ax, panel in zip(axes, panels):
        if image is not None:
            ax.imshow(image, extent=(0, width, height, 0))
        else:
            ax.add_patch(_rect((0, 0, width, height), "#f2f2f2", fill=True, lw=0))
        for group in groups:
            for box in (gold or {}).get(group, []):
                ax.add_patch(_rect(box, colour_of[group], lw=1.4, style="--"))
        picked: dict[tuple[int, int], list[str]] = {}  # (region, entity) → its words: one label per entity
        for word, group, region in zip(words, word_groups, panel["choices"]):
            if group is None or region < 0 or word.lower() in FUNCTION_WORDS:
                continue
            picked.setdefault((int(region), group), []).append(word)
        keys = list(picked)
        for (region, group) in keys:
            right = hits is not None and group in hits and bool(hits[group][region])
            ax.add_patch(_rect(boxes[region], colour_of[group], lw=2.4, style="-" if right else ":"))
        texts = [f"{number_of[g]} {' '.join(picked[(r, g)])}" for r, g in keys]
        corners = _label_positions([boxes[r] for r, _ in keys], texts, size)
        drawn = []
        for (region, group), text, (x, _) in zip(keys, texts, corners):
            # at the box's lower-left corner, inside it: a scene's own label sits at its top-left
            y = min(float(boxes[region][3]) - 2, height - 2)
            drawn.append(ax.text(x + 2, y, plain(text), fontsize=7, va="bottom", color=text_colour(colour_of[group]),
                                 bbox=dict(facecolor=colour_of[group], alpha=0.95, pad=1.2, linewidth=0)))
        panel_texts.append((ax, drawn))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        accuracy = panel.get("accuracy")
        ax.set_title(f"layer {panel['layer']}, head {panel['head']}" + (f" ({accuracy:.2f})" if accuracy is not None
                                                                       else ""), fontsize=9)
    caption = [TextArea(plain(word) + (f"$^{{{number_of[g]}}}$" if g is not None and
                                (i + 1 == len(words) or word_groups[i + 1] != g) else ""),
                        textprops=dict(color=colour_of.get(g, "black"), fontsize=10,
                                       weight="bold" if g is not None else "normal"))
               for i, (word, g) in enumerate(zip(words, word_groups))]
    from vb_probe.viz.head_grid import singular

    unit = singular(token_kind or ("patches" if rule == "pointing" else "regions"))
    hit = "its centre lies in a gold box" if rule == "pointing" else "IoU ≥ 0.5"
    key = [Line2D([], [], color="black", ls="--", lw=1.4, label="gold box of the entity"),
           Line2D([], [], color="black", ls="-", lw=2.4, label=f"most-attended {unit}: hits gold ({hit})"),
           Line2D([], [], color="black", ls=":", lw=2.4, label=f"most-attended {unit}: misses")]
    footer = fig.add_subplot(grid[rows, :])  # the caption, its entities numbered and coloured, then the key
    footer.set_axis_off()
    footer.add_artist(AnchoredOffsetbox(loc="upper center", child=HPacker(children=caption, pad=0, sep=4),
                                        frameon=False))
    footer.legend(handles=key, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(plain(title), fontsize=11)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a canvas to measure the labels on (any format can still be saved)
    fig.draw_without_rendering()  # the layout first: the labels are measured where they will be
    renderer = fig.canvas.get_renderer()
    for ax, drawn in panel_texts:  # measured, not estimated: labels of one panel never overlap
        ax.set_ylim(height, 0)
        _separate(drawn, ax, renderer)
    return fig


def _rect(box, colour, lw=1.0, alpha=1.0, fill=False, style="-"):
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    rect = Rectangle((x1, y1), x2 - x1, y2 - y1, fill=fill, edgecolor=colour if not fill else None,
                     facecolor=colour if fill else "none", linewidth=lw, alpha=alpha, linestyle=style)
    if not fill:  # a white halo: the box reads on any colour of the picture
        rect.set_path_effects([patheffects.withStroke(linewidth=lw + 2.2, foreground="white"), patheffects.Normal()])
    return rect
