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


# ------------------------------------------------------------------------------------------- 5. decoders first-class

KANG_LLAVA = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the human's questions.\n<image>\nthe man on the left.")


@pytest.fixture(scope="module")
def real_llava(tmp_path_factory):
    """A tiny LLaVA-1.5 with llava-hf/llava-1.5-7b-hf's own tokenizer, processor and chat template files."""
    from decoder_fixtures import real_settings

    return real_settings("llava", tmp_path_factory.mktemp("kang") / "llava")


@pytest.mark.parametrize("prompt, whole", [
    ("kang", KANG_LLAVA),
    ("plain", "<image>\nthe man on the left"),
    ("chat", "USER: <image>\nthe man on the left ASSISTANT:"),
    ("Look: {image} Find {caption} now", "Look: <image> Find the man on the left now"),
])
def test_each_prompt_is_the_token_sequence_the_processor_makes_of_the_whole_prompt(prompt, whole, real_llava):
    """There was no --prompt: a decoder read its chat template only. Each preset (and a prompt of one's own) renders
    as documented (Kang et al.'s: the system turn, the image, the expression and a full stop, a line each), and the
    probe's token sequence is the one the model's own processor makes of that whole string."""
    from PIL import Image

    from vb_probe.families import family_of

    model = vb_probe.load_model(real_llava)
    family = family_of(model)
    family.use_prompt(model, prompt)
    template = model.prompt_template
    assert template.prefix + "the man on the left" + template.suffix == whole
    assert template.preset == (prompt if prompt in ("kang", "plain", "chat") else "custom")
    image = Image.new("RGB", (500, 375), (90, 120, 30))
    cells = family.image_tokens(model, type("One", (), {"image": lambda self, i: image})(), "700")
    from vb_probe.queries import ProbeItem, Query

    words = "the man on the left".split()
    item = ProbeItem("700_0", words, "700", [Query("entity", 1, np.array([[200, 150, 300, 250]], np.float32))])
    item.regions = cells
    batch = family.collate(model, [item], family.tokenizer_of(model), {"query_row": "word"}, 64)
    expected = model.processor(images=image, text=whole, return_tensors="pt")["input_ids"][0].tolist()
    assert batch.inputs["input_ids"][0].tolist() == expected
    pieces = model.processor.tokenizer.convert_ids_to_tokens(expected)
    assert pieces[int(batch.query_index[0])].lstrip("▁") == "man"
    if prompt == "kang":  # Kang et al.'s query row, the prompt's last token, is the full stop: the default there
        assert pieces[-1] == "." and batch.extras["caption_spans"][0].tolist()[1] == len(expected) - 1
        default = family.collate(model, [item], family.tokenizer_of(model), {}, 64)
        assert int(default.query_index[0]) == len(expected) - 1


def test_prompts_a_model_cannot_take_are_refused_in_one_line_before_it_loads(pixel_set, tmp_path, capsys):
    """Kang et al.'s prompt for PaliGemma (no system turn; its caption is its output part), a prompt without its
    {caption}, and any prompt for ViLT (which reads the caption alone): one line each, before the weights are read
    (they are garbage here: reading them would fail otherwise)."""
    from decoder_fixtures import save_model_folder

    paligemma = save_model_folder("paligemma", tmp_path / "paligemma")
    (paligemma / "model.safetensors").write_bytes(b"not weights")
    vilt = tmp_path / "vilt"
    import shutil

    shutil.copytree(pixel_set["vilt"], vilt)
    (vilt / "model.safetensors").write_bytes(b"not weights")
    data = ["--flickr30k", str(pixel_set["flickr"]), "--images", str(pixel_set["images"]), "--quiet"]
    cases = [(paligemma, "kang", "Kang et al.'s prompt opens with the model's system turn, and paligemma has none"),
             (paligemma, "{image} describe", "holds {image} 1 and {caption} 0 times"),
             (paligemma, "{caption} {image}", "puts {caption} before {image}; the image comes first"),
             (paligemma, "say {image}{caption}", "a PaliGemma prompt starts with {image} and ends with {caption}"),
             (vilt, "kang", "a vilt model reads the caption alone, with no prompt around it; leave --prompt out")]
    for folder, prompt, message in cases:
        for command in (["entity-grounding", "--out", str(tmp_path / "out")], ["explore", "--out", str(tmp_path / "x")]):
            assert probe_main([command[0], "--ckpt", str(folder), *data, "--prompt", prompt, *command[1:]]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and message in err and "--prompt" in err, err


def test_a_run_records_its_prompt_and_without_the_flag_reads_the_chat_template(pixel_set, tmp_path):
    """No --prompt: the model's own chat template (LLaVA's `USER: <image>\\n… ASSISTANT:`); --prompt kang: Kang et
    al.'s, recorded in run.json with the config, and it changes what the heads read (so their picks)."""
    from decoder_fixtures import save_model_folder

    folder = save_model_folder("llava", tmp_path / "llava")
    data = ["--ckpt", str(folder), "--flickr30k", str(pixel_set["flickr"]), "--images", str(pixel_set["images"]),
            "--quiet", "--per-query"]
    assert probe_main(["entity-grounding", *data, "--out", str(tmp_path / "chat")]) == 0
    assert probe_main(["entity-grounding", *data, "--prompt", "kang", "--out", str(tmp_path / "kang")]) == 0
    chat, kang = (json.loads((tmp_path / name / "run.json").read_text()) for name in ("chat", "kang"))
    assert chat["prompt"]["preset"] == "chat" and chat["prompt"]["prefix"] == "USER: <image>\n"
    assert "prompt" not in chat["config"]
    assert kang["prompt"]["preset"] == "kang" and kang["config"]["prompt"] == "kang"
    assert kang["prompt"]["suffix"] == "." and kang["prompt"]["prefix"].endswith("\n<image>\n")
    picks = [vb_probe.GroundingResult.load(tmp_path / name).queries["picks"] for name in ("chat", "kang")]
    assert any(not np.array_equal(a, b) for a, b in zip(*picks))


def _tiny_inputs(kind: str, model):
    """One forward's inputs for a tiny model of ``kind``: a caption with an image (decoders: the model's own
    processor), or region features (LXMERT)."""
    import torch
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    if kind == "lxmert":
        return {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "visual_feats": torch.randn(1, 5, 12,
                                                                                            generator=generator),
                "visual_pos": torch.rand(1, 5, 4, generator=generator)}
    image = Image.fromarray((torch.rand(60, 80, 3, generator=generator) * 255).byte().numpy())
    if kind == "vilt":
        pixels = model.image_processor(image, return_tensors="pt")
        return {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "pixel_values": pixels["pixel_values"],
                "pixel_mask": pixels["pixel_mask"]}
    template = model.prompt_template
    return dict(model.processor(images=image, text=template.prefix + "a red ball" + template.suffix,
                                return_tensors="pt"))


def _projection_weights(kind: str, model) -> list:
    """Each probed layer's output projection weight [hidden, heads × d_head], reached through the model's own
    attribute names (independently of the families' code)."""
    if kind == "vilt":
        return [layer.attention.output.dense.weight for layer in model.encoder.layer]
    if kind == "lxmert":
        return [layer.visual_attention.output.dense.weight for layer in model.encoder.x_layers]
    return [layer.self_attn.o_proj.weight for layer in model.model.language_model.layers]


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "paligemma", "vilt", "lxmert"])
def test_ablating_a_head_is_zeroing_its_columns_of_the_output_projection(kind, tmp_path):
    """`ablate_heads` worked on VisualBERT only. For every family, through the registered attention function
    (decoders) or the output projection's input (ViLT, LXMERT): the outputs equal those of a copy whose ablated heads'
    columns of the output projection are zero, differ from the intact ones, and are the intact ones again after."""
    import copy

    import torch

    from vb_probe.families import family_of

    if kind in ("vilt", "lxmert"):
        from test_hostile import _saved_model

        model = vb_probe.load_model(_saved_model(kind, tmp_path / kind))
    else:
        from decoder_fixtures import BUILDERS

        model = BUILDERS[kind]()
        model = family_of(model).load(model)
    inputs = _tiny_inputs(kind, model)

    def outputs(m):
        torch.manual_seed(0)  # ViLT samples its patches (max_image_length) at random: the same ones each forward
        with torch.no_grad():
            out = m(**inputs)
        return out.logits if hasattr(out, "logits") and out.logits is not None else \
            (out.language_output if kind == "lxmert" else out.last_hidden_state)

    heads = ["L0H1", "L1H3", "L1H0"]
    intact = outputs(model)
    with vb_probe.ablate_heads(model, heads):
        ablated = outputs(model)
    reference = copy.deepcopy(model)
    weights = _projection_weights(kind, reference)
    d_head = weights[0].shape[1] // family_of(model).sites(model)[0].heads
    with torch.no_grad():
        for layer, head in ((0, 1), (1, 3), (1, 0)):
            weights[layer][:, head * d_head:(head + 1) * d_head] = 0
    torch.testing.assert_close(ablated, outputs(reference), atol=1e-5, rtol=1e-5)
    assert (ablated - intact).abs().max() > 1e-3
    torch.testing.assert_close(outputs(model), intact, atol=0, rtol=0)
    with pytest.raises(vb_probe.VbProbeError, match=r"head L2H0 does not exist in a 2-layer, 4-head model"):
        with vb_probe.ablate_heads(model, [(2, 0)]):
            pass


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "paligemma"])
def test_a_captions_log_probability_is_the_models_own_forward_read_at_its_tokens(kind):
    """The causal measure of a decoder: each caption's mean log-probability per token, from a padded batch of two
    captions of different lengths, equals log-softmax of the model's full logits read at each caption token alone."""
    import torch
    from decoder_fixtures import BUILDERS
    from PIL import Image

    from vb_probe.families import family_of
    from vb_probe.queries import ProbeItem, Query

    model = BUILDERS[kind]()
    family = family_of(model)
    model = family.load(model)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    cells = family.image_tokens(model, type("One", (), {"image": lambda self, i: image})(), "700")
    items = [ProbeItem("700_0", ["a", "red", "ball"], "700", [Query("entity", 2, None)]),
             ProbeItem("700_1", ["a", "man", "with", "a", "dog", "by", "the", "wall"], "700",
                       [Query("entity", 1, None)])]
    for item in items:
        item.regions = cells
    batch = family.collate(model, items, family.tokenizer_of(model), {}, 64)
    got = family.caption_log_probs(model, batch)
    for row in range(2):
        length = int(batch.inputs["attention_mask"][row].sum())
        alone = {k: (v[row:row + 1, :length] if k in ("input_ids", "attention_mask", "token_type_ids",
                                                      "mm_token_type_ids") else v)
                 for k, v in batch.inputs.items()}
        if kind == "qwen2_vl":
            alone["pixel_values"] = batch.inputs["pixel_values"][row * len(cells.boxes) * 4:(row + 1) * len(cells.boxes)
                                                                 * 4]
            alone["image_grid_thw"] = batch.inputs["image_grid_thw"][row:row + 1]
        else:
            alone["pixel_values"] = batch.inputs["pixel_values"][row:row + 1]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(**alone).logits[0].float(), -1)  # [T, vocab]
        start, end = batch.extras["caption_spans"][row].tolist()
        ids = alone["input_ids"][0]
        expected = torch.stack([log_probs[t - 1, ids[t]] for t in range(start, end)]).mean()
        assert end - start >= len(items[row].words) - 1
        torch.testing.assert_close(got[row], expected, atol=1e-4, rtol=1e-4)


def test_the_ablation_loop_finds_a_planted_head_and_says_when_draws_are_too_few():
    """A measure that is 1 for each of 4 items unless head L0H0 is ablated (then 0). Top heads [L0H0]: drop 1 − 0 =
    1; random heads are drawn from the 3 others, so each draw's drop is 0; the p-value is (1 + 0) / (1 + draws):
    1/20 = 0.05 with 19 draws (distinguishable: p ≤ 0.05 and the interval [1, 1] above 0), 1/6 with 5 (not)."""
    from contextlib import contextmanager

    from vb_probe.causal import ablation_outcomes
    from vb_probe.metrics.causal import causal_summary

    ablated: set = set()

    @contextmanager
    def ablate(heads):
        ablated.update(heads)
        yield
        ablated.clear()

    def measure():
        return np.zeros(4) if (0, 0) in ablated else np.ones(4)

    for draws, p_value, distinguishable in ((19, 1 / 20, True), (5, 1 / 6, False)):
        intact, top, random = ablation_outcomes(measure, ablate, [(0, 0)], (2, 2), draws=draws, seed=3)
        assert random.shape == (draws, 4)
        summary = causal_summary(intact, top, random, measure="log_prob")
        assert summary["drop_top_k"] == 1.0 and summary["drop_top_k_ci95"] == [1.0, 1.0]
        assert summary["drop_random_k"] == 0.0 and summary["log_prob_intact"] == 1.0
        assert summary["p_value"] == pytest.approx(p_value) and summary["distinguishable"] is distinguishable
    with pytest.raises(vb_probe.VbProbeError, match="too few for k random others"):
        ablation_outcomes(measure, ablate, [(0, 0), (0, 1), (1, 0)], (2, 2))


def test_vb_probe_causal_runs_on_a_decoder(pixel_set, tmp_path, capsys):
    """`vb-probe causal` took masked-LM checkpoints only. On a decoder: the drop in each caption's log-probability
    when the top-k heads of its entity-grounding scores are ablated, against k random heads, with interval and
    p-value; its intact value is the model's own (mean of each caption's caption_log_probs); a model that neither has
    a masked-LM head nor generates text is refused in one line."""
    from decoder_fixtures import save_model_folder

    folder = save_model_folder("llava", tmp_path / "llava")
    data = ["--flickr30k", str(pixel_set["flickr"]), "--images", str(pixel_set["images"]), "--quiet"]
    assert probe_main(["entity-grounding", "--ckpt", str(folder), *data, "--out", str(tmp_path / "eg")]) == 0
    capsys.readouterr()
    assert probe_main(["causal", "--ckpt", str(folder), *data, "--scores", str(tmp_path / "eg"), "-k", "2",
                       "--draws", "4", "--prompt", "plain", "--out", str(tmp_path / "causal")]) == 0
    printed = capsys.readouterr().out
    assert "caption log-probability (mean over its tokens, nats) over 12 captions: intact" in printed
    result = vb_probe.CausalResult.load(tmp_path / "causal")
    assert result["measure"] == "log_prob" and result["n"] == 12 and len(result["drop_random_k_draws"]) == 4
    assert result["drop_top_k"] == pytest.approx(result["log_prob_intact"] - result["log_prob_top_k_ablated"])
    best = vb_probe.GroundingResult.load(tmp_path / "eg").to_frame().sort_values(
        ["accuracy", "layer", "head"], ascending=[False, True, True]).head(2)
    assert result["heads_ablated"] == [f"L{r.layer}H{r.head}" for r in best.itertuples()]
    assert result.figure().axes[0].get_ylabel().startswith("drop in caption log-probability")
    assert probe_main(["causal", "--ckpt", str(pixel_set["vilt"]), *data, "--scores", str(tmp_path / "eg"), "-k", "2",
                       "--out", str(tmp_path / "vilt")]) == 2
    assert "the vilt family has no masked-LM head and generates no text" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- 6. a busy machine

DEMO_TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
             "model.intermediate_size=64", "train.steps=6", "train.batch_size=8", "train.eval_every=3",
             "train.save_every=100", "train.eval_batches=1"]


def _interrupt_at(monkeypatch, call: int) -> list[int]:
    """`train_step` raises KeyboardInterrupt on its ``call``-th call (as Ctrl-C would, between steps); returns the
    torch thread count each call saw."""
    import torch

    import training.loop as loop

    real, seen = loop.train_step, []

    def step(*args, **kwargs):
        seen.append(torch.get_num_threads())
        if len(seen) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(loop, "train_step", step)
    return seen


def test_a_pretraining_checkpoints_by_time_and_resumes_from_it_to_the_same_weights(tmp_path, monkeypatch, capsys):
    """Checkpoints came every `save_every` steps only (the demo's 100: up to 100 steps lost), and an interrupted run
    said nothing of where a rerun would start. With `save_every_s` (60 by default; tiny here) a run interrupted after
    step 2 keeps step 2's checkpoint and says so; resumed, it ends with the weights of a run never interrupted. With
    no checkpoint yet, the line says a rerun starts from step 0."""
    import torch
    from safetensors.torch import load_file

    from training.config import load_config
    from training.loop import pretrain
    from training.world import build_world

    world = build_world(tmp_path / "world", images=20, seed=1, progress=False, render=False, hdf5=False) and \
        tmp_path / "world"
    assert load_config(None, []).train.save_every_s == 60.0
    timed = load_config(None, [*DEMO_TINY, "train.save_every_s=0.000001", "train.threads=1"])
    pretrain(timed, world, tmp_path / "whole", progress=False)
    _interrupt_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(timed, world, tmp_path / "cut", progress=False)
    err = capsys.readouterr().err
    assert "pre-training stopped after step 2; the checkpoint of step 2 (0 s before) is kept in" in err
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("step-*.pt")) == \
        ["step-0000001.pt", "step-0000002.pt"]
    monkeypatch.undo()
    pretrain(timed, world, tmp_path / "cut", resume=True, progress=False)
    whole, resumed = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("whole", "cut"))
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=0, rtol=0)
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        pretrain(load_config(None, [*DEMO_TINY, "train.threads=1"]), world, tmp_path / "early", progress=False)
    assert "pre-training stopped after step 1, before its first checkpoint: a rerun starts from step 0" in \
        capsys.readouterr().err


def test_the_demo_runs_on_its_fixed_threads_and_says_what_a_rerun_will_do(tmp_path, monkeypatch, capsys):
    """The demo ran on torch's default threads (the count changes its numbers; beside a busy process 4x slower) and
    always said "interrupt and rerun to resume". Now: its config's 2 threads for every step, said, the caller's
    count given back; interrupted before a checkpoint, it says so; rerun after one, it goes on from it."""
    import torch

    import training.loop as loop
    from training.config import load_config

    assert load_config("demo", []).train.threads == 2 and load_config("vilt", []).train.threads == 2
    args = ["demo", "--out", str(tmp_path / "demo"), "--scenes", "10", "--quiet"] + \
        sum((["--set", s] for s in DEMO_TINY), [])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen = _interrupt_at(monkeypatch, 3)
        assert probe_main(args) == 130
        out, err = capsys.readouterr()
        assert "2 torch threads (fixed: the numbers depend on it); a checkpoint every 60 s, from which an " \
               "interrupted demo goes on" in out
        assert "before its first checkpoint: a rerun starts from step 0" in err
        assert seen == [2, 2, 2] and torch.get_num_threads() == 1
        _interrupt_at(monkeypatch, 3)
        assert probe_main(args + ["--set", "train.save_every_s=0.000001"]) == 130  # the same model: its cache key
        assert "the checkpoint of step 2" in capsys.readouterr().err

        def stop(*args, **kwargs):
            raise KeyboardInterrupt
        monkeypatch.setattr(loop, "pretrain", stop)
        assert probe_main(args) == 130
        assert "going on from its checkpoint of step 2" in capsys.readouterr().out
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- 7. 1,024 heads and more

@pytest.fixture(scope="module")
def browser():
    from test_explorer import _browser

    driver = _browser()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def wide_decoder_page(pixel_set, tmp_path_factory):
    """The explorer of a 40 × 40-head LLaVA (1,600 heads, its processor's centre crop) on the world's images."""
    from decoder_fixtures import tiny_llava

    from vb_probe.families import family_of

    model = tiny_llava(layers=40, heads=40)
    model = family_of(model).load(model)
    explorer = vb_probe.explore(model, None, pixel_set["flickr"], pixel_set["images"], limit=3, progress=False)
    path = explorer.save(tmp_path_factory.mktemp("wide") / "page")
    return {"data": explorer.data, "html": path}


def _boxes(browser, selector: str) -> list[dict]:
    return browser.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => { const r = e.getBoundingClientRect(); "
        "return {x: r.left, y: r.top, w: r.width, h: r.height, text: e.textContent}; });", selector)


def test_the_explorer_at_40_by_40_heads_is_readable_and_marks_what_it_holds(wide_decoder_page, browser):
    """At 32 × 32 heads the grid's numbers were ~4 px, nothing marked which heads kept maps, the page opened on layer
    0's best head, Kang et al.'s heads and the fixed-position place were not shown, LLaVA's cropped-away bands looked
    like "little attention", and a near-uniform map was one flat shade. At 40 × 40: numbers at least 9 px that never
    touch, a dot on each kept map's head (and only there), the page open on the best head, Kang et al.'s heads framed,
    the fixed place drawn, the bands hatched "not seen", and a per-map stretched shade."""
    from selenium.webdriver.common.by import By

    data = wide_decoder_page["data"]
    browser.get(wide_decoder_page["html"].as_uri())
    assert browser.get_log("browser") == []
    ticks = _boxes(browser, "#grid text.tick")
    top = min(t["y"] for t in ticks)
    head_ticks = sorted((t for t in ticks if abs(t["y"] - top) < 1), key=lambda t: t["x"])  # the row above the grid
    layer_ticks = sorted((t for t in ticks if abs(t["y"] - top) >= 1), key=lambda t: t["y"])  # the column beside it
    assert len(head_ticks) >= 10 and len(layer_ticks) >= 10 and min(t["h"] for t in ticks) >= 9
    assert all(b["x"] >= a["x"] + a["w"] for a, b in zip(head_ticks, head_ticks[1:]))
    assert all(b["y"] >= a["y"] + a["h"] - 1 for a, b in zip(layer_ticks, layer_ticks[1:]))
    kept = {tuple(pair) for pair in data["stored_heads"]}
    assert 40 <= len(kept) < 1600
    dots = browser.find_elements(By.CSS_SELECTOR, "#grid circle.kept")
    assert len(dots) == len(kept)
    assert {(int(c.get_attribute("data-layer")), int(c.get_attribute("data-head")))
            for c in browser.find_elements(By.CSS_SELECTOR, "#grid rect[data-kept='true']")} == kept
    accuracy = np.array(data["accuracy"], dtype=float)
    best = divmod(int(np.argmax(accuracy)), 40)
    selected = browser.find_element(By.CSS_SELECTOR, "#grid rect.selected")
    assert (int(selected.get_attribute("data-layer")), int(selected.get_attribute("data-head"))) == best == \
        tuple(data["best_head"])
    planted = json.loads(json.dumps(data))  # the best head planted far from layer 0: the page opens there
    planted["accuracy"][37][5], planted["best_head"] = "1.000001", [37, 5]
    from vb_probe.explorer import page_html

    other = wide_decoder_page["html"].parent / "planted.html"
    other.write_text(page_html(planted))
    browser.get(other.as_uri())
    selected = browser.find_element(By.CSS_SELECTOR, "#grid rect.selected")
    assert (selected.get_attribute("data-layer"), selected.get_attribute("data-head")) == ("37", "5")
    browser.get(wide_decoder_page["html"].as_uri())
    chosen = data["marks"]["selected_heads"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#grid rect.chosen")) == len(chosen)
    assert "chosen without boxes (Kang et al. 2025)" in browser.find_element(By.ID, "grid-key").text
    assert browser.find_elements(By.CSS_SELECTOR, "#view .fixed-place")
    caption = data["captions"][0]
    x1, _, x2, _ = caption["seen"]  # a 4:3 image centre-cropped to a square: bands left and right
    assert x1 > 0 and x2 < caption["width"]
    bands = browser.find_elements(By.CSS_SELECTOR, "#view rect.unseen")
    assert len(bands) == 2 and "not seen" in browser.find_element(By.ID, "view").text
    assert browser.find_element(By.ID, "key-unseen").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#caption span.query").click()

    def shades():
        return [float(r.get_attribute("fill-opacity")) for r in browser.find_elements(By.CSS_SELECTOR, "#view rect.region")]
    share = shades()
    browser.execute_script("const s = document.getElementById('contrast'); s.value = 'stretch'; "
                           "s.dispatchEvent(new Event('change'));")
    stretched = shades()
    assert max(stretched) == 0.65 and min(stretched) == 0.0 and stretched != share
