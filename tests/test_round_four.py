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


# ------------------------------------------------------------------------------------------- 1. figures name the rule

@pytest.mark.parametrize("kind, unit", [("patches", "patch"), ("image tokens", "image token")])
def test_figure_3_of_a_pixel_model_names_its_rule_and_tokens_and_its_keys_do_not_collide(kind, unit):
    """A 3 × 4 grid scored by the pointing rule said "IoU ≥ 0.5" and "random region", and its keys overlapped."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vb_probe.heads import SelectedHead
    from vb_probe.results import GroundingResult, HeadScores

    result = GroundingResult(np.array([[3, 9, 2, 1], [5, 1, 7, 0], [2, 2, 8, 4]]), 10, np.full((3, 4), 0.5),
                             {"highest_confidence": None, "random": 0.1, "oracle": 1.0},
                             control=HeadScores(np.array([[2, 1, 0, 3], [1, 4, 2, 2], [1, 1, 1, 1]]), 10),
                             selected_head=SelectedHead(2, 2, 0.8, "val", 0.7),
                             provenance={"rule": "pointing", "token_kind": kind})
    fig = result.plot()
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent"))
             if t.get_text().strip() and t.get_visible()]
    words = " ".join(" ".join(t.get_text().split()) for t in texts)
    assert "IoU" not in words and "region" not in words
    assert f"pointing rule: the {unit}'s centre in a gold box" in words
    assert f"random {unit}" in words and f"dot size: attention on {kind}" in words
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    whole = fig.bbox
    for text, box in boxes:
        assert whole.x0 - 1 <= box.x0 and box.x1 <= whole.x1 + 1 and whole.y0 - 1 <= box.y0 and box.y1 <= whole.y1 + 1, text
    keys = {id(t): (t.get_text(), t.get_window_extent(renderer)) for legend in fig.legends
            for t in [*legend.get_texts(), legend.get_title()] if t.get_text()}
    keys = list(keys.values()) + [(t.get_text(), t.get_window_extent(renderer))  # and the marks on the colour bar
                                  for t in fig.axes[-1].texts]
    for i, (a_text, a) in enumerate(keys):
        for b_text, b in keys[:i]:
            assert not a.overlaps(b), (a_text, b_text)


# ------------------------------------------------------------------------------------------- 2. ViLT's processor

def test_a_vilt_saved_by_transformers_5_keeps_its_image_processor(tmp_path):
    """`ViltProcessor.save_pretrained` nests the image processor in processor_config.json (no
    preprocessor_config.json): it is loaded as transformers loads it, not replaced by ViLT's 384 default."""
    from transformers import BertTokenizerFast, ViltConfig, ViltModel, ViltProcessor
    from transformers import ViltImageProcessorPil as ImageProcessor

    folder = tmp_path / "vilt"
    ViltModel(ViltConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, image_size=128, patch_size=32)).save_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(str(ROOT / "tests" / "data" / "realconfigs" / "bert-base-uncased"))
    ViltProcessor(image_processor=ImageProcessor(size={"shortest_edge": 160}, size_divisor=32),
                  tokenizer=tokenizer).save_pretrained(folder)
    assert not (folder / "preprocessor_config.json").exists() and (folder / "processor_config.json").exists()
    model = vb_probe.load_model(folder)
    assert model.image_processor.size.shortest_edge == 160
    assert not [note for note in model.load_notes if "image processor" in note]
    run_facts = vb_probe.families.family_of(model).prepare(model, type("S", (), {"kind": "pixels", "source": "x"})(),
                                                           {})
    assert run_facts["image_processor"]["size"] == {"shortest_edge": 160}  # JSON, not a repr string


# ------------------------------------------------------------------------------------------- 8. smaller edges

def test_a_figure_assigned_in_a_notebook_is_shown_once_and_a_bare_one_not_twice(tmp_path):
    """`fig = result.plot()` showed nothing in Jupyter (a pyplot-free figure shows only as a cell's value); it is
    shown at once, and `result.plot()` as the cell's value is not drawn a second time."""
    import nbclient
    import nbformat

    notebook = nbformat.v4.new_notebook()
    setup = ("import numpy as np\nfrom vb_probe.results import GroundingResult\n"
             "result = GroundingResult(np.array([[3, 9], [5, 1]]), 10, np.full((2, 2), 0.5), {'random': 0.1, "
             "'oracle': 1.0, 'highest_confidence': None})")
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in (
        setup, "fig = result.plot()", "result.plot()", "import matplotlib.pyplot as plt  # the inline backend's own",
        "fig = result.plot()", "result.plot()")]
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
                            ).execute()

    def images(cell) -> int:
        return sum("image/png" in output.get("data", {}) for output in cell.outputs)

    assert [images(cell) for cell in notebook.cells[1:]] == [1, 1, 0, 1, 1]


def test_head_words_record_their_parser_and_the_set_default_split(tmp_path):
    """run.json recorded the parser of head words as null; a RefCOCO folder probed without --split used "test",
    which it has not (refused only after the model loaded)."""
    from test_seams import PixelToy, _refcoco_from_world, toy_world  # noqa: F401 (the fixture)

    from vb_probe.data.refcoco import RefCoco

    world = _write_world(tmp_path / "w")
    refcoco = _refcoco_from_world(tmp_path / "refcoco", world)
    assert RefCoco(refcoco).default_split == "val"
    result = vb_probe.entity_grounding(PixelToy(), None, refcoco, world["images"])  # no split: RefCOCO's own, val
    assert result.split == "val" and result.provenance["query_word"] == "head"
    assert result.provenance["head_word_parser"]  # spaCy's, named


def test_figures_regenerates_figure_4_from_a_syntactic_folder(region_set, tmp_path, capsys):
    out = tmp_path / "syn"
    assert probe_main(["syntactic", "--ckpt", str(region_set["ckpt"]), "--flickr30k", str(region_set["flickr"]),
                       "--features", str(region_set["tsv"]), "--parses", str(region_set["parses"]), "--relation",
                       "nsubj", "--out", str(out), "--quiet"]) == 0
    assert probe_main(["figures", "--results", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert [p.name for p in (tmp_path / "figs").iterdir() if not p.name.startswith(".")] == ["fig4_syntactic.png"]
