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


# ------------------------------------------------------------------------------------------- many maps at once

def test_spatial_entropies_of_a_batch_equal_the_one_map_version():
    """The tensor labelling (largest index spread over 8-neighbours) gives the entropies of the reference, on
    hand-built maps (one blob, two equal blobs, a diagonal chain, a flat map) and on random ones."""
    import torch

    from vb_probe.metrics.localization import spatial_entropies

    one = np.zeros((4, 5))
    one[1:3, 1:3] = 1.0
    two = np.zeros((4, 5))
    two[0, 0] = two[3, 4] = 1.0
    chain = np.eye(5)[:4]  # diagonal neighbours: one component
    flat = np.ones((4, 5))
    rng = np.random.default_rng(0)
    maps = np.stack([one, two, chain, flat, *rng.random((40, 4, 5)) ** 4])
    got = spatial_entropies(torch.from_numpy(maps)).numpy()
    assert got[0] == 0.0 and got[1] == pytest.approx(np.log(2)) and got[2] == 0.0 and np.isinf(got[3])
    np.testing.assert_allclose(got, [spatial_entropy(m) for m in maps], rtol=0, atol=1e-12)


def test_places_and_cells_agree_for_every_grid_up_to_64_a_side():
    """A cell's place holds its centre, and that place's cell is the cell again (one-to-one up to 64 cells a side);
    on a larger grid a place still lands on a cell holding its centre."""
    import torch

    from vb_probe.metrics.positions import SIDE, cell_places, place_cells, place_label

    for rows, cols in ((24, 24), (16, 16), (3, 7), (1, 64), (64, 1), (37, 50)):
        grids = torch.tensor([[rows, cols]])
        places = cell_places(grids, rows * cols)[0]
        back = place_cells(grids)[0]
        assert torch.equal(back[places], torch.arange(rows * cols))
    grids = torch.tensor([[100, 90]])
    for place in (0, 77, SIDE * SIDE - 1):
        r, c = place_label(place)
        cell = int(place_cells(grids)[0, place])
        assert cell // 90 == int(r * 100) and cell % 90 == int(c * 90)


def test_fixed_position_counts_by_hand():
    """Two queries on a 2 × 2 grid; every head picks cell 3 (bottom right) for the first and cell 0 for the
    second. Picks: 4 heads × 2 layers at each of two places. Hits: query 1's gold holds cells 2 and 3, query 2's
    cell 0 only, so a pointer fixed at the bottom right is right once, at the top left once, at the top right never."""
    import torch

    from vb_probe.metrics.positions import cell_places, hits_per_place, picks_per_place

    grids = torch.tensor([[2, 2], [2, 2]])
    choice = torch.tensor([3, 0])[None, :, None].expand(2, 2, 4)
    places = cell_places(grids, 4)
    picks = picks_per_place(choice, places)
    assert int(picks.sum()) == 16 and int(picks[places[0, 3]]) == 8 and int(picks[places[0, 0]]) == 8
    hits = torch.tensor([[False, False, True, True], [True, False, False, False]])
    per_place = hits_per_place(hits, grids)
    assert int(per_place[places[0, 3]]) == 1 and int(per_place[places[0, 0]]) == 1 and int(per_place[places[0, 1]]) == 0
