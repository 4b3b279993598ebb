"""The built-in world: statistics in the ranges that make it worth probing, every file readable by the
real readers, and deterministic for a seed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from training.world import build_world
from vb_probe.data.coco import read_karpathy
from vb_probe.data.features import open_features
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.data.parses import check_parse_matches, read_conllu
from vb_probe.tokenization import load_tokenizer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    stats = build_world(out, images=80, seed=3, progress=False)
    return out, stats


def digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".h5"):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_statistics_in_range(world):
    _, stats = world
    assert stats.scenes == 80
    assert 0.10 <= stats.highest_confidence <= 0.30
    assert stats.oracle >= 0.95
    lo, hi, _ = stats.regions_per_image
    assert 10 <= lo and hi <= 100
    for relation in ("nsubj", "dobj", "pobj", "amod", "prep", "det"):
        assert stats.arcs.get(relation, 0) > 20, relation
    assert set(stats.skipped) == {"scene", "notvisual", "nobox"}


def test_every_file_reads_with_the_real_readers(world):
    out, stats = world
    flickr = Flickr30kEntities(out / "flickr30k")
    ids = flickr.split("train") + flickr.split("val") + flickr.split("test")
    assert len(ids) == len(set(ids)) == 80
    tsv, h5 = open_features(out / "features.tsv"), open_features(out / "features.h5")
    parses = read_conllu(out / "parses.conllu")
    phrases = multi_box = 0
    types = Counter()
    for image_id in ids:
        flickr.check_entities(image_id)
        ann = flickr.annotation(image_id)
        multi_box += sum(len(b) > 1 for b in ann.boxes.values())
        a, b = tsv[image_id], h5[image_id]
        np.testing.assert_array_equal(a.features, b.features)
        assert a.features.shape[1] == 128 and 10 <= len(a) <= 100
        # the last 6 feature dimensions are the box's spatial features
        np.testing.assert_allclose(a.features[:, -6:-2], a.boxes / [a.image_w, a.image_h, a.image_w, a.image_h], atol=1e-5)
        captions = flickr.captions(image_id)
        assert len(captions) == 5
        for caption in captions:
            check_parse_matches(parses.get(caption.key), caption.key, caption.words, "parses.conllu")
            phrases += len(caption.phrases)
            types.update(t for p in caption.phrases for t in p.types)
    assert phrases == stats.phrases and multi_box > 0
    assert {"people", "animals", "vehicles", "other", "scene", "notvisual"} <= set(types)
    coco = read_karpathy(out / "dataset_coco.json")
    assert {i.split for i in coco} == {"train", "val", "test"} and len(coco) == 80
    tokenizer = load_tokenizer(out / "tokenizer")
    assert tokenizer.tokenize("a big red dog chases two frisbees") and tokenizer.unk_token not in \
        tokenizer.tokenize(" ".join(coco[0].captions[0]))
    assert len(list((out / "images").glob("*.png"))) == 80
    vqa = json.loads((out / "tasks/vqa/v2_mscoco_train_annotations.json").read_text())["annotations"]
    assert all(len(a["answers"]) == 10 for a in vqa)
    nlvr2 = [json.loads(line) for line in (out / "tasks/nlvr2/dev.json").read_text().splitlines()]
    nlvr2_features = open_features(out / "tasks/nlvr2/features.tsv")
    for entry in nlvr2:
        assert entry["label"] in ("True", "False")
        stem = entry["identifier"].rsplit("-", 1)[0]
        assert f"{stem}-img0" in nlvr2_features and f"{stem}-img1" in nlvr2_features
    # NLVR2's design: a statement is true of one pair of its set and false of the other, so text alone is chance
    train = [json.loads(line) for line in (out / "tasks/nlvr2/train.json").read_text().splitlines()]
    by_statement: dict[tuple, list] = {}
    for entry in train:
        split, number, pair, k = entry["identifier"].split("-")
        by_statement.setdefault((number, k), []).append((pair, entry["sentence"], entry["label"]))
    assert all(len(v) == 2 and {p for p, _, _ in v} == {"0", "1"} and len({s for _, s, _ in v}) == 1
               for v in by_statement.values())
    separating = sum({label for _, _, label in v} == {"True", "False"} for v in by_statement.values())
    assert separating / len(by_statement) > 0.95
    vcr = [json.loads(line) for line in (out / "tasks/vcr/val.jsonl").read_text().splitlines()]
    for entry in vcr:
        assert len(entry["answer_choices"]) == 4 and len(entry["rationale_choices"]) == 4
        meta = json.loads((out / "tasks/vcr/metadata" / entry["metadata_fn"].split("/")[-1]).read_text())
        assert len(meta["boxes"]) == len(entry["objects"])


def test_deterministic_for_a_seed(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    build_world(a, images=12, seed=7, progress=False, render=False, hdf5=False)
    build_world(b, images=12, seed=7, progress=False, render=False, hdf5=False)
    build_world(c, images=12, seed=8, progress=False, render=False, hdf5=False)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_world_cli_prints_statistics(tmp_path, capsys):
    from training.cli import main

    assert main(["world", "--out", str(tmp_path / "w"), "--scenes", "20", "--quiet", "--no-images"]) == 0
    printed = capsys.readouterr().out
    assert "highest-confidence" in printed and "oracle" in printed and "nsubj" in printed
    with pytest.raises(SystemExit) as exit_:
        main(["world", "--out", str(tmp_path / "w2"), "--scenes", "3"])
    assert exit_.value.code == 2 and "argument --scenes: 3 must be at least 10" in capsys.readouterr().err
