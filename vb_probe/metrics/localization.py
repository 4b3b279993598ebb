"""Choosing localization heads without gold boxes, after Kang et al. (CVPR 2025), for decoder VLMs.

Two criteria over a sample of prompts, per head: how much of its attention from the text goes to the image at all
(the *image share*; heads above the elbow of the sorted shares are kept), and how concentrated that attention is on
the image grid (the *spatial entropy*: the map thresholded at its mean, its 8-connected components, and the entropy
of the attention each component holds; one blob is 0). Heads of the first layers are left out; each prompt votes for
its ``top_k`` kept heads of lowest spatial entropy, and the heads with the most votes are the selection. Scoring
that selection against gold boxes (beside the heads chosen on a val split) is what vb-probe adds.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from vb_probe.metrics.readouts import ENTROPY_VARIANTS, EntropyVariant, label_components
from vb_probe.metrics.readouts import spatial_entropies as entropies_of


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Labels of the 8-connected components of ``mask`` [h, w] bool: [h, w] int, 0 background, 1.. in raster order
    of each component's first cell (``scipy.ndimage.label``)."""
    return label_components(np.asarray(mask, dtype=bool)[None])[0][0]


def spatial_entropy(attention: np.ndarray, variant: EntropyVariant = ENTROPY_VARIANTS["released-mean"]) -> float:
    """``attention`` [h, w] on the image grid → the entropy (nats) of the attention held by each connected component
    of the cells above the map's mean (by default; other variants in :mod:`.readouts`). 0 for a single blob, log k
    for k equal blobs; a flat map (nothing above its mean) is +inf (not localized at all)."""
    return float(entropies_of(np.asarray(attention, dtype=np.float64)[None], variant)[0])


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


def spatial_entropies(maps: torch.Tensor, variant: EntropyVariant = ENTROPY_VARIANTS["released-mean"]) -> torch.Tensor:
    """:func:`spatial_entropy` of many maps at once: ``maps`` [M, h, w] → [M] float64 (inf where nothing is above a
    map's mean), the whole stack labelled in one library call."""
    return torch.from_numpy(entropies_of(maps.detach().double().cpu().numpy(), variant))


@dataclass
class Selection:
    """Kang et al.'s choice, shown as their Figure 2 shows it: the elbow of the heads' mean image shares, every
    candidate above it with its mean share, mean spatial entropy (over the prompts where it is finite) and votes,
    and the ``selected`` heads (layer, head, votes), most votes first."""

    elbow: float
    candidates: list[dict]
    selected: list[tuple[int, int, int]]
    top_k: int


def kang_selection(image_share: np.ndarray, entropy: np.ndarray, *, top_k: int = 10, skip_layers: int = 2,
                   count: int = 3, excluded: set[tuple[int, int]] | frozenset = frozenset(),
                   elbow_cut: bool = True) -> Selection:
    """Kang et al.'s selection from each prompt's image shares ``image_share`` [N, L, H] and spatial entropies
    ``entropy`` [N, L, H]: heads whose mean share is at or above the elbow (layers below ``skip_layers`` and the
    ``excluded`` heads, e.g. sink heads, left out) are candidates; each prompt votes for its ``top_k`` candidates of
    lowest entropy (at most half the candidates: a small model keeps few heads; Kang et al.'s 10 of a 7B model's
    ~1,000 stands); the ``count`` heads with the most votes are chosen (ties: the lower layer, then head).
    ``elbow_cut`` False: every head past the first layers is a candidate (Kang et al.'s entropy-only ablation)."""
    image_share = np.asarray(image_share, dtype=np.float64)
    entropy = np.asarray(entropy, dtype=np.float64)
    if image_share.ndim != 3 or image_share.shape[1] <= skip_layers or not len(image_share):
        return Selection(0.0, [], [], top_k)
    _, layers, heads = image_share.shape
    mean_share = image_share.mean(0)
    elbow = elbow_threshold(mean_share[skip_layers:])
    eligible = mean_share >= elbow if elbow_cut else np.ones_like(mean_share, dtype=bool)
    eligible[:skip_layers] = False
    candidates = [(layer, head) for layer in range(layers) for head in range(heads)
                  if eligible[layer, head] and (layer, head) not in excluded]
    votes: Counter = Counter()
    top_k = min(top_k, max(1, len(candidates) // 2))  # a vote must choose: at most half the candidates
    for prompt in entropy:  # a map never localized (nothing above its threshold: +inf) gets no vote
        ranked = sorted((prompt[layer, head], layer, head) for layer, head in candidates
                        if np.isfinite(prompt[layer, head]))
        votes.update((layer, head) for _, layer, head in ranked[:top_k])
    ranked = sorted(votes.items(), key=lambda item: (-item[1], item[0]))
    finite = np.where(np.isfinite(entropy), entropy, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a head never localized: its mean entropy is None
        mean_entropy = np.nanmean(finite, axis=0)
    rows = [{"layer": layer, "head": head, "mean_image_share": round(float(mean_share[layer, head]), 6),
             "mean_spatial_entropy": None if np.isnan(mean_entropy[layer, head])
             else round(float(mean_entropy[layer, head]), 6), "votes": int(votes.get((layer, head), 0))}
            for layer, head in candidates]
    rows.sort(key=lambda r: (-r["votes"], r["layer"], r["head"]))
    return Selection(round(float(elbow), 6), rows, [(layer, head, n) for (layer, head), n in ranked[:count]], top_k)


def select_from_entropies(image_share: np.ndarray, entropy: np.ndarray, *, top_k: int = 10, skip_layers: int = 2,
                          count: int = 3) -> list[tuple[int, int, int]]:
    """The heads :func:`kang_selection` chooses, as (layer, head, votes)."""
    return kang_selection(image_share, entropy, top_k=top_k, skip_layers=skip_layers, count=count).selected


def select_localization_heads(image_share: np.ndarray, maps: np.ndarray, *, top_k: int = 10, skip_layers: int = 2,
                              count: int = 3) -> list[tuple[int, int, int]]:
    """``image_share`` [N, L, H] each prompt's share of the query's attention on the image; ``maps`` [N, L, H, h, w]
    that attention on the image grid. Returns the ``count`` heads with the most votes as (layer, head, votes), most
    votes first (ties: the lower layer, then head): a prompt votes for its ``top_k`` heads of lowest spatial entropy
    among those whose mean image share is at or above the elbow, layers below ``skip_layers`` left out."""
    maps = np.asarray(maps, dtype=np.float64)
    entropy = entropies_of(maps.reshape(-1, *maps.shape[-2:]))
    return select_from_entropies(image_share, entropy.reshape(maps.shape[:3]), top_k=top_k, skip_layers=skip_layers,
                                 count=count)
