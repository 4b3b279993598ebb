"""The Python API: any VisualBERT (folder, hub id through a hub cache laid out here, object in memory), typed
results that equal the CLI's files and read back equal, in-memory edits probed as they are."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from fixtures import lay_out_hub_cache, write_probe_set

import vb_probe
from vb_probe.atomic import MANIFEST
from vb_probe.cli import main as probe_main
from vb_probe.results import GroundingResult, SyntacticResult

HUB_ID = "uclanlp/visualbert-tiny-test"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_probe_set(tmp_path_factory.mktemp("api"), n_images=12)


def probe(data, model, **options):
    return vb_probe.entity_grounding(model, vb_probe.load_tokenizer(data["ckpt"]), data["flickr"], data["tsv"], **options)


def test_five_lines_give_figure3_and_equal_the_cli(data, tmp_path):
    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    result = vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"])
    fig = result.plot()
    assert fig.axes and result.accuracy.shape == (3, 4)

    out = tmp_path / "cli"
    assert probe_main(["entity-grounding", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]),
                       "--features", str(data["tsv"]), "--out", str(out), "--quiet"]) == 0
    from_cli = GroundingResult.load(out)
    np.testing.assert_array_equal(result.n_correct, from_cli.n_correct)
    np.testing.assert_array_equal(result.region_mass, from_cli.region_mass)
    assert result.baselines == from_cli.baselines and result.skipped == from_cli.skipped
    assert result.n + sum(result.skipped.values()) == result.n_phrases
    # provenance: a file hash from the CLI (it read the checkpoint), none for a model handed over in memory
    assert from_cli.provenance["checkpoint"]["sha256"] and result.provenance["checkpoint"]["sha256"] is None
    assert result.provenance["checkpoint"]["loaded_from"] == str(data["ckpt"])


def test_zeroing_one_last_layer_heads_queries_changes_that_head_only(data):
    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    before = vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"])
    layer, head = model.config.num_hidden_layers - 1, 2
    width = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        query = model.encoder.layer[layer].attention.self.query
        query.weight[head * width:(head + 1) * width] = 0
        query.bias[head * width:(head + 1) * width] = 0
    model.train()  # the probe runs in eval mode and gives the model back as it was
    after = vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"])
    assert model.training
    changed = np.argwhere(after.n_correct != before.n_correct).tolist()
    assert changed == [[layer, head]]
    # its queries are zero now: every score is 0, so every word attends uniformly
    rows = vb_probe.region_attention(model, tokenizer, ["a", "man", "throws"], data["regions"]["500"])
    np.testing.assert_allclose(rows[layer, head], rows[layer, head][:1].repeat(3, 0), atol=1e-6)


def test_transformers_models_in_memory_are_converted_by_name(data):
    from transformers import VisualBertForPreTraining, VisualBertModel

    reference = probe(data, vb_probe.load_model(data["ckpt"]))
    theirs = VisualBertModel.from_pretrained(data["ckpt"])
    np.testing.assert_array_equal(probe(data, theirs).n_correct, reference.n_correct)
    with_heads = VisualBertForPreTraining.from_pretrained(data["ckpt"])  # encoder under visual_bert., heads set aside
    converted = vb_probe.load_model(with_heads)
    assert any("set aside" in note for note in converted.load_notes)
    np.testing.assert_array_equal(probe(data, converted).n_correct, reference.n_correct)
    with pytest.raises(vb_probe.VbProbeError, match="Linear: not a model vb-probe knows"):
        vb_probe.load_model(torch.nn.Linear(2, 2))


def test_results_save_the_cli_files_and_load_back_equal(data, tmp_path):
    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    result = vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"], select_on="val", control=True)
    result.save(tmp_path / "e")
    written = sorted(p.name for p in (tmp_path / "e").iterdir() if p.name != MANIFEST)
    assert written == sorted(GroundingResult.FILES)
    loaded = GroundingResult.load(tmp_path / "e")
    assert loaded == result and loaded.selected_head == result.selected_head and loaded.control == result.control
    frame = result.to_frame()
    assert len(frame) == 12 and list(frame.columns)[:2] == ["layer", "head"]
    assert (frame["ci95_low"] <= frame["accuracy"]).all() and (frame["accuracy"] <= frame["ci95_high"]).all()
    best = result.best_head()
    assert frame["accuracy"].max() == pytest.approx(best.accuracy)
    assert [h.layer for h in result.per_layer_best()] == [0, 1, 2]

    syntactic = vb_probe.syntactic_grounding(model, tokenizer, data["flickr"], data["tsv"], parses=data["parses"],
                                             relations=("nsubj", "dobj"))
    syntactic.save(tmp_path / "s")
    assert SyntacticResult.load(tmp_path / "s") == syntactic
    assert set(syntactic.to_frame()["relation"]) == {"nsubj", "dobj"}
    assert syntactic[("nsubj", "head_to_dependent")].n > 0
    # one folder, one run: the syntactic run.json never replaces the entity one
    with pytest.raises(vb_probe.VbProbeError, match="already holds the run.json of entity_grounding"):
        syntactic.save(tmp_path / "e")


def test_region_attention_rows_match_the_probe(data):
    from vb_probe.caption_rows import word_region_choices

    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    regions = data["regions"]["501"]
    words = ["a", "dog", "holds", "a", "blue", "hat"]
    rows = vb_probe.region_attention(model, tokenizer, words, regions)
    assert rows.shape == (3, 4, len(words), len(regions))
    assert (rows >= 0).all() and (rows.sum(-1) <= 1 + 1e-5).all()
    np.testing.assert_array_equal(rows.argmax(-1), word_region_choices(model, tokenizer, tuple(words), regions))
    intervened = vb_probe.region_attention(model, tokenizer, words, regions, mask="intervene")
    np.testing.assert_allclose(intervened.sum(-1), 1.0, atol=1e-5)  # text-to-text blocked: all mass on regions


def test_hub_ids_resolve_from_a_laid_out_cache(data, tmp_path, monkeypatch, capsys):
    lay_out_hub_cache(tmp_path, HUB_ID, {"config.json": data["ckpt"] / "config.json",
                                          "model.safetensors": data["ckpt"] / "model.safetensors"})
    lay_out_hub_cache(tmp_path, "bert-base-uncased", {"tokenizer.json": data["ckpt"] / "tokenizer.json"})
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vb_probe.load_model(HUB_ID)
        tokenizer = vb_probe.load_tokenizer(model=model)  # the checkpoint has none: bert-base-uncased, said once
    assert [str(w.message).split(";")[0] for w in caught if w.category is vb_probe.TokenizerFallback] == [
        f"{model.checkpoint_path} has no tokenizer files"]
    assert len(tokenizer) == len(vb_probe.load_tokenizer(data["ckpt"]))
    out = tmp_path / "out"
    capsys.readouterr()
    assert probe_main(["entity-grounding", "--ckpt", HUB_ID, "--flickr30k", str(data["flickr"]), "--features",
                       str(data["tsv"]), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "note: " in printed and "using bert-base-uncased" in printed
    run = json.loads((out / "run.json").read_text())
    assert run["checkpoint"]["hub_id"] == HUB_ID and run["checkpoint"]["sha256"]
    reference = probe(data, vb_probe.load_model(data["ckpt"]))
    np.testing.assert_array_equal(GroundingResult.load(out).n_correct, reference.n_correct)


def test_an_uncached_hub_id_exits_2_with_one_line(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = probe_main(["entity-grounding", "--ckpt", "uclanlp/visualbert-vqa-coco-pre", "--flickr30k",
                       str(data["flickr"]), "--features", str(data["tsv"]), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "uclanlp/visualbert-vqa-coco-pre" in err and "hf download uclanlp/visualbert-vqa-coco-pre" in err
    with pytest.raises(vb_probe.VbProbeError, match="checkpoint folder not found"):
        vb_probe.load_model(tmp_path / "no" / "such" / "folder")


def test_attribution_needs_the_masked_lm_model_and_says_so(data):
    model = vb_probe.load_model(data["ckpt"])  # an encoder: no masked-LM head
    with pytest.raises(vb_probe.VbProbeError, match="VisualBertModel: no masked-LM head.*load_masked_lm"):
        vb_probe.attribute(model, vb_probe.load_tokenizer(model=model), data["flickr"], data["tsv"], limit=1)
