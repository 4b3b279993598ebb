"""Syntactic grounding: an independent reference through transformers on hand-written parses, the
skip accounting of both directions, the spaCy path with its CoNLL-U cache, and bad relations."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from fixtures import write_checkpoint, write_dataset

from vb_probe.cli import main as cli_main
from vb_probe.data.parses import read_conllu


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    data = write_dataset(root)
    data["ckpt"] = write_checkpoint(root / "ckpt", seed=3)
    return data


def reference(data, relations, split="test"):
    from transformers import BertTokenizerFast, VisualBertModel

    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.metrics.boxes import region_hits

    model = VisualBertModel.from_pretrained(data["ckpt"]).eval()
    tok = BertTokenizerFast.from_pretrained(str(data["ckpt"]))
    flickr = Flickr30kEntities(data["flickr"])
    parses = read_conllu(data["parses"])
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    out = {}
    for image_id in flickr.split(split):
        ann = flickr.annotation(image_id)
        regions = data["regions"][image_id]
        for caption in flickr.captions(image_id):
            pieces = [tok.tokenize(w) for w in caption.words]
            ends = np.cumsum([len(p) for p in pieces])
            ids = tok.convert_tokens_to_ids(["[CLS]"] + [p for ps in pieces for p in ps] + ["[SEP]"])
            with torch.no_grad():
                att = model(input_ids=torch.tensor([ids]), visual_embeds=torch.from_numpy(regions.features)[None],
                            output_attentions=True).attentions
            parse = parses[caption.key]
            for d, (h1, rel) in enumerate(zip(parse.heads, parse.relations)):
                if h1 == 0 or rel not in relations:
                    continue
                h = h1 - 1
                for direction, q_word, t_word in (("head_to_dependent", h, d), ("dependent_to_head", d, h)):
                    phrase = [p for p in caption.phrases if p.first_word_index <= t_word <= p.last_word_index]
                    if not phrase or phrase[0].entity_id not in ann.boxes:
                        continue
                    hit = region_hits(regions.boxes, ann.boxes[phrase[0].entity_id])
                    entry = out.setdefault((rel, direction), {"n": 0, "correct": np.zeros((L, H)), "hc": 0})
                    entry["n"] += 1
                    q = int(ends[q_word])
                    for l in range(L):
                        for hh in range(H):
                            entry["correct"][l, hh] += hit[int(np.argmax(att[l][0, hh, q, len(ids):].numpy()))]
                    entry["hc"] += hit[int(np.argmax(regions.confidences))]
    return out


def test_syntactic_matches_reference(world, tmp_path, capsys):
    out = tmp_path / "syn"
    code = cli_main(["--debug", "syntactic", "--ckpt", str(world["ckpt"]), "--flickr30k", str(world["flickr"]),
                     "--features", str(world["tsv"]), "--parses", str(world["parses"]), "--relation", "nsubj",
                     "--relation", "dobj", "--relation", "pobj", "--relation", "amod", "--out", str(out), "--quiet",
                     "--batch-size", "2"])
    assert code == 0
    ref = reference(world, {"nsubj", "dobj", "pobj", "amod"})
    run = json.loads((out / "run.json").read_text())
    with open(out / "syntactic.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:7] == ["relation", "direction", "layer", "head", "n", "n_correct", "accuracy"]
    # hand count per test image: nsubj: man<-throws (h→d hits subject; d→h 'throws' not in a phrase),
    # hat<-is ('hat' is the nobox phrase; d→h 'is' not in a phrase) ...
    assert run["relations"]["nsubj"]["head_to_dependent"]["n"] == 4
    assert run["relations"]["nsubj"]["dependent_to_head"]["n"] == 0
    assert run["relations"]["dobj"]["dependent_to_head"]["n"] == 0
    assert run["relations"]["dobj"]["head_to_dependent"]["n"] == 4
    assert run["relations"]["amod"]["dependent_to_head"]["n"] == 8  # red→ball, big→man
    assert run["relations"]["pobj"]["dependent_to_head"]["n"] == 0  # 'in'/'near' are in no phrase
    assert run["skipped"]["pobj/head_to_dependent"] == {"target_scene": 4}  # in → the park (scene)
    assert run["skipped"]["nsubj/dependent_to_head"] == {"target_not_in_phrase": 8}
    for (rel, direction), entry in ref.items():
        info = run["relations"][rel][direction]
        assert info["n"] == entry["n"]
        assert info["highest_confidence"] == pytest.approx(entry["hc"] / entry["n"], abs=1e-6)
        got = {(int(r["layer"]), int(r["head"])): float(r["accuracy"]) for r in rows
               if r["relation"] == rel and r["direction"] == direction}
        for (l, h), acc in got.items():
            assert acc == pytest.approx(entry["correct"][l, h] / entry["n"], abs=1e-6)
        assert len(info["per_layer_best"]) == 3
    assert (out / "syntactic.png").read_bytes()[:4] == b"\x89PNG"  # Figure 4: every relation in one figure
    assert "nsubj" in capsys.readouterr().out


def test_spacy_parser_is_cached_and_unknown_relation_fails(world, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.delenv("VB_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    args = ["syntactic", "--ckpt", str(world["ckpt"]), "--flickr30k", str(world["flickr"]), "--features",
            str(world["tsv"]), "--parser", "spacy", "--relation", "all", "--quiet"]
    assert cli_main(args + ["--out", str(tmp_path / "a")]) == 0
    cached = list((cache / "vb-probe" / "parses").glob("*.conllu"))
    assert len(cached) == 1 and (tmp_path / "a" / "parses.test.conllu").is_file()
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert "nsubj" in run["relations"] and run["parser"].startswith("spacy")

    from vb_probe.data import parses as parses_module

    def no_parsing(*_a, **_k):
        raise AssertionError("parsed again although the CoNLL-U cache exists")
    monkeypatch.setattr(parses_module.SpacyParser, "parse", no_parsing)
    assert cli_main(args[:-3] + ["--relation", "amod", "--quiet", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    code = cli_main(args[:-3] + ["--relation", "nsbj", "--quiet", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "relation nsbj does not occur" in err and "relations present:" in err


def test_parse_mismatch_is_one_line(world, tmp_path, capsys):
    bad = tmp_path / "bad.conllu"
    text = world["parses"].read_text()
    first_block = text[: text.index("\n\n")]
    last_token = [line for line in first_block.splitlines() if line.startswith("11\t")][0]
    bad.write_text(text.replace(last_token + "\n", "", 1))  # caption 500_0 loses its final '.'
    code = cli_main(["syntactic", "--ckpt", str(world["ckpt"]), "--flickr30k", str(world["flickr"]), "--features",
                     str(world["tsv"]), "--parses", str(bad), "--relation", "nsubj", "--out", str(tmp_path / "o"),
                     "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "sent_id 500_0 has 10 tokens but the caption has 11 words" in err
    assert len(err.splitlines()) == 1
