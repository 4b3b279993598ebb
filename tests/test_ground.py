"""Boxes from heads (``vb-probe ground``): the readouts and entropies by hand and against a reference written from
Kang et al.'s text, then the harness end to end on a tiny LLaVA whose heads are planted through the family's rows:
the planted head wins the fixed choice, a low-entropy distractor fools the per-sample choice only, the largest blob
holds the gold box where the all-foreground box is pulled away by a second blob, and LLaVA's padded view sees a box
its centre crop cuts away."""

from __future__ import annotations

import json
import math
from collections import Counter
from unittest import mock

import numpy as np
import pytest
import torch
from decoder_fixtures import BUILDERS, save_model_folder
from test_vilt import _write_world

import vb_probe
from vb_probe.cli import main as probe_main
from vb_probe.families.decoder import DecoderFamily
from vb_probe.metrics.localization import elbow_threshold, kang_selection
from vb_probe.metrics.readouts import (
    ENTROPY_VARIANTS,
    READOUT_SETTINGS,
    BoxReadout,
    cells_box,
    gaussian_smooth,
    label_components,
    readout_cells,
    spatial_entropies,
)

# ------------------------------------------------------------------------------------------- readouts by hand


def test_the_papers_seven_tap_kernel_differs_from_scipys_nine_taps_on_a_point():
    """A unit point at the centre of an 11 × 11 map. 1-D weights exp(-d²/2) normalised over |d| ≤ r:
    7 taps: Σ = 1 + 2(e^-0.5 + e^-2 + e^-4.5) = 1 + 2(0.606531 + 0.135335 + 0.011109) = 2.505950, w0 = 0.399050,
    centre w0² = 0.159241, and nothing at distance 4; 9 taps: Σ += 2e^-8 = 0.000671 → 2.506621, w0 = 0.398943,
    centre 0.159156, at distance 4 along the row w4 · w0 = (0.000335 / 2.506621) · 0.398943 = 5.3391e-5."""
    point = np.zeros((11, 11))
    point[5, 5] = 1.0
    seven, nine = gaussian_smooth(point, 7), gaussian_smooth(point, 9)
    assert seven[5, 5] == pytest.approx(0.159241, abs=1e-6) and seven[5, 9] == 0.0 and seven[5, 8] > 0
    assert nine[5, 5] == pytest.approx(0.159156, abs=1e-6) and nine[5, 9] == pytest.approx(5.3391e-5, rel=1e-3)
    assert seven.sum() == pytest.approx(1.0) and nine.sum() == pytest.approx(1.0)  # inside: nothing reflected
    assert READOUT_SETTINGS["paper"].taps == 7 and READOUT_SETTINGS["released"].taps == 9


def _two_blobs() -> np.ndarray:
    """An 8 × 8 map: a 3 × 3 blob of 0.08 at rows 1–3, columns 1–3 (mass 0.72) and one cell of 0.2 at (6, 6);
    mean 0.92 / 64 = 0.014375."""
    grid = np.zeros((8, 8))
    grid[1:4, 1:4] = 0.08
    grid[6, 6] = 0.2
    return grid


def test_each_readout_by_hand():
    grid = _two_blobs()
    raw = {name: BoxReadout(0, "mean", name) for name in ("blob", "all", "peak", "centroid")}
    blob = readout_cells(grid, raw["blob"]).reshape(8, 8)
    assert blob.sum() == 9 and blob[1:4, 1:4].all()  # the largest by area, not the heaviest cell
    every = readout_cells(grid, raw["all"]).reshape(8, 8)
    assert every.sum() == 10 and every[6, 6]
    assert np.flatnonzero(readout_cells(grid, raw["peak"])).tolist() == [6 * 8 + 6]
    # centroid: rows (0.72 · 2 + 0.2 · 6) / 0.92 = 2.8696 → row 3; columns the same → column 3
    assert np.flatnonzero(readout_cells(grid, raw["centroid"])).tolist() == [3 * 8 + 3]
    # cells of 10 pixels a side: the blob's box is rows/columns 1–3 → (10, 10, 40, 40); all foreground reaches
    # (60, 60, 70, 70); clipped to a 65 × 65 image
    boxes = np.array([[c * 10, r * 10, c * 10 + 10, r * 10 + 10] for r in range(8) for c in range(8)], float)
    assert cells_box(blob.ravel(), boxes, 80, 80).tolist() == [10, 10, 40, 40]
    assert cells_box(every.ravel(), boxes, 65, 65).tolist() == [10, 10, 65, 65]
    # a cell wholly in a padded view's band (outside the image) gives an empty box
    outside = np.zeros(64, bool)
    outside[63] = True
    assert cells_box(outside, boxes, 50, 50).tolist() == [50, 50, 50, 50]


def test_spatial_entropy_variants_by_hand():
    """The two blobs: above the mean, components of area 9 and 1 and masses 0.72 and 0.2.
    paper (area): p = 0.9, 0.1 → 0.9 ln(1/0.9) + 0.1 ln 10 = 0.094824 + 0.230259 = 0.325083;
    released-mean (mass): p = 0.72/0.92 = 0.782609, 0.217391 → 0.782609 · 0.245122 + 0.217391 · 1.526056
    = 0.191835 + 0.331751 = 0.523586; released (above 2 × mean = 0.02875: both blobs still, by mass): 0.523586;
    a flat map: inf, or 0 released."""
    grid = _two_blobs()[None]
    assert spatial_entropies(grid, ENTROPY_VARIANTS["paper"])[0] == pytest.approx(0.325083, abs=1e-6)
    assert spatial_entropies(grid, ENTROPY_VARIANTS["released-mean"])[0] == pytest.approx(0.523586, abs=1e-6)
    assert spatial_entropies(grid, ENTROPY_VARIANTS["released"])[0] == pytest.approx(0.523586, abs=1e-6)
    from vb_probe.probe_config import ENTROPY_NAMES

    assert ENTROPY_NAMES == tuple(ENTROPY_VARIANTS)  # the options the config checks are the variants there are
    flat = np.full((1, 4, 4), 1 / 16)
    assert math.isinf(spatial_entropies(flat, ENTROPY_VARIANTS["paper"])[0])
    assert spatial_entropies(flat, ENTROPY_VARIANTS["released"])[0] == 0.0
    # 2 × mean drops a faint second blob the mean keeps: 0.03 a cell over 9 cells + one cell of 0.02,
    # mean 0.29 / 64 = 0.00453, 2 × mean 0.00906 keeps both; a floor of 0.001 does not matter here
    faint = np.zeros((1, 8, 8))
    faint[0, 1:4, 1:4], faint[0, 6, 6] = 0.03, 0.006
    assert spatial_entropies(faint, ENTROPY_VARIANTS["paper"])[0] > 0  # 0.006 > mean 0.00431: two components
    assert spatial_entropies(faint, ENTROPY_VARIANTS["released"])[0] == 0.0  # 0.006 < 2 × mean: one


# ------------------------------------------------------------------------------------------- a reference from the text


def _reference_components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by breadth-first search, written from the definition."""
    seen, components = np.zeros_like(mask, bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start], queue, component = True, [start], []
        while queue:
            r, c = queue.pop(0)
            component.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < mask.shape[0] and 0 <= cc < mask.shape[1] and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        components.append(component)
    return components


def _reference_entropy(grid: np.ndarray) -> float:
    """Kang et al.'s text: binarise above the mean, 8-connected components, entropy of their areas' shares."""
    components = _reference_components(grid > grid.mean())
    if not components:
        return math.inf
    total = sum(len(c) for c in components)
    return -sum(len(c) / total * math.log(len(c) / total) for c in components) + 0.0


def _reference_box(maps: list[np.ndarray]) -> tuple[int, int, int, int]:
    """Kang et al.'s text: each head's map smoothed (7 taps, σ 1), summed, above its mean, the largest blob's
    tight box in cells (row0, col0, row1, col1) — the smoothing by an explicit convolution with reflected edges."""
    taps = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
    taps /= taps.sum()
    total = 0
    for grid in maps:
        padded = np.pad(grid, 3, mode="symmetric")  # scipy's "reflect": the edge cell repeated
        rows = np.array([[padded[r:r + 7, c + 3] @ taps for c in range(grid.shape[1])] for r in range(grid.shape[0])])
        padded = np.pad(rows, ((0, 0), (3, 3)), mode="symmetric")
        total = total + np.array([[padded[r, c:c + 7] @ taps for c in range(grid.shape[1])]
                                  for r in range(grid.shape[0])])
    component = max(_reference_components(total > total.mean()), key=len)
    r, c = zip(*component)
    return min(r), min(c), max(r), max(c)


def test_selection_and_readout_agree_with_a_reference_from_the_papers_text():
    rng = np.random.default_rng(0)
    prompts, layers, heads, side = 12, 5, 4, 9
    maps = rng.random((prompts, layers, heads, side, side)) ** 4  # random maps, a few bright cells
    for n in range(prompts):  # planted: L3H2 one bright square; L4H0 two
        maps[n, 3, 2] = 0.01
        maps[n, 3, 2, 2:5, 3:6] = 1.0
        maps[n, 4, 0] = 0.01
        maps[n, 4, 0, 0:2, 0:2] = maps[n, 4, 0, 6:8, 6:8] = 1.0
    share = rng.uniform(0.05, 0.2, (prompts, layers, heads))
    share[:, 3, 2], share[:, 4, 0], share[:, 2, 1] = 0.9, 0.8, 0.7
    flat = maps.reshape(-1, side, side)
    ours = spatial_entropies(flat, ENTROPY_VARIANTS["paper"])
    reference = np.array([_reference_entropy(m) for m in flat])
    assert np.allclose(ours, reference, atol=1e-12)
    # the selection, step by step from the text: elbow of mean shares (layers 0–1 out), votes for each prompt's
    # top_k lowest entropies among the candidates, the most-voted heads
    entropy = ours.reshape(prompts, layers, heads)
    mean = share.mean(0)
    elbow = elbow_threshold(mean[2:])
    candidates = [(ly, h) for ly in range(2, layers) for h in range(heads) if mean[ly, h] >= elbow]
    top_k = min(10, max(1, len(candidates) // 2))
    votes = Counter()
    for n in range(prompts):
        votes.update(sorted(candidates, key=lambda lh: (entropy[n][lh], lh))[:top_k])
    expected = sorted(votes.items(), key=lambda item: (-item[1], item[0]))[:3]
    chosen = kang_selection(share, entropy, top_k=10, skip_layers=2, count=3)
    assert [(ly, h, v) for (ly, h), v in expected] == chosen.selected
    assert chosen.selected[0][:2] == (3, 2) and chosen.elbow == pytest.approx(elbow, abs=1e-6)
    assert {(c["layer"], c["head"]) for c in chosen.candidates} == set(candidates)
    # the readout: random and planted maps of three heads summed
    for n in range(prompts):
        heads_maps = [maps[n, 3, 2], maps[n, 4, 0], maps[n, 1, 1]]
        cells = readout_cells(gaussian_smooth(np.stack(heads_maps), 7).sum(0), READOUT_SETTINGS["paper"])
        r, c = np.divmod(np.flatnonzero(cells), side)
        assert (r.min(), c.min(), r.max(), c.max()) == _reference_box(heads_maps)


def test_labelling_a_stack_at_once_equals_each_map_alone():
    rng = np.random.default_rng(1)
    masks = rng.random((30, 7, 11)) > 0.6
    labels, count = label_components(masks)
    assert count == sum(len(_reference_components(m)) for m in masks)
    for m, lab in zip(masks, labels):  # the same partition of cells, map by map
        ours = sorted(sorted(zip(*np.nonzero(lab == v))) for v in np.unique(lab[lab > 0]))
        assert ours == sorted(sorted(c) for c in _reference_components(m))


# ------------------------------------------------------------------------------------------- end to end, planted

PLANTED, DISTRACTOR = (2, 1), (3, 0)


def _far_cell(cells: np.ndarray, width: float, height: float, gold: np.ndarray) -> int:
    """The cell inside the image whose centre lies farthest from the gold box's centre."""
    centres = (cells[:, :2] + cells[:, 2:]) / 2
    inside = (centres[:, 0] > 0) & (centres[:, 0] < width) & (centres[:, 1] > 0) & (centres[:, 1] < height)
    gx, gy = (gold[:, 0] + gold[:, 2]).mean() / 2, (gold[:, 1] + gold[:, 3]).mean() / 2
    distance = np.where(inside, np.hypot(centres[:, 0] - gx, centres[:, 1] - gy), -1.0)
    return int(np.argmax(distance))


def _planted(second_blob_on: frozenset = frozenset(), distractor_every: int = 3):
    """DecoderFamily.rows with every head replaced. L2H1: 0.8 spread over the cells whose centre lies in the gold
    box, and, on the images of ``second_blob_on``, 0.7 of a gold cell's share on the 3 × 3 cells around the image's
    cell farthest from it (a second, smaller blob, not the peak, that survives smoothing). L3H0: on every
    ``distractor_every``-th query one bright cell, that far cell (entropy 0: a perfect blob, in the wrong place); on
    the others 0.9 spread evenly over every cell (nothing above the mean: never localized). Every other head
    spreads 0.1 to 0.3 evenly over the image (never localized, and below the planted pair's image share)."""

    def rows(self, model, batch, site, mask="posthoc", precision="fp32"):
        gold_cells = batch.targets["pointing"].float()
        valid = batch.region_valid.float()
        even = valid / valid.sum(-1, keepdim=True)  # [n, R]
        spread = torch.linspace(0.1, 0.3, site.layers * site.heads).reshape(site.layers, 1, site.heads, 1)
        out = spread * even[None, :, None, :]
        for i in range(out.shape[1]):
            b = int(batch.batch_index[i])
            width, height = (float(v) for v in batch.extras["image_sizes"][b])
            far = _far_cell(np.asarray(batch.cells[b]), width, height, np.asarray(batch.scored[i].gold).reshape(-1, 4))
            share = 0.8 / float(gold_cells[i].sum().clamp(min=1))
            out[PLANTED[0], i, PLANTED[1]] = share * gold_cells[i]
            if batch.image_ids[b] in second_blob_on:  # 3 × 3 cells around the far cell, at 0.7 of a gold cell
                rows_, cols_ = (int(v) for v in batch.extras["grids"][b])
                r, c = divmod(far, cols_)
                for rr in range(max(0, r - 1), min(rows_, r + 2)):
                    out[PLANTED[0], i, PLANTED[1], rr * cols_ + max(0, c - 1):rr * cols_ + min(cols_, c + 2)] = 0.7 * share
            if i % distractor_every == 0:
                out[DISTRACTOR[0], i, DISTRACTOR[1]] = 0.0
                out[DISTRACTOR[0], i, DISTRACTOR[1], far] = 0.9
            else:
                out[DISTRACTOR[0], i, DISTRACTOR[1]] = 0.9 * even[i]
        return out * batch.region_valid[None, :, None, :].float()

    return mock.patch.object(DecoderFamily, "rows", rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _write_world(tmp_path_factory.mktemp("ground_world"))


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """The harness on a tiny LLaVA (4 layers × 4 heads, a 24 × 24 grid over LLaVA's padded square), heads chosen
    on train (three images), boxes read on test (the other three, where the planted head has a second blob)."""
    world = _write_world(tmp_path_factory.mktemp("planted_world"))
    ids = world["ids"]
    (world["flickr"] / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (world["flickr"] / "test.txt").write_text("\n".join(ids[3:]) + "\n")
    model = DecoderFamily().load(BUILDERS["llava"](layers=4, image_size=336, pad=True))
    with _planted(frozenset(ids[3:])):
        return vb_probe.ground(model, None, world["flickr"], world["images"], progress=False, ks=(1, 3))


def test_the_planted_head_wins_the_fixed_choice_and_is_read_as_a_box(planted_run):
    result = planted_run
    assert result.selection["split"] == "train" and result.config["select_on"] == "train"
    assert tuple(result.selection["plan"]["sets"]["fixed"][0]) == PLANTED
    fixed = result.block["heads"]["fixed"][0]
    assert (fixed["layer"], fixed["head"]) == PLANTED and fixed["accuracy"] == 1.0
    assert fixed["enrichment"] > 1.0  # its attention sits in the gold box more than the box's area would give
    # the largest blob holds the gold box; the box around all foreground reaches the far cell and fails
    assert result.accuracy("fixed/k1/paper") == 1.0
    assert result.accuracy("fixed/k1/released") < 0.5
    assert result.accuracy("fixed/k1/peak") == 0.0  # one cell is never IoU 0.5 with a box this size
    n = result.block["queries"]
    assert n == 6 and len(result.rows) == n * len(result.block["settings"])  # 3 images × 2 phrases, every setting
    assert all(s["n"] == n for s in result.block["settings"])


def test_per_sample_choice_takes_the_low_entropy_distractor_that_votes_reject(planted_run):
    """The distractor is a perfect blob on a third of the queries: each of those picks it per sample (entropy 0
    against the planted head's two blobs), and misses; over all prompts the planted head has the votes."""
    result = planted_run
    per_sample = [r for r in result.rows if r["setting"] == "per-sample/k1/paper"]
    assert {r["heads"] for r in per_sample} == {"L2H1", "L3H0"}
    fooled = [r for r in per_sample if r["heads"] == "L3H0"]
    assert len(fooled) == 2 and not any(r["hit_iou50"] for r in fooled)  # queries 0 and 3 of the batch of six
    assert result.accuracy("per-sample/k1/paper") == pytest.approx(4 / 6)
    assert result.accuracy("fixed/k1/paper") > result.accuracy("per-sample/k1/paper")
    candidates = {(c["layer"], c["head"]) for c in result.selection["candidates"]}
    assert {PLANTED, DISTRACTOR} <= candidates


def test_the_run_records_every_switch_and_the_figure_and_files(planted_run, tmp_path):
    result = planted_run
    folder = result.save(tmp_path / "out")
    run = json.loads((folder / "run.json").read_text())
    assert run["probe"] == "ground" and run["config"]["ks"] == [1, 3]
    assert run["config"]["readouts"] == ["paper", "released", "peak", "centroid"]
    assert run["config"]["entropy"] == "paper" and run["selection"]["entropy"] == "paper"
    assert run["config"]["view"] == "processor" and run["config"]["query_row"] == "word"
    assert run["entity_grounding"]["localization"]["unsupervised_selection"]["split"] == "train"
    assert "ground" not in run["entity_grounding"]
    import pandas as pd

    table = pd.read_csv(folder / "ground.csv")
    assert len(table) == len(result.rows)
    hits = table[table.setting == "fixed/k1/paper"].hit_iou50
    assert hits.mean() == result.accuracy("fixed/k1/paper")
    assert (folder / "ground.png").stat().st_size > 0
    assert run["ground"]["fixed_position"]["chosen_on"] == "train"


def test_a_native_resolution_model_reads_boxes_the_same_way(world):
    """Qwen2-VL (a 28-pixel cell a token, the grid from the image's own size): the planted head is chosen and its
    largest blob holds the gold box on every expression."""
    model = DecoderFamily().load(BUILDERS["qwen2_vl"](max_pixels=448 * 448, layers=4))
    with _planted():
        result = vb_probe.ground(model, None, world["flickr"], world["images"], progress=False, ks=(1,),
                                 choices=("fixed", "per-sample"), readouts=("paper", "released"))
    assert tuple(result.selection["plan"]["sets"]["fixed"][0]) == PLANTED
    assert result.accuracy("fixed/k1/paper") == 1.0 and result.block["queries"] == 12


def test_llavas_padded_view_sees_a_box_its_centre_crop_cuts_away(tmp_path):
    """A 160 × 40 image whose only phrase's gold lies in its left 30 pixels: the centre crop (a 40 × 40 square
    in the middle) never sees it, so the expression is skipped as outside_view; the padded square sees it all and
    the planted head's box holds it."""
    from vb_probe.data.flickr30k import Annotation, Phrase, format_annotation, format_sentence
    from vb_probe.data.images import ImageFolder  # noqa: F401  (the folder the run reads)

    flickr, images = tmp_path / "flickr", tmp_path / "images"
    for sub in (flickr / "Sentences", flickr / "Annotations", images):
        sub.mkdir(parents=True)
    from PIL import Image

    for image_id in ("1", "2", "3"):
        Image.fromarray(np.random.default_rng(int(image_id)).integers(0, 255, (40, 160, 3)).astype(np.uint8)).save(
            images / f"{image_id}.png")
        # the train image's phrase in the middle (both views see it), the test image's at the left edge
        boxes = {1: np.array([[0, 0, 30, 40]] if image_id == "2" else [[60, 0, 100, 40]], np.float32)}
        (flickr / "Annotations" / f"{image_id}.xml").write_text(
            format_annotation(Annotation(image_id, 160, 40, boxes, set(), set())))
        (flickr / "Sentences" / f"{image_id}.txt").write_text(
            format_sentence(["a", "man", "."], [Phrase(0, ("a", "man"), 1, ("people",))]) + "\n")
    (flickr / "train.txt").write_text("1\n")
    (flickr / "test.txt").write_text("2\n3\n")
    model = DecoderFamily().load(BUILDERS["llava"](layers=4, image_size=112))
    with _planted():
        cropped = vb_probe.ground(model, None, flickr, images, progress=False, ks=(1,), choices=("gold",),
                                  view="crop")
    with _planted():
        padded = vb_probe.ground(model, None, flickr, images, progress=False, ks=(1,), choices=("gold",),
                                 view="pad")
    assert cropped.probe.skipped == {"outside_view": 1} and cropped.block["queries"] == 1
    assert padded.probe.skipped == {} and padded.block["queries"] == 2
    row = next(r for r in padded.rows if r["setting"] == "gold/k1/paper" and r["image_id"] == "2")
    assert row["heads"] == "L2H1" and row["x1"] == 0.0 and row["x2"] < 80.0 and row["iou"] >= 0.5
    with _planted():  # the next call without --view reads the image as the processor saved with the model: cropped
        again = vb_probe.entity_grounding(model, None, flickr, images, progress=False)
    assert again.skipped == {"outside_view": 1}


def test_kangs_prompt_reads_the_prompts_last_token_without_the_flag(world):
    """--prompt kang, no --query-row: every query's row is the prompt's last token (the final "."); with
    --query-row word, the entity's word."""
    from vb_probe.queries import collect_items

    model = DecoderFamily().load(BUILDERS["llava"](layers=2))
    family = DecoderFamily()
    flickr, images = vb_probe.Flickr30kEntities(world["flickr"]), vb_probe.data.images.ImageFolder(world["images"])
    items, _ = collect_items(flickr, images, flickr.split("test")[:1])
    family.use_prompt(model, "kang")
    kang = family.collate(model, items, None, family.prepare(model, images, {"select_on": None}), 128, images)
    lengths = kang.inputs["attention_mask"].sum(1)
    assert (kang.query_index == lengths[kang.batch_index] - 1).all()
    tokenizer = model.processor.tokenizer
    assert all(tokenizer.decode(kang.inputs["input_ids"][b, p]) == "." for b, p in
               zip(kang.batch_index.tolist(), kang.query_index.tolist()))
    word = family.collate(model, items, None, family.prepare(model, images, {"select_on": None, "query_row": "word"}),
                          128, images)
    assert (word.query_index < lengths[word.batch_index] - 1).all()


def test_the_cli_writes_a_ground_run_and_refuses_choosing_on_the_probed_split(world, tmp_path, capsys):
    save_model_folder("llava", tmp_path / "ckpt", layers=4, image_size=112)
    common = ["ground", "--ckpt", str(tmp_path / "ckpt"), "--flickr30k", str(world["flickr"]), "--images",
              str(world["images"]), "--quiet", "--k", "1", "--readout", "paper", "--choice", "gold"]
    assert probe_main([*common, "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "heads chosen on train" in shown and "gold/k1/paper" in shown
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"ground.csv", "ground.png", "run.json"}
    assert not (tmp_path / "out" / ".ground-plan.json").exists()  # a finished run leaves nothing to resume
    assert probe_main([*common, "--select-on", "test", "--out", str(tmp_path / "again")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--select-on test" in error[0] and "another split" in error[0]
    assert probe_main([*common, "--view", "pad", "--ckpt", str(tmp_path / "ckpt"), "--out", str(tmp_path / "v")]) == 0


def test_a_view_the_model_cannot_take_is_refused_in_one_line(world, tmp_path, capsys):
    save_model_folder("qwen2_vl", tmp_path / "qwen")
    code = probe_main(["ground", "--ckpt", str(tmp_path / "qwen"), "--flickr30k", str(world["flickr"]), "--images",
                       str(world["images"]), "--quiet", "--view", "pad", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and "--view pad" in error[0] and "processor" in error[0]


def test_kangs_heads_are_chosen_on_the_selection_split_not_the_probed_one(tmp_path):
    """The head is planted only on the val split's images: chosen with --select-on val, it is found; were the
    prompts read from the probed split (as before), the planted head would have no more votes than any other."""
    root = _write_world(tmp_path)
    ids = root["ids"]
    (root["flickr"] / "val.txt").write_text("\n".join(ids[:3]) + "\n")
    (root["flickr"] / "test.txt").write_text("\n".join(ids[3:]) + "\n")
    original = DecoderFamily.rows

    def on_val_only(self, model, batch, site, mask="posthoc", precision="fp32"):
        out = original(self, model, batch, site, mask, precision)
        gold = batch.targets["pointing"].float()
        for i, b in enumerate(batch.batch_index.tolist()):
            if batch.image_ids[b] in ids[:3]:
                out[2, i, 1] = 0.9 * gold[i] / gold[i].sum().clamp(min=1)
        return out

    model = DecoderFamily().load(BUILDERS["llava"](layers=4))
    with mock.patch.object(DecoderFamily, "rows", on_val_only):
        result = vb_probe.entity_grounding(model, None, root["flickr"], root["images"], progress=False,
                                           select_on="val")
    chosen = result.extras["localization"]["unsupervised_selection"]
    assert chosen["split"] == "val" and chosen["prompts"] == 6  # three val images, two phrases each
    assert (chosen["heads"][0]["layer"], chosen["heads"][0]["head"]) == (2, 1)
    assert chosen["heads"][0]["votes"] == 6 and "elbow" in chosen and chosen["candidates"]
    assert all({"mean_image_share", "mean_spatial_entropy", "votes"} <= set(c) for c in chosen["candidates"])
    assert torch.is_tensor(result.accuracy) or isinstance(result.accuracy, np.ndarray)


# ------------------------------------------------------------------------------------------- sinks

SINK_DIM, MASSIVE = 5, 1000.0


def test_the_massive_ratio_by_hand():
    """[3, 4, 0, 0] has RMS √(25 / 4) = 2.5: its largest |value| 4 is 1.6 × the RMS; over dims {0} it is 3 / 2.5 =
    1.2. A state of 31 ones and one 200: RMS √((31 + 40000) / 32) = 35.37, ratio 200 / 35.37 = 5.655; of 255 ones
    and one 1000: RMS √((255 + 10⁶) / 256) = 62.55, ratio 15.99: a massive value is relative to the whole state."""
    from vb_probe.metrics.sinks import found_dims, massive_ratio, sink_tokens

    ratio, dim = massive_ratio(torch.tensor([[3.0, 4.0, 0.0, 0.0]]))
    assert ratio.item() == pytest.approx(1.6) and dim.item() == 1
    ratio, dim = massive_ratio(torch.tensor([[3.0, 4.0, 0.0, 0.0]]), torch.tensor([0]))
    assert ratio.item() == pytest.approx(1.2) and dim.item() == 0
    state = torch.ones(32)
    state[7] = 200.0
    assert massive_ratio(state)[0].item() == pytest.approx(200 / math.sqrt(40031 / 32), rel=1e-6)
    # a token is a sink when it reaches 20 in any layer from the third on
    ratios = torch.tensor([[[25.0, 1.0]], [[25.0, 1.0]], [[1.0, 19.0]], [[1.0, 20.0]]])  # [layer, B, R]
    assert sink_tokens(ratios).tolist() == [[False, True]]
    assert found_dims(torch.tensor([0, 90, 0, 6, 4])) == [1]  # 90 of 100 already hold 90%
    assert found_dims(torch.tensor([0, 80, 0, 15, 5])) == [1, 3]  # 80 + 15: the fewest holding 90%


def _with_a_sink(heads: dict):
    """DecoderFamily.rows with a massive value written into one image token's residual (dim 5, after decoder
    layer 1: the stream carries it to layers 2 and 3) at each image's cell farthest from the gold, and ``heads``
    planted: name → (layer, head) of "sink" (0.5 on that cell, 0.4 over the gold cells), "sink_only" (0.9 on
    that cell) and "gold" (0.9 over the gold cells)."""
    original = DecoderFamily.rows

    def rows(self, model, batch, site, mask="posthoc", precision="fp32"):
        far = []
        for b in range(len(batch.image_ids)):
            width, height = (float(v) for v in batch.extras["image_sizes"][b])
            first = int(np.flatnonzero(batch.batch_index.numpy() == b)[0])
            far.append(_far_cell(np.asarray(batch.cells[b]), width, height,
                                 np.asarray(batch.scored[first].gold).reshape(-1, 4)))
        where = batch.extras["image_positions"][torch.arange(len(far)), torch.tensor(far)]  # [B]

        def write(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[torch.arange(len(far)), where, SINK_DIM] += MASSIVE
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        handle = model.get_decoder().layers[1].register_forward_hook(write)
        try:
            out = original(self, model, batch, site, mask, precision)
        finally:
            handle.remove()
        gold = batch.targets["pointing"].float()
        spread = gold / gold.sum(-1, keepdim=True).clamp(min=1)
        for i, b in enumerate(batch.batch_index.tolist()):
            if "sink" in heads:
                layer, head = heads["sink"]
                out[layer, i, head] = 0.4 * spread[i]
                out[layer, i, head, far[b]] = 0.5
            if "sink_only" in heads:
                layer, head = heads["sink_only"]
                out[layer, i, head] = 0.0
                out[layer, i, head, far[b]] = 0.9
            if "gold" in heads:
                layer, head = heads["gold"]
                out[layer, i, head] = 0.9 * spread[i]
        return out

    return mock.patch.object(DecoderFamily, "rows", rows)


def test_a_massive_value_in_one_image_tokens_residual_is_found_as_a_sink_and_masking_it_moves_the_peak(world):
    model = DecoderFamily().load(BUILDERS["llava"](layers=4, image_size=112, pad=True, hidden=1024))
    with _with_a_sink({"sink": (2, 1)}):
        result = vb_probe.entity_grounding(model, None, world["flickr"], world["images"], progress=False, sinks=True)
    block = result.extras["sinks"]
    assert block["dims"]["found"] == [SINK_DIM]  # found from the model: no dimension was given
    assert block["images"] == 6 and block["sinks_per_image"] == 1.0 and block["images_with_sinks"] == 6
    assert block["sinks_per_layer"] == [1.0, 1.0]  # layers 2 and 3 carry it; the write came after layer 1
    assert block["share_of_sinks_in_gold"] == 0.0 and 0 < block["share_of_cells_in_gold"] < 1
    # the planted head's peak is the sink cell (outside the gold): 0 by the pointing rule; masked, 1.0
    assert result.accuracy[2, 1] == 0.0
    assert block["accuracy_sinks_masked"][2][1] == 1.0
    assert block["share_on_sinks"][2][1] == pytest.approx(0.5 / 0.9, abs=1e-6)
    assert [(h["layer"], h["head"]) for h in block["sink_heads"]] == [(2, 1)]


def test_the_sink_audit_leaves_the_models_logits_unchanged(world):
    """The audit's hooks read the stream; the forward's logits are bit for bit the same with them and without."""
    from vb_probe.families.decoder.sinks import SinkTally
    from vb_probe.queries import collect_items

    model = DecoderFamily().load(BUILDERS["llava"](layers=4))
    family = DecoderFamily()
    flickr, images = vb_probe.Flickr30kEntities(world["flickr"]), vb_probe.data.images.ImageFolder(world["images"])
    items, _ = collect_items(flickr, images, flickr.split("test")[:2])
    batch = family.collate(model, items, None, family.prepare(model, images, {"select_on": None}), 128, images)
    with torch.no_grad():
        plain = model(**batch.inputs).logits
        tally = family.sink_tally(model, ())
        with tally.watching(model, batch):
            audited = model(**batch.inputs).logits
    assert torch.equal(plain, audited) and len(tally._ratios) == 4  # one [B, R] a layer
    assert tally._ratios[0].shape == batch.extras["image_positions"].shape and isinstance(tally, SinkTally)
    assert all(not m._forward_hooks for m in model.get_decoder().layers)  # removed on exit


def test_a_sink_head_that_gets_every_vote_is_left_out_on_request(world):
    """L2H0 puts 0.9 on the sink cell (one cell: entropy 0, high image share) and wins every vote over L2H1, a
    clean gold blob (entropy 0 too: the tie goes to the lower head); with --sink-filter audit the audit on the
    selection split drops it and the run says so."""
    model = DecoderFamily().load(BUILDERS["llava"](layers=4, image_size=112, pad=True, hidden=1024))
    plain = {"sink_only": (2, 0), "gold": (2, 1)}
    with _with_a_sink(plain):
        chosen = vb_probe.ground(model, None, world["flickr"], world["images"], progress=False, ks=(1,),
                                 choices=("fixed",), readouts=("paper",))
    with _with_a_sink(plain):
        cleaned = vb_probe.ground(model, None, world["flickr"], world["images"], progress=False, ks=(1,),
                                  choices=("fixed",), readouts=("paper",), sink_filter="audit")
    assert chosen.selection["plan"]["sets"]["fixed"][0] == [2, 0] and chosen.selection["excluded"] == []
    assert cleaned.selection["excluded"] == [[2, 0]]
    assert cleaned.selection["plan"]["sets"]["fixed"][0] == [2, 1]
    assert cleaned.accuracy("fixed/k1/paper") > chosen.accuracy("fixed/k1/paper")
    assert cleaned.config["sink_filter"] == "audit" and "sinks" in cleaned.probe.extras
    # the released code's bottom-row rule: the sink cell (the far corner) is on the bottom row of some images only
    with _with_a_sink(plain):
        bottom = vb_probe.ground(model, None, world["flickr"], world["images"], progress=False, ks=(1,),
                                 choices=("fixed",), readouts=("paper",), sink_filter="bottom-row")
    assert bottom.selection["sink_filter"] == "bottom-row" and "sinks" not in bottom.probe.extras
    fixed = {tuple(h) for h in bottom.selection["plan"]["sets"]["fixed"]}
    assert fixed and fixed.isdisjoint(tuple(h) for h in bottom.selection["excluded"])


def test_the_released_codes_bottom_row_rule_by_hand():
    """Four prompts, three heads: the largest bottom-row attention 0.1, 0.1, 0, 0 (above 0.05 on half the prompts:
    dropped); 0.06, 0, 0, 0 (a quarter: kept); 0.05 on every prompt (not above: kept)."""
    from vb_probe.families.decoder.localization import bottom_row_heads

    bottom = torch.tensor([[0.1, 0.06, 0.05], [0.1, 0.0, 0.05], [0.0, 0.0, 0.05], [0.0, 0.0, 0.05]])[:, None, :]
    assert bottom_row_heads(bottom) == [(0, 0)]


def test_kangs_one_criterion_ablations_choose_other_heads(world):
    """Image share alone picks the distractor (share 0.9 against the planted head's 0.8) and misses on its
    queries; entropy alone, with no elbow cut, still finds the planted head (every other map is never localized)."""
    model = DecoderFamily().load(BUILDERS["llava"](layers=4, image_size=168, pad=True))
    with _planted():
        result = vb_probe.ground(model, None, world["flickr"], world["images"], progress=False, ks=(1,),
                                 readouts=("paper",), choices=("fixed", "share-only", "entropy-only"))
    sets = result.selection["plan"]["sets"]
    assert tuple(sets["share-only"][0]) == DISTRACTOR and tuple(sets["entropy-only"][0]) == PLANTED
    assert tuple(sets["fixed"][0]) == PLANTED
    assert result.accuracy("share-only/k1/paper") < result.accuracy("fixed/k1/paper")


def test_an_interrupted_ground_run_resumes_without_choosing_again(world, tmp_path):
    """The plan chosen on the selection split is kept in --out until the run is whole: a run stopped in the probed
    pass resumes from it (the selection pass not run again) and gives the same boxes as an uninterrupted run."""
    import vb_probe.grounding_harness as harness

    model = DecoderFamily().load(BUILDERS["llava"](layers=4, image_size=112))
    options = dict(progress=False, ks=(1,), readouts=("paper",), choices=("gold", "random"))
    whole = vb_probe.ground(model, None, world["flickr"], world["images"], **options)
    from vb_probe import pipeline

    passes = []
    real = pipeline.run_probes

    def stopping(cfg, *args, **kwargs):
        passes.append(cfg.split)
        if cfg.split == "test" and len(passes) == 2:
            raise KeyboardInterrupt  # stopped in the probed pass
        return real(cfg, *args, **kwargs)

    with mock.patch.object(pipeline, "run_probes", stopping), pytest.raises(KeyboardInterrupt):
        vb_probe.ground(model, None, world["flickr"], world["images"], out=tmp_path / "run", **options)
    assert (tmp_path / "run" / ".ground-plan.json").is_file()
    with mock.patch.object(pipeline, "run_probes", stopping):
        resumed = vb_probe.ground(model, None, world["flickr"], world["images"], out=tmp_path / "run", resume=True,
                                  **options)
    assert passes == ["train", "test", "test"]  # the selection pass ran once
    assert resumed.rows == whole.rows and resumed.selection["plan"] == whole.selection["plan"]
    assert not (tmp_path / "run" / ".ground-plan.json").exists() and harness.PLAN_FILE == ".ground-plan.json"
