"""Figures 1 and 5: which region each word attends to most, on the image, for one head per layer."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

FUNCTION_WORDS = {"a", "an", "the", "two", "his", "her", "its", "their", "some"}  # not drawn: they carry no entity
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"]


def plot_attention_on_image(
    image: np.ndarray | None,
    size: tuple[float, float],
    boxes: np.ndarray,
    words: list[str],
    word_groups: list[int | None],
    panels: list[dict],
    *,
    title: str = "",
) -> Figure:
    """``boxes`` [R, 4]; ``word_groups[i]`` the entity id of word i (None: not in a phrase; words of one
    entity share a colour). ``panels``: dicts with ``layer``, ``head``, ``accuracy`` and ``choices`` —
    the attended region index per word (-1 to leave the word out). Returns a figure of up to 2×3 panels."""
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    width, height = size
    fig = Figure(figsize=(4.6 * cols, 4.6 * rows * height / width + 1.2), dpi=110)
    groups = [g for g in dict.fromkeys(word_groups) if g is not None]
    colour_of = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    for index, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, index + 1)
        if image is not None:
            ax.imshow(image, extent=(0, width, height, 0))
        else:
            ax.add_patch(_rect((0, 0, width, height), "#f4f4f4", fill=True, lw=0))
        for box in boxes:
            ax.add_patch(_rect(box, "#999999", lw=0.4, alpha=0.5))
        labelled: dict[tuple[int, int], list[str]] = {}  # (region, entity) → its words: one label per entity
        for word, group, region in zip(words, word_groups, panel["choices"]):
            if group is None or region < 0 or word.lower() in FUNCTION_WORDS:
                continue
            labelled.setdefault((int(region), group), []).append(word)
            ax.add_patch(_rect(boxes[region], colour_of[group], lw=2.2))
        stacked: dict[int, int] = {}
        for (region, group), region_words in labelled.items():
            x1, y1 = boxes[region][:2]
            offset = stacked.get(region, 0)
            stacked[region] = offset + 1
            ax.text(x1 + 2, y1 + 2 + offset * 0.06 * height, " ".join(region_words), fontsize=7, va="top",
                    color="white", bbox=dict(facecolor=colour_of[group], alpha=0.85, pad=1, linewidth=0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        accuracy = panel.get("accuracy")
        ax.set_title(f"layer {panel['layer']}, head {panel['head']}"
                     + (f" ({accuracy:.2f})" if accuracy is not None else ""), fontsize=9)
    # the caption, entity words in their colour
    x = 0.02
    for word, group in zip(words, word_groups):
        fig.text(x, 0.015, word, fontsize=10, color=colour_of.get(group, "black"),
                        weight="bold" if group is not None else "normal")
        x += 0.011 * (len(word) + 1) * (3 / cols)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97), h_pad=2.0)
    return fig


def _rect(box, colour, lw=1.0, alpha=1.0, fill=False):
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=fill, edgecolor=colour if not fill else None,
                     facecolor=colour if fill else "none", linewidth=lw, alpha=alpha)
