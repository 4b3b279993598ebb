"""Choosing localization heads without gold boxes, after Kang et al. (CVPR 2025), toward decoder VLMs (issue #29).

Two criteria over a sample of prompts, per head: how much of its attention from the text goes to the image at all
(the *image share*; heads above the elbow of the sorted shares are kept), and how concentrated that attention is on
the image grid (the *spatial entropy*: the map thresholded at its mean, its 8-connected components, and the entropy
of the attention each component holds; one blob is 0). Heads of the first layers are left out; each prompt votes for
its ``top_k`` kept heads of lowest spatial entropy, and the heads with the most votes are the selection. Scoring
that selection against gold boxes (beside the heads chosen on a val split) is what vb-probe adds.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Labels of the 8-connected components of ``mask`` [h, w] bool: [h, w] int, 0 background, 1.. in raster order
    of each component's first cell."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    height, width = mask.shape
    current = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        current += 1
        labels[start] = current
        stack = [start]
        while stack:
            r, c = stack.pop()
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < height and 0 <= cc < width and mask[rr, cc] and not labels[rr, cc]:
                        labels[rr, cc] = current
                        stack.append((rr, cc))
    return labels


def spatial_entropy(attention: np.ndarray) -> float:
    """``attention`` [h, w] on the image grid → the entropy (nats) of the attention held by each connected component
    of the cells above the map's mean. 0 for a single blob, log k for k equal blobs; a flat map (nothing above its
    mean) is +inf (not localized at all)."""
    attention = np.asarray(attention, dtype=np.float64)
    labels = connected_components(attention > attention.mean())
    if labels.max() == 0:
        return float("inf")
    mass = np.bincount(labels.ravel(), weights=attention.ravel())[1:]
    p = mass / mass.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() + 0.0)


def elbow_threshold(values: np.ndarray) -> float:
    """The elbow of ``values`` sorted from high to low, for the usual long-tailed shape (a few heads look at the
    image a lot, most a little): scaled to the unit square, the value farthest below the straight line joining the
    first and the last, where the tail begins. Heads at or above it are kept."""
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
    if len(ordered) < 3 or ordered[0] == ordered[-1]:
        return float(ordered[-1]) if len(ordered) else 0.0
    x = np.linspace(0.0, 1.0, len(ordered))
    y = (ordered - ordered[-1]) / (ordered[0] - ordered[-1])
    below = 1.0 - x - y  # how far below the chord from (0, 1) to (1, 0), up to a factor √2
    return float(ordered[int(np.argmax(below))])


def select_localization_heads(image_share: np.ndarray, maps: np.ndarray, *, top_k: int = 10, skip_layers: int = 2,
                              count: int = 3) -> list[tuple[int, int, int]]:
    """``image_share`` [N, L, H] each prompt's share of the query's attention on the image; ``maps`` [N, L, H, h, w]
    that attention on the image grid. Returns the ``count`` heads with the most votes as (layer, head, votes), most
    votes first (ties: the lower layer, then head): a prompt votes for its ``top_k`` heads of lowest spatial entropy
    among those whose mean image share is at or above the elbow, layers below ``skip_layers`` left out."""
    image_share = np.asarray(image_share, dtype=np.float64)
    _, layers, heads = image_share.shape
    mean_share = image_share.mean(0)
    eligible = mean_share >= elbow_threshold(mean_share[skip_layers:])
    eligible[:skip_layers] = False
    candidates = [(layer, head) for layer in range(layers) for head in range(heads) if eligible[layer, head]]
    votes: Counter = Counter()
    for prompt in maps:
        entropy = sorted((spatial_entropy(prompt[layer, head]), layer, head) for layer, head in candidates)
        votes.update((layer, head) for _, layer, head in entropy[:top_k])
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    return [(layer, head, n) for (layer, head), n in ranked[:count]]
