"""Choosing localization heads without gold boxes, after Kang et al. (CVPR 2025), for decoder VLMs.

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
import torch


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


def spatial_entropies(maps: torch.Tensor) -> torch.Tensor:
    """:func:`spatial_entropy` of many maps at once: ``maps`` [M, h, w] → [M] float64 (inf where nothing is above a
    map's mean). Components are labelled by spreading the largest cell index over 8-neighbours until nothing changes,
    so the whole batch of heads is one tensor computation."""
    maps = maps.double()
    count, height, width = maps.shape
    above = maps > maps.mean(dim=(1, 2), keepdim=True)
    index = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, height, width)
    labels = torch.where(above, index, torch.zeros(()))
    while True:
        spread = torch.nn.functional.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0]
        spread = torch.where(above, spread, torch.zeros(()))
        if torch.equal(spread, labels):
            break
        labels = spread
    slots = height * width + 1
    keys = (labels.long() + slots * torch.arange(count)[:, None, None]).flatten()
    mass = torch.zeros(count * slots, dtype=torch.float64).index_add_(0, keys, maps.flatten()).reshape(count, slots)
    mass = mass[:, 1:]  # label 0: the cells at or below the mean
    total = mass.sum(1, keepdim=True)
    p = mass / total.clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -(torch.where(p > 0, p * p.log(), torch.zeros(()))).sum(1) + 0.0
    return torch.where(above.flatten(1).any(1), entropy, torch.full_like(entropy, float("inf")))


def select_from_entropies(image_share: np.ndarray, entropy: np.ndarray, *, top_k: int = 10, skip_layers: int = 2,
                          count: int = 3) -> list[tuple[int, int, int]]:
    """The selection of :func:`select_localization_heads` from each prompt's spatial entropies ``entropy``
    [N, L, H] (computed as the prompts were probed) and image shares ``image_share`` [N, L, H]. A prompt votes for
    ``top_k`` heads, at most half the candidates (a small model keeps few heads; Kang et al.'s 10 of a 7B model's
    ~1,000 stands)."""
    image_share = np.asarray(image_share, dtype=np.float64)
    entropy = np.asarray(entropy, dtype=np.float64)
    _, layers, heads = image_share.shape
    if layers <= skip_layers or not len(image_share):
        return []
    mean_share = image_share.mean(0)
    eligible = mean_share >= elbow_threshold(mean_share[skip_layers:])
    eligible[:skip_layers] = False
    candidates = [(layer, head) for layer in range(layers) for head in range(heads) if eligible[layer, head]]
    votes: Counter = Counter()
    top_k = min(top_k, max(1, len(candidates) // 2))  # a vote must choose: at most half the candidates
    for prompt in entropy:
        ranked = sorted((prompt[layer, head], layer, head) for layer, head in candidates)
        votes.update((layer, head) for _, layer, head in ranked[:top_k])
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    return [(layer, head, n) for (layer, head), n in ranked[:count]]


def select_localization_heads(image_share: np.ndarray, maps: np.ndarray, *, top_k: int = 10, skip_layers: int = 2,
                              count: int = 3) -> list[tuple[int, int, int]]:
    """``image_share`` [N, L, H] each prompt's share of the query's attention on the image; ``maps`` [N, L, H, h, w]
    that attention on the image grid. Returns the ``count`` heads with the most votes as (layer, head, votes), most
    votes first (ties: the lower layer, then head): a prompt votes for its ``top_k`` heads of lowest spatial entropy
    among those whose mean image share is at or above the elbow, layers below ``skip_layers`` left out."""
    maps = np.asarray(maps, dtype=np.float64)
    entropy = np.array([[[spatial_entropy(head) for head in layer] for layer in prompt] for prompt in maps])
    return select_from_entropies(image_share, entropy.reshape(maps.shape[:3]), top_k=top_k, skip_layers=skip_layers,
                                 count=count)
