"""Choosing localization heads without boxes (toward #29), by hand: components, spatial entropy, the elbow, and a
planted head found by the votes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vb_probe.metrics.localization import (
    connected_components,
    elbow_threshold,
    select_localization_heads,
    spatial_entropy,
)


def test_components_are_eight_connected():
    mask = np.array([[1, 0, 0, 1],
                     [0, 1, 0, 1],
                     [0, 0, 0, 0],
                     [1, 1, 0, 0]], bool)
    labels = connected_components(mask)
    assert labels.max() == 3  # the diagonal pair joins; the right column is one; the bottom pair is one
    assert labels[0, 0] == labels[1, 1] == 1 and labels[0, 3] == labels[1, 3] == 2 and labels[3, 0] == labels[3, 1] == 3


def test_spatial_entropy_by_hand():
    one = np.zeros((6, 6))
    one[1:3, 1:3] = 1.0
    assert spatial_entropy(one) == 0.0  # one blob
    two = one.copy()
    two[4:6, 4:6] = 1.0
    assert spatial_entropy(two) == pytest.approx(math.log(2))  # two equal blobs
    uneven = one.copy()
    uneven[5, 5] = 3.0  # a blob of mass 4 and a cell of mass 3
    assert spatial_entropy(uneven) == pytest.approx(-(4 / 7) * math.log(4 / 7) - (3 / 7) * math.log(3 / 7))
    assert spatial_entropy(np.full((4, 4), 0.5)) == math.inf  # flat: nothing above the mean


def test_the_elbow_by_hand():
    # sorted 10, 4, 2, 1.5, 1.2, 1 → x 0, .2, .4, .6, .8, 1 and y 1, .333, .111, .056, .022, 0: below the chord by
    # 0, .467, .489, .344, .178, 0 — the elbow is the 2
    assert elbow_threshold(np.array([1.2, 10, 1, 4, 2, 1.5])) == 2.0
    assert elbow_threshold(np.array([3.0, 3.0, 3.0])) == 3.0


def test_a_planted_localization_head_gets_every_vote():
    rng = np.random.default_rng(0)
    n, layers, heads, side = 12, 4, 3, 8
    share = rng.uniform(0.05, 0.15, (n, layers, heads))
    maps = np.zeros((n, layers, heads, side, side))  # scattered attention: five spikes, apart
    spots = [(0, 0), (0, 4), (3, 2), (6, 0), (6, 6)]
    for index in np.ndindex(n, layers, heads):
        for r, c in spots:
            maps[index][r, c] = rng.uniform(0.5, 1.0)
    for i in range(n):
        r, c = rng.integers(0, side - 2, 2)
        for layer, head in ((2, 1), (0, 0)):  # the planted head, and a look-alike in an excluded early layer
            maps[i, layer, head] = 0.0
            maps[i, layer, head, r:r + 2, c:c + 2] = 1.0
            share[i, layer, head] = 0.9
    chosen = select_localization_heads(share, maps, top_k=1, count=2)
    assert chosen[0] == (2, 1, n)  # every prompt votes for it; layer 0's twin is never eligible
    assert all(layer >= 2 for layer, _, _ in chosen)
