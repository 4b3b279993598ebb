"""Decoder VLMs (LLaVA, LLaVA-NeXT/OneVision, Qwen2/2.5/3-VL, PaliGemma, Gemma 3, InternVL, Idefics3, SmolVLM, Llama
3.2 Vision) as one family: tiny random models built in memory with their real
processors. Rows against eager output_attentions with the logits unchanged; geometry against each processor's own
pixels on three aspect ratios and against Qwen2-VL's own position ids; words through word_ids(); LLaVA's crop
skipping what it cuts away; a planted head found by the gold probe and by the criterion without boxes; hub ids,
sharded checkpoints, device_map and two torchrun processes giving the one-process tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from decoder_fixtures import BUILDERS, save_model_folder, tiny_llava
from fixtures import lay_out_hub_cache
from PIL import Image
from test_vilt import _write_world

import vb_probe
from vb_probe.cli import main as probe_main
from vb_probe.data.images import ImageFolder
from vb_probe.families import family_of
from vb_probe.families.decoder import DecoderFamily, image_cells
from vb_probe.families.decoder.kinds import kind_of
from vb_probe.families.decoder.rows import register
from vb_probe.queries import collect_items

KINDS = list(BUILDERS)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _write_world(tmp_path_factory.mktemp("decoder_world"))


def _probe_ready(kind: str, **options):
    model = BUILDERS[kind](**options)
    return DecoderFamily().load(model)


def _batch(model, world, n_items: int = 4):
    family = family_of(model)
    flickr, images = vb_probe.Flickr30kEntities(world["flickr"]), ImageFolder(world["images"])
    items, _ = collect_items(flickr, images, flickr.split("test"))
    facts = family.prepare(model, images, {})
    return family, items[:n_items], family.collate(model, items[:n_items], family.tokenizer_of(model), facts, 64, images)


# ------------------------------------------------------------------------------------------- rows

@pytest.mark.parametrize("kind", KINDS)
def test_rows_equal_eager_attention_and_the_logits_are_unchanged(kind, world):
    """Every query's row over the image tokens equals eager output_attentions (≤ 1e-6) through padding of several
    prompt lengths, and the model's logits are those of eager attention."""
    model = _probe_ready(kind)
    family, items, batch = _batch(model, world)
    assert len(set(batch.inputs["attention_mask"].sum(1).tolist())) > 1  # right padding is exercised
    with torch.no_grad():
        rows = family.rows(model, batch, family.sites(model)[0])
        captured_logits = model(**batch.inputs).logits
        model.set_attn_implementation({"text_config": "eager", "vision_config": "eager"})
        eager = model(**batch.inputs, output_attentions=True)
    first = len(eager.attentions) - model.config.get_text_config().num_hidden_layers  # the language model's layers
    layers = [eager.attentions[first + i] for i in kind_of(model).site_layers(model)]  # (mllama: its cross layers)
    positions = batch.extras["image_positions"]
    for q, (b, position) in enumerate(zip(batch.batch_index.tolist(), batch.query_index.tolist())):
        cells = int(batch.region_valid[q].sum())
        for layer, maps in enumerate(layers):
            expected = maps[b, :, position, positions[b, :cells]]  # [head, cells]
            torch.testing.assert_close(rows[layer, q, :, :cells], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(captured_logits, eager.logits, rtol=0, atol=1e-5)
    text = model.config.get_text_config()
    full = [i for i, t in enumerate(getattr(text, "layer_types", None) or ["full"] * len(rows)) if t != "sliding_attention"]
    assert float(rows.sum(-1).max()) <= 1.0 + 1e-6 and float(rows[full].sum(-1).min()) > 0.0  # an image share
    # (a sliding-window layer's caption word may be too far from the image to see it: Gemma 3's first layer)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "paligemma"])
def test_the_batch_is_what_the_processor_makes_of_the_whole_prompt(kind, world):
    """Each row of a batch (its ids and the token types the model's mask reads: Gemma 3's bidirectional image
    block, Qwen's rotary positions) equals the model's processor run on the whole prompt with the image."""
    model = _probe_ready(kind)
    family, items, batch = _batch(model, world, 2)
    template = model.prompt_template
    for b, item in enumerate(items):
        image = ImageFolder(world["images"]).image(item.image_id)
        theirs = model.processor(images=image, text=template.prefix + " ".join(item.words) + template.suffix,
                                 return_tensors="pt", **kind_of(model).processor_options(model))
        length = int(batch.inputs["attention_mask"][b].sum())
        for key in theirs.keys() & batch.inputs.keys() - {"pixel_values", "attention_mask"}:
            value = batch.inputs[key][b]
            assert torch.equal(value[:length] if value.dim() else value, theirs[key][0]), key
        assert {"input_ids"} | ({"token_type_ids"} if kind == "gemma3" else set()) <= theirs.keys() & batch.inputs.keys()


def test_paligemmas_caption_reads_a_bidirectional_prefix(world):
    """PaliGemma's image and prompt form the bidirectional prefix (token type 0); the caption is the suffix (1)."""
    model = _probe_ready("paligemma")
    _, _, batch = _batch(model, world, 1)
    types, ids = batch.inputs["token_type_ids"][0], batch.inputs["input_ids"][0]
    image = int((ids == model.config.image_token_id).sum())
    assert image == 16 and types[:image].sum() == 0 and int(types[batch.query_index[0]]) == 1
    prompt = model.processor.tokenizer.decode(ids[image:int(batch.inputs["attention_mask"][0].sum())])
    assert prompt.startswith("<s>caption en\n") and "a man" in prompt


# ------------------------------------------------------------------------------------------- geometry

SIZES = [(90, 60), (60, 90), (128, 40)]  # width, height: wide, tall, very wide


def _gradient(width: int, height: int) -> Image.Image:
    """Red rises with x, green with y, blue constant: a pixel tells where in the original it came from."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], -1).round().astype(np.uint8))


def _cell_means(kind: str, model, image: Image.Image, cells) -> np.ndarray:
    """[R, 2] mean (red, green) of each image token's pixels as the processor made them, unnormalised: LLaVA and
    PaliGemma from the pixel grid, Qwen2-VL from its flattened patches (merge² patches a token, in token order)."""
    processor = model.processor.image_processor
    if kind.startswith("qwen"):  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL: flattened patches, merge² a token
        out = processor(image, do_normalize=False, return_tensors="pt")
        patches = out["pixel_values"].reshape(-1, 3, processor.temporal_patch_size, processor.patch_size,
                                              processor.patch_size)
        per_token = patches.reshape(len(cells.boxes), processor.merge_size ** 2, 3, -1)
        return per_token[:, :, :2].mean(dim=(1, 3)).numpy() * 255
    views = model.processor(images=image, text=model.prompt_template.prefix, do_normalize=False,
                            return_tensors="pt", **kind_of(model).processor_options(model))["pixel_values"]
    views = views.flatten(0, views.dim() - 4)  # [V, 3, H, W]: LLaVA-NeXT's [1, V, …] too
    if kind == "mllama":  # its tiles laid back on their canvas, which the cells are a grid over
        (tile_rows, tile_cols), _ = kind_of(model).canvas(model, *image.size)
        tiles = views[:tile_rows * tile_cols]
        side = tiles.shape[-1]
        views = tiles.reshape(tile_rows, tile_cols, 3, side, side).permute(2, 0, 3, 1, 4).reshape(
            1, 3, tile_rows * side, tile_cols * side)
    means = []
    for pixels in views:  # the whole image, then each crop or tile: the same grid each
        rows, cols = cells.grid
        h, w = pixels.shape[1] // rows, pixels.shape[2] // cols  # (a 384² view in 14-pixel patches: 27 of 14 px)
        blocks = pixels[:2, :rows * h, :cols * w].reshape(2, rows, h, cols, w).mean(dim=(2, 4))  # [2, rows, cols]
        means.append(blocks.permute(1, 2, 0).reshape(-1, 2).numpy() * 255)
    means = np.concatenate(means)
    if kind in ("llava_next", "llava_onevision"):  # the model's own packing of the views' cell means: the cells it
        # keeps after unpadding (and OneVision's bilinear shrinking), in its order, newlines dropped
        per_view = torch.from_numpy(means.reshape(len(views), rows * cols, 2)).double()
        packed = kind_of(model).pack(model, per_view, torch.tensor([[image.size[1], image.size[0]]]),
                                     torch.full((2,), float("nan"), dtype=torch.float64))
        packed = torch.cat(packed).numpy()
        means = packed[~np.isnan(packed[:, 0])]
    if kind in ("internvl", "idefics3", "smolvlm") and cells.slots is not None:  # pixels in prompt order (tiles,
        # then the whole image)
        in_cell_order = np.empty_like(means)
        in_cell_order[cells.slots] = means
        means = in_cell_order
    return means


GEOMETRIES = [(kind, {}) for kind in KINDS] + [("gemma3", {"pan_and_scan": True})]


@pytest.mark.parametrize("kind,options", GEOMETRIES, ids=[k + ("-pan-and-scan" if o else "") for k, o in GEOMETRIES])
@pytest.mark.parametrize("size", SIZES)
def test_cells_are_where_the_processor_put_the_pixels(kind, options, size):
    """Each image token's cell (original pixels) holds, at its centre, the original position its pixels came from
    through the processor's resize, crop and pan-and-scan crops (a gradient image reads it back), to within a tenth
    of a cell."""
    model = _probe_ready(kind, **options)
    width, height = size
    cells = _check_geometry(kind, model, width, height)
    # pan and scan: 1.5:1 → round(1.5) = 2 crops of 45 px (≥ 32); 3.2:1 → round(3.2) = 3 crops of 43 px; +1 the whole
    if kind == "gemma3":
        assert len(cells.views) == (1 if not options else {(90, 60): 3, (60, 90): 3, (128, 40): 4}[size])


def _check_geometry(kind: str, model, width: int, height: int):
    """The gradient read back: each cell's centre is where its pixels came from (to a tenth of a cell)."""
    cells = image_cells(model, _gradient(width, height), "g")
    views = len(cells.views)
    if kind not in ("llava_next", "llava_onevision"):  # (they drop their tiles' padding)
        assert len(cells.boxes) == views * cells.grid[0] * cells.grid[1]
    means = _cell_means(kind, model, _gradient(width, height), cells)
    centre_x = (cells.boxes[:, 0] + cells.boxes[:, 2]) / 2
    centre_y = (cells.boxes[:, 1] + cells.boxes[:, 3]) / 2
    expected = np.stack([centre_x / (width - 1), centre_y / (height - 1)], 1) * 255
    cell_w = (cells.boxes[:, 2] - cells.boxes[:, 0]) / width * 255
    cell_h = (cells.boxes[:, 3] - cells.boxes[:, 1]) / height * 255
    if kind == "llava_onevision":  # its canvas shrunk bilinearly: a token spans the spacing between tokens, so the
        # cells of a row abut, no gaps, no overlaps
        tile = cells.view_of > 0  # (within a tile: between tiles lies the band no patch covers, if any)
        same_row = (tile[:-1] & tile[1:] & np.isclose(cells.boxes[:-1, 1], cells.boxes[1:, 1])
                    & (cells.view_of[:-1] == cells.view_of[1:]))
        assert same_row.sum() > 10
        np.testing.assert_allclose(cells.boxes[:-1, 2][same_row], cells.boxes[1:, 0][same_row], atol=1e-3)
    # LLaVA-NeXT's tiles are padded in the middle and the model keeps a cell part padding at each edge (its pixels
    # part black): those are read where they lie whole in the image
    inside = ((cells.boxes[:, 0] >= -0.5) & (cells.boxes[:, 1] >= -0.5) & (cells.boxes[:, 2] <= width + 0.5)
              & (cells.boxes[:, 3] <= height + 0.5))
    assert inside.mean() > (0.3 if kind == "mllama" else 0.6)  # (mllama pads its canvas at the bottom and right)
    means, expected, cell_w, cell_h = means[inside], expected[inside], cell_w[inside], cell_h[inside]
    assert np.all(np.abs(means[:, 0] - expected[:, 0]) <= 0.1 * cell_w + 1.5), (means[:, 0], expected[:, 0])
    assert np.all(np.abs(means[:, 1] - expected[:, 1]) <= 0.1 * cell_h + 1.5), (means[:, 1], expected[:, 1])
    return cells


# The public checkpoints' processor settings (the README's table: image tokens of a 500 × 375 image): builder
# options giving each model's real tower and processor sizes, and the tokens its processor makes, by hand:
REAL_SETTINGS = {
    # CLIP 336/14: 24 × 24 = 576 base; 672² best (2 × 2 tiles), canvas 48 × 48 unpadded to 48 × 36 (375/500 · 48),
    # one newline a row: 576 + 1,728 + 36
    "llava_next": ({"image_size": 336, "patch": 14}, 2340),
    # SigLIP 384/14 read full: 27 × 27 = 729; 384 × 768 best (1 × 2 tiles), canvas 27 × 54 unpadded to 27 × 36:
    # 729 + 972 + 27
    "llava_onevision": ({"image_size": 384, "patch": 14, "most_tiles": 9, "grid_max": 6}, 1728),
    "qwen2_5_vl": ({"max_pixels": 12845056}, 234),  # smart_resize: 364 × 504 → 13 × 18 cells of 28
    "qwen3_vl": ({"max_pixels": 16777216}, 192),  # 384 × 512 → 12 × 16 cells of 32
    "gemma3": ({"image_size": 896, "patch": 14, "tokens": 256}, 256),  # 64 × 64 patches pooled 4 × 4
    "internvl": ({"tile": 448, "patch": 14}, 3328),  # 4:3 → 4 × 3 tiles and a thumbnail, 16 × 16 each: 13 × 256
    "idefics3": ({"tile": 364, "patch": 14}, 2197),  # 1456 × 1092 → 4 × 3 tiles and the global: 13 × 13 × 13
    "smolvlm": ({"tile": 384, "patch": 14, "scale": 3}, 1053),  # 1536 × 1152 → 4 × 3 and the global: 13 × 9 × 9
    "mllama": ({"tile": 560, "patch": 14}, 1600),  # one 560² tile (its canvas), 40 × 40 patches (keys, not tokens)
}


@pytest.mark.parametrize("kind", list(REAL_SETTINGS))
def test_the_public_settings_give_the_readmes_token_counts_and_their_geometry(kind):
    """Each model with its public checkpoints' tower and processor sizes: a 500 × 375 image makes the tokens the
    README's table says, and the gradient reads back through every view at that size."""
    options, expected = REAL_SETTINGS[kind]
    model = _probe_ready(kind, **options)
    cells = _check_geometry(kind, model, 500, 375)
    if kind == "mllama":
        assert len(cells.keys) == expected
    else:
        ids = cells.processed["input_ids"][0]
        assert int((ids == kind_of(model).image_token_id(model)).sum()) == expected
        assert kind_of(model).token_count(model, 500, 375) == expected


def test_patches_that_do_not_fill_a_view_leave_its_last_pixels_unread():
    """SmolVLM-Instruct's 384² views in 14-pixel patches: 27 patches (378 pixels) a side, merged 3 × 3 into 9 × 9
    tokens of 42 pixels. The global view squashes 500 × 375 onto 384²: its cells are 42 · 500/384 = 54.6875 pixels
    wide and end at 378 · 500/384 = 492.1875 (the last 6 view pixels, 7.8 of the image's, are read by no patch);
    cells of 384/9 = 42.67 view pixels would end at 500."""
    model = _probe_ready("smolvlm", tile=384, patch=14, scale=3)
    cells = image_cells(model, _gradient(500, 375), "g")
    whole = cells.boxes[:81]  # the global view's cells come first
    np.testing.assert_allclose(whole[0], [0, 0, 54.6875, 375 * 42 / 384], rtol=1e-5)
    np.testing.assert_allclose(whole[:, 2].max(), 492.1875, rtol=1e-6)
    np.testing.assert_allclose(cells.seen, [0, 0, 492.1875, 375 * 378 / 384], rtol=1e-6)


def test_grids_follow_each_processor():
    """LLaVA: a square crop of the short side (4 × 4 here, 24 × 24 at 336); PaliGemma: 4 × 4 squashed, the whole
    image; Qwen2-VL: smart_resize to multiples of 28, the grid from image_grid_thw."""
    llava, qwen, pali = _probe_ready("llava"), _probe_ready("qwen2_vl"), _probe_ready("paligemma")
    wide = _gradient(128, 40)
    cells = image_cells(llava, wide, "w")
    assert cells.grid == (4, 4)
    np.testing.assert_allclose(cells.view.seen(), [44, 0, 84, 40], atol=0.5)  # 40 × 40 in the middle, 128 → 179 px
    cells = image_cells(pali, wide, "w")
    assert cells.grid == (4, 4) and np.allclose(cells.view.seen(), [0, 0, 128, 40])
    cells = image_cells(qwen, wide, "w")
    thw = cells.processed["image_grid_thw"][0].tolist()
    assert cells.grid == (thw[1] // 2, thw[2] // 2) and cells.grid[1] > cells.grid[0]


def test_llava_pads_to_a_square_when_its_processor_says_so():
    model = DecoderFamily().load(tiny_llava(pad=True))
    cells = image_cells(model, _gradient(128, 40), "w")
    np.testing.assert_allclose(cells.view.seen(), [0, -44, 128, 84], atol=0.5)  # the whole image, padded above/below
    means = _cell_means("llava", model, _gradient(128, 40), cells)
    inside = (cells.boxes[:, 1] >= 0) & (cells.boxes[:, 3] <= 40)
    centre_x = (cells.boxes[inside, 0] + cells.boxes[inside, 2]) / 2
    assert np.all(np.abs(means[inside, 0] - centre_x / 127 * 255) <= 5)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_token_order_matches_its_own_position_ids(kind, world):
    """The image tokens' 3-D rotary positions, as the model computes them, are (row, column) of our row-major grid."""
    model = _probe_ready(kind)
    _, _, batch = _batch(model, world, 2)
    positions, _ = model.model.get_rope_index(batch.inputs["input_ids"], batch.inputs["mm_token_type_ids"],
                                              batch.inputs["image_grid_thw"], None, batch.inputs["attention_mask"])
    for b in range(2):
        image = batch.extras["image_positions"][b]
        rows, cols = batch.extras["grids"][b].tolist()
        image = image[:rows * cols]
        h_ids, w_ids = positions[1, b, image], positions[2, b, image]
        cell = torch.arange(rows * cols)
        assert torch.equal(h_ids - h_ids.min(), cell // cols) and torch.equal(w_ids - w_ids.min(), cell % cols)


@pytest.mark.parametrize("size", SIZES)
def test_llava_next_token_order_is_its_own_forwards(size):
    """The features LLaVA-NeXT's forward puts at its image tokens (its get_image_features: tower, projector, unpad,
    newlines) are, slot by slot, the tower's feature of the view, row and column our cell names; the newline
    slots hold the model's image_newline."""
    model = _probe_ready("llava_next")
    width, height = size
    cells = image_cells(model, _gradient(width, height), "g")
    pixels, sizes = cells.processed["pixel_values"], cells.processed["image_sizes"]
    with torch.no_grad():
        packed = model.model.get_image_features(pixels, sizes, vision_feature_layer=-1,
                                                vision_feature_select_strategy="default").pooler_output
        packed = torch.cat(list(packed)) if isinstance(packed, (list, tuple)) else packed  # [T, D]
        tower = model.model.vision_tower(pixels[0], output_hidden_states=True).hidden_states[-1][:, 1:]
        per_view = model.model.multi_modal_projector(tower)  # [V, rows · cols, D]
    from vb_probe.families.decoder.kinds.llava_next import BASE, NEWLINE, packed_order, tile_columns

    order = packed_order(kind_of(model), model, height, width, len(cells.views))  # what the cells were built from
    assert len(packed) == len(cells.slots) == len(order)
    rows, cols = cells.grid
    columns = tile_columns(model, height, width)
    for slot, cell in enumerate(cells.slots):
        flag, y, x = (int(round(v)) for v in order[slot])
        if cell < 0:  # a row's newline: no cell
            assert flag == NEWLINE
            torch.testing.assert_close(packed[slot], model.model.image_newline, rtol=0, atol=0)
            continue
        # the base view's (row, column), or the tile canvas's: tile (y // rows, x // cols), cell (y % rows, x % cols)
        view, row, col = (0, y, x) if flag == BASE else (1 + (y // rows) * columns + x // cols, y % rows, x % cols)
        assert cells.view_of[cell] == view
        torch.testing.assert_close(packed[slot], per_view[view, row * cols + col], rtol=0, atol=1e-6)
        others = (per_view[view] - packed[slot]).abs().amax(-1) < 1e-6  # and no other cell of the view
        assert int(others.sum()) == 1
    base = rows * cols  # the base view whole, first, row-major
    assert list(cells.slots[:base]) == list(range(base))


def test_internvl_token_order_is_its_own_pixel_shuffle():
    """InternVL's tokens of a tile: its model's own pixel_shuffle on index features (each patch's row and column)
    puts patches (2R, 2C), (2R, 2C + 1), (2R + 1, 2C), (2R + 1, 2C + 1) in token R · columns + C: the row-major grid
    the cells are; and a tiled image's prompt reads the tiles, then the whole image."""
    model = _probe_ready("internvl")
    side = 8  # patches a side of a tile (56 / 7)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    index = torch.stack([rows, cols], -1).float()[None]  # [1, 8, 8, 2]
    shuffled = model.model.pixel_shuffle(index, scale_factor=model.config.downsample_ratio)  # [1, 4, 4, 8]
    tokens = shuffled.reshape(-1, 4, 2)  # [16, the 4 patches, (row, column)], as get_image_features flattens it
    for token in range(16):
        r, c = divmod(token, 4)
        patches = {tuple(int(v) for v in p) for p in tokens[token]}
        assert patches == {(2 * r, 2 * c), (2 * r, 2 * c + 1), (2 * r + 1, 2 * c), (2 * r + 1, 2 * c + 1)}
    cells = image_cells(model, _gradient(128, 40), "w")  # 3 × 1 tiles and the whole image
    assert cells.views == ("image", "tile 1,1", "tile 1,2", "tile 1,3")
    assert list(cells.slots[:16]) == list(range(16, 32)) and list(cells.slots[-16:]) == list(range(16))


def test_idefics3_token_order_is_its_own_connectors_and_markers_are_no_image_tokens(world):
    """Idefics3's connector's own pixel_shuffle on index features puts the 2 × 2 patches of (R, C) in token
    R · columns + C; its prompt's tile markers (<fake_token_around_image>, <row_r_col_c>, <global-img>) and row
    newlines are not among the image tokens read, and the global image's tokens, last in the prompt, are the first
    cells."""
    model = _probe_ready("idefics3")
    side = 8
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    index = torch.stack([rows, cols], -1).float().reshape(1, side * side, 2)  # [1, 64 patches, (row, column)]
    tokens = model.model.connector.pixel_shuffle(index, model.config.scale_factor).reshape(16, 4, 2)
    for token in range(16):
        r, c = divmod(token, 4)
        patches = {tuple(int(v) for v in p) for p in tokens[token]}
        assert patches == {(2 * r, 2 * c), (2 * r, 2 * c + 1), (2 * r + 1, 2 * c), (2 * r + 1, 2 * c + 1)}
    family, items, batch = _batch(model, world, 2)
    tokenizer = family.tokenizer_of(model)
    for b in range(2):
        n = int(batch.region_valid[batch.batch_index == b][0].sum())
        read = batch.inputs["input_ids"][b, batch.extras["image_positions"][b, :n]]
        assert set(read.tolist()) == {tokenizer.convert_tokens_to_ids("<image>")}
        ids = batch.inputs["input_ids"][b].tolist()
        assert ids.count(tokenizer.convert_tokens_to_ids("<image>")) == n  # every image token is a cell
        assert tokenizer.convert_tokens_to_ids("<row_1_col_1>") in ids  # and the markers are there
        first_global = ids.index(tokenizer.convert_tokens_to_ids("<global-img>")) + 1
        assert int(batch.extras["image_positions"][b, 0]) == first_global


def test_mllama_reads_the_image_in_its_cross_layers_with_keys_tile_by_tile(world):
    """Llama 3.2 Vision: the site is its cross-attention layers; a cell's key is tile · (patches + 1) + 1 + patch,
    the class token first in each tile (its vision model's own apply_class_embedding on index states), tiles in
    the model's flattening order; queries before the <|image|> token may not read it (the cross mask the
    processor module builds), and the image's padding is outside the view."""
    model = _probe_ready("mllama")
    family, items, batch = _batch(model, world, 2)
    site = family.sites(model)[0]
    assert (site.name, site.layers) == ("cross", 1) and kind_of(model).site_layers(model) == [1]
    states = torch.arange(16, dtype=torch.float32)[None, :, None].expand(1, 16, 32)  # patch k holds k
    with torch.no_grad():
        with_class = model.model.vision_model.apply_class_embedding(states)
    assert torch.equal(with_class[0, 1:, 0], torch.arange(16.0))  # the class token first, then the patches
    cells = image_cells(model, _gradient(90, 60), "g")
    rows, cols = cells.grid  # 2 × 2 tiles of 4 × 4 patches
    assert (rows, cols) == (8, 8)
    # the cell at canvas row 5, column 6: tile (1, 1) → tile index 3, its patch (1, 2) → 6: key 3 · 17 + 1 + 6 = 58
    assert int(cells.keys[5 * cols + 6]) == 58
    assert int(cells.keys[0]) == 1 and sorted(cells.keys.tolist()) == [t * 17 + 1 + k for t in range(4) for k in range(16)]
    np.testing.assert_allclose(cells.seen, [0, 0, 90, 60])
    mask = batch.inputs["cross_attention_mask"]  # [B, T, 1, tiles]
    image_at = (batch.inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    assert int(mask[0, :image_at[0], 0].sum()) == 0 and bool(mask[0, image_at[0]:, 0, 0].all())


@pytest.mark.parametrize("kind", KINDS)
def test_each_word_maps_to_its_last_token(kind, world):
    """Queries sit on their word's last sub-word, after the image and inside the template; the caption tokens are
    those of the caption tokenized as one string (byte-level BPE: spaces kept with the words)."""
    model = _probe_ready(kind)
    family, items, batch = _batch(model, world, 2)
    tokenizer = family.tokenizer_of(model)
    words = [(b, item.words[query.word_index]) for b, item in enumerate(items) for query in item.queries]
    assert len(words) == len(batch.query_index) and not batch.truncated  # layout keeps the queries' order
    for (b, word), row, position in zip(words, batch.batch_index.tolist(), batch.query_index.tolist()):
        token = tokenizer.decode(batch.inputs["input_ids"][row, position]).strip()
        assert row == b and word.endswith(token) and token
        if kind_of(model).site(model).name == "self":  # (a cross-attention model's image is keys of its own)
            assert position > int(batch.extras["image_positions"][b].max())
    words = list(items[0].words)
    whole = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    sequence = batch.inputs["input_ids"][0].tolist()
    assert any(sequence[i:i + len(whole)] == whole for i in range(len(sequence)))


def test_llavas_crop_skips_phrases_it_cuts_away_with_a_reason(tmp_path):
    """A wide image's gold box entirely in the band LLaVA's centre crop removes: skipped as outside_view, counted."""
    from vb_probe.data.flickr30k import Annotation, Phrase, format_annotation, format_sentence

    flickr, images = tmp_path / "flickr", tmp_path / "images"
    for sub in (flickr / "Sentences", flickr / "Annotations", images):
        sub.mkdir(parents=True)
    _gradient(160, 40).save(images / "1.png")
    boxes = {1: np.array([[2, 2, 30, 38]], np.float32), 2: np.array([[70, 5, 90, 35]], np.float32)}
    (flickr / "Annotations" / "1.xml").write_text(format_annotation(Annotation("1", 160, 40, boxes, set(), set())))
    caption = (["a", "man", "and", "a", "dog", "."], [Phrase(0, ("a", "man"), 1, ("people",)),
                                                     Phrase(3, ("a", "dog"), 2, ("animals",))])
    (flickr / "Sentences" / "1.txt").write_text(format_sentence(*caption) + "\n")
    (flickr / "test.txt").write_text("1\n")
    result = vb_probe.entity_grounding(_probe_ready("llava"), None, flickr, images, progress=False)
    assert result.n == 1 and result.skipped == {"outside_view": 1} and result.n_phrases == 2


# ------------------------------------------------------------------------------------------- scoring

def _planted_rows(layer: int = 2, head: int = 1):
    """DecoderFamily.rows with one head replaced: 0.9 of the query's attention spread over the cells whose centre
    lies in its gold box (one blob), the rest of the heads the model's own."""
    original = DecoderFamily.rows

    def rows(self, model, batch, site, mask="posthoc", precision="fp32"):
        out = original(self, model, batch, site, mask, precision)
        gold = batch.targets["pointing"].float()
        out[layer, :, head] = 0.9 * gold / gold.sum(-1, keepdim=True).clamp(min=1)
        return out

    return mock.patch.object(DecoderFamily, "rows", rows)


PLANTED = {"llava": {}, "qwen2_vl": {}, "gemma3": {"pan_and_scan": True}, "llava_next": {}}  # one view; native
# resolution; the whole image and crops; the whole image and tiles


@pytest.mark.parametrize("kind", list(PLANTED))
def test_a_planted_localization_head_is_found_with_and_without_boxes(kind, world):
    model = DecoderFamily().load(BUILDERS[kind](layers=4, **PLANTED[kind]))
    with _planted_rows():
        result = vb_probe.entity_grounding(model, None, world["flickr"], world["images"], progress=False,
                                           select_on="val")
    assert result.accuracy[2, 1] == 1.0 and result.best_head().accuracy == 1.0  # the gold probe: best there is
    assert result.baselines["random"] < 0.6
    block = result.extras["localization"]
    chosen = block["unsupervised_selection"]["heads"]
    assert (chosen[0]["layer"], chosen[0]["head"]) == (2, 1) and chosen[0]["accuracy"] == 1.0
    assert chosen[0]["votes"] == block["unsupervised_selection"]["prompts"] == result.n  # every prompt's vote
    assert all(h["layer"] >= 2 for h in chosen)  # the first two layers are left out
    fixed = block["fixed_position"]
    assert fixed["chosen_on"] == "val" and 0.0 <= fixed["accuracy"] <= 1.0
    assert result.permuted.best_head().accuracy < 1.0  # shuffled cells break the planted head
    views = block.get("views")
    if kind in ("gemma3", "llava_next"):  # the world's images are read whole and in crops or tiles
        flickr, images = vb_probe.Flickr30kEntities(world["flickr"]), ImageFolder(world["images"])
        tiled = [i for i in flickr.split("test") if len(image_cells(model, images.image(i), i).views) > 1]
        assert views["queries"] == 2 * len(tiled) > 0  # two phrases an image
        # the planted map is even over the gold cells of every view: argmax takes the first, the whole image's
        assert views["selected"][0] == {"layer": 2, "head": 1, "primary_share": 1.0}
        assert 0.0 <= views["primary_share_all_heads"] <= 1.0
    else:
        assert views is None


def test_the_permuted_control_re_deals_cells_within_each_view():
    """One view: the same shuffle as before views existed; several: each view's cells among themselves."""
    from vb_probe.batching import image_permutation

    single = image_permutation("42", 12)
    assert np.array_equal(single, np.random.default_rng(int.from_bytes(
        __import__("hashlib").sha256(b"permuted-geometry:42").digest()[:8], "little")).permutation(12))
    assert np.array_equal(image_permutation("42", 12, np.zeros(12, np.int64)), single)
    view_of = np.repeat([0, 1, 2], 4)
    order = image_permutation("42", 12, view_of)
    assert sorted(order) == list(range(12)) and np.array_equal(view_of[order], view_of)
    assert not np.array_equal(order, np.arange(12))


def test_the_fixed_position_baseline_is_the_most_picked_place(world):
    """Every head made to point at the bottom-right cell: the baseline's place is the bottom-right, it holds all the
    picks, and its accuracy is the share of phrases whose gold covers that cell's centre, counted by hand."""
    original = DecoderFamily.rows

    def corner(self, model, batch, site, mask="posthoc", precision="fp32"):
        out = original(self, model, batch, site, mask, precision)
        last = batch.region_valid.sum(-1) - 1  # [n]
        out[:] = 0.0
        out[:, torch.arange(len(last)), :, last] = 0.5
        return out

    model = _probe_ready("paligemma")
    with mock.patch.object(DecoderFamily, "rows", corner):
        result = vb_probe.entity_grounding(model, None, world["flickr"], world["images"], progress=False)
    fixed = result.extras["localization"]["fixed_position"]
    assert fixed["share_of_picks"] == 1.0 and fixed["place"][0] > 0.85 and fixed["place"][1] > 0.85
    flickr = vb_probe.Flickr30kEntities(world["flickr"])
    images = ImageFolder(world["images"])
    expected = []
    for image_id in flickr.split("test"):
        cells = image_cells(model, images.image(image_id), image_id)
        cx, cy = (cells.boxes[-1, 0] + cells.boxes[-1, 2]) / 2, (cells.boxes[-1, 1] + cells.boxes[-1, 3]) / 2
        for caption in flickr.captions(image_id):
            for phrase in caption.phrases:
                gold = flickr.annotation(image_id).boxes[phrase.entity_id]
                expected.append(bool(((gold[:, 0] <= cx) & (cx <= gold[:, 2]) & (gold[:, 1] <= cy) & (cy <= gold[:, 3])).any()))
    assert fixed["accuracy"] == round(sum(expected) / len(expected), 6)
    assert result.best_head().accuracy == fixed["accuracy"]  # a head that only points there scores the same


# ------------------------------------------------------------------------------------------- loading and scale

def _save(kind: str, folder: Path, **options) -> Path:
    return save_model_folder(kind, folder, "200KB", **options)  # sharded, as the hub keeps 7B models


def test_hub_ids_and_sharded_checkpoints_load_offline(tmp_path, world, monkeypatch):
    folder = _save("qwen2_vl", tmp_path / "qwen")
    files = {p.name: p for p in folder.iterdir()}
    lay_out_hub_cache(tmp_path, "Qwen/Qwen2-VL-7B-Instruct", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = probe_main(["entity-grounding", "--ckpt", "Qwen/Qwen2-VL-7B-Instruct", "--flickr30k", str(world["flickr"]),
                       "--images", str(world["images"]), "--out", str(out), "--quiet", "--limit", "2"])
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert run["family"] == "decoder" and run["rule"] == "pointing" and run["model_type"] == "qwen2_vl"
    shards = run["checkpoint"]["shards"]
    assert run["checkpoint"]["hub_id"] == "Qwen/Qwen2-VL-7B-Instruct" and len(shards) > 1
    assert set(shards.values()) == {__import__("hashlib").sha256((folder / n).read_bytes()).hexdigest() for n in shards}
    assert "localization" in run and run["localization"]["unsupervised_selection"]["prompts"] == run["n_scored"]


def test_device_map_goes_to_transformers_loader_and_the_rows_are_the_same(tmp_path, world):
    """``device_map`` (and bf16) reach ``from_pretrained`` (accelerate places the weights; on one CPU it places them
    all there), the model is not moved afterwards, and the rows equal those of a plain load."""
    from transformers import LlavaForConditionalGeneration

    folder = _save("llava", tmp_path / "llava")
    plain = vb_probe.load_model(folder)
    real = LlavaForConditionalGeneration.from_pretrained.__func__
    seen = {}

    def spy(cls, *args, **kwargs):
        seen.update(kwargs)
        return real(cls, *args, **kwargs)

    with mock.patch.object(LlavaForConditionalGeneration, "from_pretrained", classmethod(spy)), \
            mock.patch.object(torch.nn.Module, "to", side_effect=AssertionError("moved after device_map")):
        spread = vb_probe.load_model(folder, device="cpu", device_map="auto")
    assert seen["device_map"] == "auto"
    family, _, batch = _batch(plain, world)
    with torch.no_grad():
        expected = family.rows(plain, batch, family.sites(plain)[0])
        got = family.rows(spread, batch, family.sites(spread)[0])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    half = vb_probe.load_model(folder, precision="bf16")
    assert next(half.parameters()).dtype == torch.bfloat16


def test_device_map_is_refused_for_a_single_device_family(tmp_path):
    from fixtures import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "vb")
    with pytest.raises(vb_probe.VbProbeError, match="--device-map"):
        vb_probe.load_model(ckpt, device_map="auto")


def test_two_torchrun_processes_give_the_one_process_tables(tmp_path, world):
    """The same split probed by one process and sharded over two (gloo on the CPU): byte-identical CSV and equal
    run.json numbers."""
    folder = _save("llava", tmp_path / "llava", layers=3)
    common = ["entity-grounding", "--ckpt", str(folder), "--flickr30k", str(world["flickr"]), "--images",
              str(world["images"]), "--batch-size", "3", "--quiet", "--select-on", "val", "--localization-prompts", "5"]
    assert probe_main([*common, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29517", "-m", "vb_probe", *common, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "entity_grounding.csv").read_bytes() == (two / "entity_grounding.csv").read_bytes()
    run_one, run_two = json.loads((one / "run.json").read_text()), json.loads((two / "run.json").read_text())
    for key in ("baselines", "best_head", "per_layer_best", "selected_head", "localization", "other_rule",
                "control_permuted_geometry", "skipped", "n_scored"):
        assert run_one[key] == run_two[key], key
    assert done.stdout.count("entity grounding on test") == 1  # process 0 alone reports and writes


def test_a_model_in_memory_needs_its_processor():
    model = tiny_llava()
    del model.processor
    with pytest.raises(vb_probe.VbProbeError, match="processor"):
        DecoderFamily().load(model)


def test_register_is_idempotent_and_names_row_capture():
    assert register() == register() == "vb_probe_rows"


# ------------------------------------------------------------------------------------------- the explorer at scale

def test_a_large_models_explorer_keeps_the_best_heads_maps_and_every_pick(world, tmp_path):
    """Above ``all_heads_up_to`` heads the page keeps each layer's best head and the top heads' maps (smaller data),
    and still marks every head's pick; in the browser a kept head shows its map, another says it is not kept."""
    import base64

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from test_explorer import _browser

    from vb_probe.explorer import explorer_data, stored_heads, write_explorer

    model = _probe_ready("llava", layers=3)
    flickr, images = vb_probe.Flickr30kEntities(world["flickr"]), ImageFolder(world["images"])
    full = explorer_data(model, None, flickr, images, limit=2, images_dir=world["images"])
    small = explorer_data(model, None, flickr, images, limit=2, images_dir=world["images"], all_heads_up_to=4)
    assert "stored_heads" not in full
    scores = vb_probe.entity_grounding(model, None, flickr, images, limit=2, progress=False)
    kept = stored_heads(scores, top=2)
    assert len(kept) < 12 and all((h.layer, h.head) in kept for h in scores.per_layer_best())
    kept = [tuple(pair) for pair in small["stored_heads"]]
    assert kept == stored_heads(scores)[:len(kept)] or kept == stored_heads(scores)
    entry_full = full["captions"][0]["queries"]
    entry_small = small["captions"][0]["queries"]
    cells = len(full["captions"][0]["regions"])
    for word, entry in entry_small.items():
        assert len(base64.b64decode(entry["rows"])) == len(kept) * cells
        assert entry["argmax"] == entry_full[word]["argmax"]  # every head's pick is kept
    small["stored_heads"] = [[0, 0]]  # one kept head, so that another can be asked for in the browser
    for entry in (e for c in small["captions"] for e in c["queries"].values()):
        entry["rows"] = base64.b64encode(base64.b64decode(entry["rows"])[:cells]).decode()
    page = write_explorer(small, tmp_path / "explorer")
    browser = _browser()
    try:
        browser.get(page.as_uri())
        for (layer, head), shown in (((0, 0), True), ((1, 2), False)):
            browser.find_element(By.CSS_SELECTOR, f'#grid rect[data-layer="{layer}"][data-head="{head}"]').click()
            span = browser.find_element(By.CSS_SELECTOR, "#caption span.query")
            ActionChains(browser).move_to_element(span).perform()
            word = span.get_attribute("data-word")
            marked = browser.find_element(By.CSS_SELECTOR, '#view rect[data-picked="true"]')
            assert int(marked.get_attribute("data-region")) == small["captions"][0]["queries"][word]["argmax"][layer][head]
            status = browser.find_element(By.ID, "status").text
            assert ("not kept" in status) != shown
            lit = [float(r.get_attribute("fill-opacity")) for r in browser.find_elements(By.CSS_SELECTOR, "#view rect.region")]
            assert (max(lit) > 0) == shown
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()


def test_folding_per_batch_counts_in_batch_order_is_bit_for_bit_one_process():
    """HeadCounts.merge of per-batch counts, in batch order, equals adding the batches one by one (float64 sums
    included, bit for bit); the same counts folded in another grouping do not (floating-point addition does not
    associate), which is why processes exchange per-batch counts and not their own totals."""
    from vb_probe.metrics.grounding import HeadCounts

    masses = [torch.tensor([[[1.0]]]), torch.tensor([[[1e16]]]), torch.tensor([[[-1e16]]]), torch.tensor([[[1.0]]])]
    correct = torch.ones(1, 1, 1, dtype=torch.bool)
    one = HeadCounts(1, 1)
    deltas = []
    for mass in masses:
        one.add(correct, mass.double(), {"random": torch.tensor([0.1])})
        delta = HeadCounts(1, 1)
        delta.add(correct, mass.double(), {"random": torch.tensor([0.1])})
        deltas.append(delta)
    folded = HeadCounts(1, 1)
    for delta in deltas:
        folded.merge(delta)
    assert torch.equal(folded.region_mass, one.region_mass) and folded.baselines == one.baselines
    per_process = [HeadCounts(1, 1), HeadCounts(1, 1)]  # totals of batches 0, 2 and 1, 3, then added
    for number, delta in enumerate(deltas):
        per_process[number % 2].merge(delta)
    grouped = HeadCounts(1, 1)
    for total in per_process:
        grouped.merge(total)
    assert not torch.equal(grouped.region_mass, one.region_mass)


_SHARDED_RUN = """
import functools, os, sys
import vb_probe.pipeline as pipeline
from vb_probe.cli import main

pipeline.probe_pass = functools.partial(pipeline.probe_pass, save_every=2)  # progress saved every 2 batches
original, scored = pipeline.score_batch, []

def score_batch(*args, **kwargs):
    if os.environ.get("CRASH_AFTER") and len(scored) == int(os.environ["CRASH_AFTER"]):
        raise KeyboardInterrupt
    scored.append(1)
    return original(*args, **kwargs)

pipeline.score_batch = score_batch
code = main(sys.argv[1:])
print(f"rank {os.environ['RANK']} scored {len(scored)}", file=sys.stderr)
sys.exit(code)
"""


def test_a_sharded_run_interrupted_resumes_to_the_one_process_tables(tmp_path, world):
    """Two torchrun processes stopped after 3 batches each (progress kept every 2), then run again with --resume:
    each scores only the batches it had not saved, and the tables equal the one-process run's byte for byte."""
    folder = _save("paligemma", tmp_path / "pg", layers=3)
    script = tmp_path / "sharded.py"
    script.write_text(_SHARDED_RUN)
    common = ["entity-grounding", "--ckpt", str(folder), "--flickr30k", str(world["flickr"]), "--images",
              str(world["images"]), "--batch-size", "1", "--quiet"]
    assert probe_main([*common, "--out", str(tmp_path / "one")]) == 0

    def sharded(*extra, crash: str = ""):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CRASH_AFTER": crash}
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", "29519", str(script), *common, "--out", str(tmp_path / "two"), *extra],
                              capture_output=True, text=True, env=env, timeout=300)

    stopped = sharded(crash="3")
    assert stopped.returncode != 0 and not (tmp_path / "two" / "entity_grounding.csv").exists()
    saved = sorted(p.name for p in (tmp_path / "two").glob(".main.rank*.progress.json"))
    assert saved == [".main.rank0.progress.json", ".main.rank1.progress.json"]
    resumed = sharded("--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "rank 0 scored 4" in resumed.stderr and "rank 1 scored 4" in resumed.stderr  # 6 each, 2 saved
    assert (tmp_path / "one" / "entity_grounding.csv").read_bytes() == \
        (tmp_path / "two" / "entity_grounding.csv").read_bytes()
    one, two = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two"))
    assert one["localization"] == two["localization"] and one["baselines"] == two["baselines"]
    assert not list((tmp_path / "two").glob(".*.progress.json"))  # each process removed its own


def _trained(kind: str):
    """transformers' own GemmaTokenizer (spaces in the normalizer, no prefix space) or LlamaTokenizer (Metaspace),
    with a vocabulary trained here on the world's words."""
    from decoder_fixtures import WORDS
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GemmaTokenizer, LlamaTokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>"))  # merges within words, as sentencepiece's
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(WORDS)) | {"▁"})
    backend.train_from_iterator([" ".join(WORDS)] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], initial_alphabet=alphabet))
    vocab = backend.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(backend.to_str())["model"]["merges"]]
    cls = GemmaTokenizer if kind == "gemma" else LlamaTokenizer
    return cls(vocab=vocab, merges=merges)


@pytest.mark.parametrize("kind", ["gemma", "llama"])
def test_word_ids_follow_the_tokenizers_own_spacing(kind):
    """Gemma's tokenizer gives a pre-split word no space, Llama's Metaspace gives each one: either way the caption's
    ids are those of the caption as one string, and each word's last token is where that word ends."""
    from vb_probe.families.decoder.prompts import caption_tokens

    tokenizer = _trained(kind)
    words = "a man rides a brown horse near the blue car".split()
    tokens = caption_tokens(tokenizer, words, 64)
    assert tokens.input_ids == tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    pieces = tokenizer.convert_ids_to_tokens(tokens.input_ids)
    for word, last in zip(words, tokens.word_last):
        assert word.endswith(pieces[last].lstrip("▁")) and pieces[last].lstrip("▁")
    plain = tokenizer(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert (plain == tokens.input_ids) == (kind == "llama")  # Gemma's pre-split words would lose their spaces
    cut = caption_tokens(tokenizer, words, 3)
    assert len(cut.input_ids) == 3 and cut.word_last[-1] is None and cut.word_last[0] is not None


def test_a_processor_missing_a_package_says_which_in_one_line(tmp_path):
    """SmolVLM's processor refuses to start without num2words: the load says so, naming the folder and the extra."""
    from vb_probe.errors import CheckpointError

    folder = save_model_folder("smolvlm", tmp_path / "smolvlm")
    with mock.patch("transformers.models.smolvlm.processing_smolvlm.num2words", None):
        with pytest.raises(CheckpointError) as caught:
            DecoderFamily().load(folder)
    message = str(caught.value)
    assert str(folder) in message and "num2words" in message and "vb-probe[smolvlm]" in message
    assert "\n" not in message


def test_a_llava_checkpoint_with_a_pixtral_tower_is_refused_in_one_line(world):
    """pixtral-12b is model_type `llava` with a Pixtral tower (variable size, break tokens): LLaVA-1.5's square grid
    would misplace every token, so it is refused before the first forward."""
    from vb_probe.errors import VbProbeError

    model = _probe_ready("llava")
    model.config.vision_config.model_type = "pixtral"
    with pytest.raises(VbProbeError, match="Pixtral vision tower"):
        family_of(model).prepare(model, ImageFolder(world["images"]), {})
