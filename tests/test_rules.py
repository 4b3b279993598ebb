"""The scoring rules beside IoU, by hand: the pointing rule, the permuted-geometry control, the per-family random
baseline, and gold boxes outside what the model sees (skipped, counted)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from vb_probe.batching import image_permutation, layout
from vb_probe.families import FamilyBase, Site
from vb_probe.metrics.boxes import centre_hits, overlaps, region_hits, rule_hits
from vb_probe.pipeline import score_batch
from vb_probe.queries import ProbeItem, Query

# three image tokens: A and B side by side, C spanning both; centres (5, 5), (15, 5), (10, 5)
CELLS = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 20, 10]], np.float32)
# gold: IoU with A 100/160 = 0.625, with B 60/200 = 0.3, with C 160/200 = 0.8; all three centres lie inside
GOLD = np.array([[0, 0, 16, 10]], np.float32)


def test_the_pointing_rule_by_hand():
    np.testing.assert_array_equal(region_hits(CELLS, GOLD), [True, False, True])
    np.testing.assert_array_equal(centre_hits(CELLS, GOLD), [True, True, True])
    np.testing.assert_array_equal(centre_hits(CELLS, np.array([[0, 0, 15, 5]])), [True, True, True])  # edges count
    np.testing.assert_array_equal(centre_hits(CELLS, np.array([[0, 0, 14.9, 4.9]])), [False, False, False])
    np.testing.assert_array_equal(centre_hits(CELLS, np.zeros((0, 4))), [False, False, False])
    np.testing.assert_array_equal(rule_hits("pointing", CELLS, GOLD), centre_hits(CELLS, GOLD))
    np.testing.assert_array_equal(rule_hits("iou", CELLS, GOLD), region_hits(CELLS, GOLD))
    np.testing.assert_array_equal(overlaps(np.array([[0, 0, 5, 5], [20, 20, 30, 30], [10, 0, 12, 4]]),
                                           np.array([0, 0, 10, 10])), [True, False, False])  # touching is not seeing


class OneTokenHeads(FamilyBase):
    """A family stub: one layer, three heads, head h attends only to image token h."""

    name, model_type, default_tokenizer = "stub", "stub", None

    def __init__(self, rule: str = "iou"):
        self.rule = rule

    def sites(self, model):
        return [Site("self", 1, 3)]

    def rows(self, model, batch, site, mask="posthoc", precision="fp32"):
        n = len(batch.groups)
        return torch.eye(3)[None, None].expand(1, n, 3, 3).clone()  # [layer, n, head, R]


def _batch(views=None):
    items = [ProbeItem("k0", ("a", "dog"), "img-1", [Query("entity", 1, GOLD, unit="p0")]),
             ProbeItem("k1", ("a", "cat"), "img-2", [Query("entity", 1, np.array([[200, 200, 260, 260]]), unit="p1")])]
    return layout(items, [[1, 2], [1, 2]], [CELLS, CELLS], [None, None], {}, views=views)


def test_both_rules_and_the_permuted_control_are_counted_by_hand():
    counts = {}
    batch = _batch()
    score_batch(OneTokenHeads("iou"), None, batch, counts)
    entity = counts["entity"]
    assert entity.n == 2
    # image 1: IoU hits A and C, pointing A, B and C; image 2's gold is far away: nothing hits
    np.testing.assert_array_equal(entity.n_correct[0], [1, 0, 1])
    np.testing.assert_array_equal(entity.alternatives["pointing"].n_correct[0], [1, 1, 1])
    assert abs(entity.baseline_accuracy()["random"] - (2 / 3 + 0) / 2) < 1e-7  # float32 arithmetic, as the probe
    assert entity.alternatives["pointing"].baseline_accuracy()["random"] == (1 + 0) / 2
    # the permuted control: head h's token h scored as the token whose cell it was dealt
    perm = image_permutation("img-1", 3)
    expected = region_hits(CELLS, GOLD)[perm].astype(int)
    np.testing.assert_array_equal(entity.alternatives["permuted"].n_correct[0], expected)
    # a family whose rule is pointing: the grid is pointing, IoU beside it
    counts = {}
    score_batch(OneTokenHeads("pointing"), None, _batch(), counts)
    np.testing.assert_array_equal(counts["entity"].n_correct[0], [1, 1, 1])
    np.testing.assert_array_equal(counts["entity"].alternatives["iou"].n_correct[0], [1, 0, 1])


def test_the_permutation_depends_on_the_image_alone():
    first = image_permutation("1000092795", 36)
    assert sorted(first) == list(range(36)) and not np.array_equal(first, np.arange(36))
    np.testing.assert_array_equal(first, image_permutation("1000092795", 36))  # the same in every batch and run
    assert not np.array_equal(first, image_permutation("1000092796", 36))
    batch = _batch()
    np.testing.assert_array_equal(batch.permutation[0].numpy(), image_permutation("img-1", 3))


def test_gold_outside_the_view_is_skipped_and_counted():
    view = np.array([0, 0, 100, 100], np.float32)
    batch = _batch(views=[view, view])
    assert len(batch.groups) == 1 and [q.unit for q in batch.outside_view] == ["p1"]
    counts = {}
    score_batch(OneTokenHeads(), None, batch, counts)
    assert counts["entity"].n == 1


def test_the_pass_reports_outside_view_as_a_skip_reason(monkeypatch):
    """probe_pass turns the batch's outside_view queries into the skip reason (n_phrases = scored + skipped)."""
    from vb_probe import pipeline

    family = OneTokenHeads()
    family.collate = lambda model, chunk, tokenizer, facts, max_len, features: _batch(
        views=[np.array([0, 0, 100, 100])] * 2)
    monkeypatch.setattr(pipeline, "family_of", lambda model: family)
    model = SimpleNamespace(eval=lambda: None)
    state = pipeline.probe_pass(model, None, [None, None], batch_size=2, facts={}, max_text_len=8, progress=False)
    assert state.counts["entity"].n == 1 and dict(state.late_skips["entity"]) == {"outside_view": 1}


def test_pointing_and_permuted_counts_of_a_visualbert_run_equal_a_recount(tmp_path):
    """The engine's other rule and permuted control, recounted caption by caption from the per-word choices
    (``word_region_choices``) with the rules applied here: equal, head by head."""
    from fixtures import write_probe_set

    import vb_probe
    from vb_probe.caption_rows import word_region_choices
    from vb_probe.data.features import open_features
    from vb_probe.queries import collect_items

    data = write_probe_set(tmp_path, n_images=8)
    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    result = vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"], batch_size=3)
    assert result.rule == "iou" and result.other_rule_name == "pointing"
    flickr, features = vb_probe.Flickr30kEntities(data["flickr"]), open_features(data["tsv"])
    items, _ = collect_items(flickr, features, flickr.split("test"))
    pointing = np.zeros(result.shape, np.int64)
    permuted = np.zeros(result.shape, np.int64)
    for item in items:
        regions = features[item.image_id]
        choices = word_region_choices(model, tokenizer, item.words, regions)  # [L, H, words]
        perm = image_permutation(item.image_id, len(regions))
        for query in item.queries:
            picked = choices[:, :, query.word_index]
            pointing += centre_hits(regions.boxes, query.gold)[picked]
            permuted += region_hits(regions.boxes, query.gold)[perm][picked]
    np.testing.assert_array_equal(result.other_rule.n_correct, pointing)
    np.testing.assert_array_equal(result.permuted.n_correct, permuted)
    assert result.other_rule.n == result.n and result.permuted.n == result.n
