"""What new users found, round four: a decoder researcher on RefCOCO, a ViLT/LXMERT user, a newcomer on a busy
machine. Each test fails on the code before the round: per-query records and maps for every family, pixel and
decoder families through the same attention verb, figures and pages that name the run's own rule and token kind,
a ViLT saved by transformers 5 keeping its image processor, the README's commands run as written, and the smaller
edges (run.json's settings as JSON, the parser of head words recorded, a figure shown in a notebook)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_probe_set
from test_vilt import _tiny_vilt, _write_world

import vb_probe
from vb_probe.cli import main as probe_main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def region_set(tmp_path_factory):
    return write_probe_set(tmp_path_factory.mktemp("r4"), n_images=8)


@pytest.fixture(scope="module")
def pixel_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("r4pix")
    return {**_write_world(root), "vilt": _tiny_vilt(root / "vilt")}


def _models(region_set, pixel_set):
    from decoder_fixtures import tiny_llava

    from vb_probe.families.decoder import DecoderFamily

    return {"visualbert": (vb_probe.load_model(region_set["ckpt"]), region_set["flickr"], region_set["tsv"]),
            "vilt": (vb_probe.load_model(pixel_set["vilt"]), pixel_set["flickr"], pixel_set["images"]),
            "llava": (DecoderFamily().load(tiny_llava()), pixel_set["flickr"], pixel_set["images"])}


# ------------------------------------------------------------------------------------------- 4. per-query records

@pytest.mark.parametrize("kind", ["visualbert", "vilt", "llava"])
def test_per_query_records_and_maps_add_up_to_the_tables(kind, region_set, pixel_set, tmp_path):
    """One row a phrase: scored or skipped with its reason (counts add up), each head's pick and hit (the hits sum to
    the table's n_correct), and the asked head's map whose argmax is that head's pick, with a cell a token."""
    model, flickr, inputs = _models(region_set, pixel_set)[kind]
    result = vb_probe.entity_grounding(model, None, flickr, inputs, per_query=True, save_maps=["L1H2"])
    table = result.queries
    assert len(table) == result.n_phrases
    scored = table[table["status"] == "scored"]
    assert len(scored) == result.n
    assert table[table["status"] != "scored"]["status"].value_counts().to_dict() == result.skipped
    layers, heads = result.shape
    hits = np.stack(scored["hits"].to_list())  # [n, layer · head]
    np.testing.assert_array_equal(hits.sum(0).reshape(layers, heads), result.n_correct)
    arrays = result.maps
    assert len(arrays["query"]) == len(scored) and set(arrays["layer"]) == {1} and set(arrays["head"]) == {2}
    for i, row in enumerate(arrays["query"]):
        attention = arrays["attention"][arrays["offsets"][i]:arrays["offsets"][i + 1]]
        cells = arrays["cells"][arrays["offsets"][i]:arrays["offsets"][i + 1]]
        assert cells.shape == (len(attention), 4)
        assert int(np.argmax(attention)) == int(table.iloc[row]["picks"][1 * heads + 2])
    result.save(tmp_path / "out")
    assert {"queries.csv", "maps.npz"} <= {p.name for p in (tmp_path / "out").iterdir()}
    loaded = vb_probe.GroundingResult.load(tmp_path / "out")
    assert len(loaded.queries) == len(table) and all(
        np.array_equal(a, b) for a, b in zip(loaded.queries["picks"], table["picks"]))
    from vb_probe.results.records import read_maps

    assert len(read_maps(tmp_path / "out" / "maps.npz")) == len(scored)


def test_the_cli_writes_the_per_query_table_when_asked(region_set, tmp_path):
    common = ["entity-grounding", "--ckpt", str(region_set["ckpt"]), "--flickr30k", str(region_set["flickr"]),
              "--features", str(region_set["tsv"]), "--quiet"]
    assert probe_main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "queries.csv").exists()
    assert probe_main([*common, "--per-query", "--save-maps", "L2H1", "--out", str(tmp_path / "audit")]) == 0
    lines = (tmp_path / "audit" / "queries.csv").read_text().splitlines()
    run = json.loads((tmp_path / "audit" / "run.json").read_text())
    assert lines[0] == "group,unit,image_id,caption,word_index,word,position,status,picks,hits"
    assert len(lines) - 1 == run["n_phrases"]


@pytest.mark.parametrize("kind", ["vilt", "llava"])
def test_pixel_and_decoder_families_have_the_attention_verb_with_each_tokens_cell(kind, region_set, pixel_set):
    """`region_attention` refused a pixel model with a message about array shapes; `image_attention` (and
    `region_attention` itself) takes an image for any family that reads pixels: the rows the probe reads, and each
    token's cell in the image's pixels."""
    from PIL import Image

    model, flickr, images = _models(region_set, pixel_set)[kind]
    probed = vb_probe.entity_grounding(model, None, flickr, images, limit=1, save_maps=["L1H2"])
    first = probed.queries[probed.queries["status"] == "scored"].iloc[0]
    caption = vb_probe.Flickr30kEntities(flickr).captions(first["image_id"])[int(first["caption"].split("_")[1])]
    picture = Image.open(Path(images) / f"{first['image_id']}.png")
    seen = vb_probe.image_attention(model, None, list(caption.words), picture)
    r = len(seen.cells)
    assert seen.rows.shape[:3] == (*probed.shape, len(caption.words)) and seen.rows.shape[3] == r
    assert seen.cells.shape == (r, 4) and seen.unit == ("patches" if kind == "vilt" else "image tokens")
    probe_map = probed.maps["attention"][probed.maps["offsets"][0]:probed.maps["offsets"][1]]
    np.testing.assert_allclose(seen.rows[1, 2, first["word_index"]], probe_map, atol=2e-6)
    np.testing.assert_allclose(probed.maps["cells"][:r], seen.cells)
    rows = vb_probe.region_attention(model, None, caption.words, Path(images) / f"{first['image_id']}.png")
    np.testing.assert_allclose(rows, seen.rows)
