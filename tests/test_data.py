"""Readers of the real formats, on files the tests write, with the official semantics and bad input."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vb_probe.data.coco import read_karpathy
from vb_probe.data.features import (
    Hdf5Features,
    NpzFeatures,
    Regions,
    TsvFeatures,
    open_features,
    tsv_row,
    write_hdf5,
    write_npz,
    write_tsv,
)
from vb_probe.data.flickr30k import (
    Flickr30kEntities,
    format_annotation,
    format_sentence,
    parse_sentence,
    read_annotation,
    read_sentences,
)
from vb_probe.data.parses import check_parse_matches, parse_conllu, read_conllu, to_conllu
from vb_probe.errors import DataError

SENTENCES = """\
[/EN#1/people A man] in [/EN#2/clothing a red shirt] throws [/EN#3/other a ball] to [/EN#4/animals his dog] .
[/EN#1/people The man 's] [/EN#5/vehicles/scene car] is near [/EN#6/scene the park] and [/EN#1/people he] smiles [/EN#0/notvisual today] .

[/EN#7/people Two kids] watch [/EN#8/other it] .
"""

XML = """<annotation>
  <filename>100.jpg</filename>
  <size><width>500</width><height>400</height><depth>3</depth></size>
  <object><name>1</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>101</xmax><ymax>301</ymax></bndbox></object>
  <object><name>2</name><name>1</name><bndbox><xmin>31</xmin><ymin>61</ymin><xmax>91</xmax><ymax>161</ymax></bndbox></object>
  <object><name>3</name><bndbox><xmin>201</xmin><ymin>101</ymin><xmax>221</xmax><ymax>121</ymax></bndbox></object>
  <object><name>4</name><bndbox><xmin>301</xmin><ymin>201</ymin><xmax>401</xmax><ymax>351</ymax></bndbox></object>
  <object><name>7</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>51</xmax><ymax>51</ymax></bndbox></object>
  <object><name>7</name><bndbox><xmin>61</xmin><ymin>1</ymin><xmax>111</xmax><ymax>51</ymax></bndbox></object>
  <object><name>5</name><nobndbox>1</nobndbox></object>
  <object><name>6</name><nobndbox>0</nobndbox><scene>1</scene></object>
  <object><name>8</name><nobndbox>1</nobndbox><scene>0</scene></object>
</annotation>
"""


@pytest.fixture
def flickr_root(tmp_path):
    root = tmp_path / "flickr"
    (root / "Sentences").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "Sentences" / "100.txt").write_text(SENTENCES)
    (root / "Annotations" / "100.xml").write_text(XML)
    (root / "test.txt").write_text("100\n")
    (root / "val.txt").write_text("\n")
    return root


def test_sentences_official_semantics(flickr_root):
    captions = read_sentences(flickr_root / "Sentences" / "100.txt")
    assert [c.index for c in captions] == [0, 1, 2]  # empty line skipped, 0-based in file order
    first = captions[0]
    assert first.words[:4] == ("A", "man", "in", "a")
    assert [(p.first_word_index, p.words, p.entity_id, p.types) for p in first.phrases] == [
        (0, ("A", "man"), 1, ("people",)),
        (3, ("a", "red", "shirt"), 2, ("clothing",)),
        (7, ("a", "ball"), 3, ("other",)),
        (10, ("his", "dog"), 4, ("animals",)),
    ]
    second = captions[1]
    assert second.phrases[0].words == ("The", "man", "'s")  # 's stays a word of its own
    assert second.phrases[1].types == ("vehicles", "scene")  # multi-type chain
    assert [p.entity_id for p in second.phrases].count(1) == 2  # same entity twice in one sentence
    assert second.phrases[-1].entity_id == 0
    assert second.key == "100_1"


def test_annotation_official_semantics(flickr_root):
    ann = read_annotation(flickr_root / "Annotations" / "100.xml")
    assert (ann.width, ann.height) == (500, 400)
    # minus one, a shared box belongs to both names, several boxes per id
    np.testing.assert_array_equal(ann.boxes[1], [[10, 20, 100, 300], [30, 60, 90, 160]])
    np.testing.assert_array_equal(ann.boxes[2], [[30, 60, 90, 160]])
    assert ann.boxes[7].shape == (2, 4)
    assert ann.nobox == {5, 8} and ann.scene == {6}


def test_writers_round_trip(flickr_root):
    for caption in read_sentences(flickr_root / "Sentences" / "100.txt"):
        words, phrases = parse_sentence(format_sentence(caption.words, caption.phrases), "x")
        assert tuple(words) == caption.words and tuple(phrases) == caption.phrases
    ann = read_annotation(flickr_root / "Annotations" / "100.xml")
    path = flickr_root / "again.xml"
    path.write_text(format_annotation(ann))
    back = read_annotation(path)
    assert back.boxes.keys() == ann.boxes.keys() and back.scene == ann.scene and back.nobox == ann.nobox
    for k in ann.boxes:
        np.testing.assert_array_equal(back.boxes[k], ann.boxes[k])


@pytest.mark.parametrize("line, message", [
    ("[/EN#1/people A man in a shirt .", "never closed"),
    ("A man] in a shirt .", "never opened"),
    ("[/EN#1/people A [/EN#2/other man] .", "inside another"),
    ("[/EN#x/people A man] .", "EN#<number>"),
])
def test_bad_sentence_lines(tmp_path, line, message):
    path = tmp_path / "7.txt"
    path.write_text("[/EN#1/people fine] .\n" + line + "\n")
    with pytest.raises(DataError, match=message) as err:
        read_sentences(path)
    assert f"{path}:2" in str(err.value) and "\n" not in str(err.value)


def test_bad_xml(tmp_path):
    broken = tmp_path / "1.xml"
    broken.write_text("<annotation><size><width>5</width>")
    with pytest.raises(DataError, match="not well-formed"):
        read_annotation(broken)
    reversed_box = tmp_path / "2.xml"
    reversed_box.write_text(XML.replace("<xmax>221</xmax>", "<xmax>150</xmax>"))
    with pytest.raises(DataError, match=r"2.xml object 2: box .*xmax < xmin"):
        read_annotation(reversed_box)


def test_phrase_absent_from_xml_and_empty_split(flickr_root):
    (flickr_root / "Sentences" / "100.txt").write_text(SENTENCES + "[/EN#99/people Someone] .\n")
    data = Flickr30kEntities(flickr_root)
    with pytest.raises(DataError, match="EN#99 .* absent from Annotations/100.xml"):
        data.check_entities("100")
    with pytest.raises(DataError, match="lists no images"):
        data.split("val")
    with pytest.raises(DataError, match="split list missing"):
        data.split("train")


def make_regions(n_images=3, dim=6, seed=0, with_conf=True):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        n = 2 + i
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(5, 100, (n, 2))
        out.append(Regions(str(1000 + i), np.concatenate([xy, xy + wh], 1).astype(np.float32),
                           rng.normal(size=(n, dim)).astype(np.float32),
                           rng.uniform(size=n).astype(np.float32) if with_conf else None, 320.0, 320.0))
    return out


def test_three_feature_layouts_give_identical_arrays(tmp_path):
    regions = make_regions()
    write_tsv(tmp_path / "f.tsv", regions)
    write_hdf5(tmp_path / "f.h5", regions)
    write_npz(tmp_path / "npz", regions)
    stores = [open_features(tmp_path / "f.tsv"), open_features(tmp_path / "f.h5"), open_features(tmp_path / "npz")]
    assert [type(s) for s in stores] == [TsvFeatures, Hdf5Features, NpzFeatures]
    for store in stores:
        assert store.dim == 6 and sorted(store.ids()) == ["1000", "1001", "1002"]
        assert "1001" in store and "4" not in store
        for expected in regions:
            got = store[expected.image_id]
            for name in ("boxes", "features", "confidences"):
                np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
            assert (got.image_w, got.image_h) == (320.0, 320.0)
    # the offset index is cached in the user's cache folder (nothing beside the TSV) and is reused
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("f.tsv")) == ["f.tsv"]
    cached = list((Path(os.environ["VB_PROBE_CACHE"]) / "tsv-index").glob("*.json"))
    assert any(json.loads(p.read_text())["key"] == stores[0].content_key() for p in cached)
    assert TsvFeatures(tmp_path / "f.tsv")._offsets == stores[0]._offsets
    with pytest.raises(DataError, match="image 4 is not in the features"):
        stores[0]["4"]


def test_missing_confidence_is_none_never_guessed(tmp_path):
    regions = make_regions(with_conf=False)
    write_hdf5(tmp_path / "f.h5", regions)
    write_npz(tmp_path / "npz", regions)
    assert open_features(tmp_path / "f.h5")["1000"].confidences is None
    assert open_features(tmp_path / "npz")["1000"].confidences is None
    write_tsv(tmp_path / "f.tsv", make_regions())
    assert open_features(tmp_path / "f.tsv", confidence="none")["1000"].confidences is None


def _tsv_with(tmp_path, mutate):
    regions = make_regions(1)[0]
    fields = tsv_row(regions)
    mutate(fields, regions)
    path = tmp_path / "bad.tsv"
    path.write_text("\t".join(fields) + "\n")
    return path


def test_truncated_base64_and_nan_and_outside_boxes(tmp_path):
    def truncate(fields, _):
        fields[9] = fields[9][: len(fields[9]) // 2 + 1]
    with pytest.raises(DataError, match="image 1000 field features .*truncated"):
        open_features(_tsv_with(tmp_path, truncate))["1000"]

    def nan(fields, regions):
        f = regions.features.copy()
        f[0, 0] = np.nan
        fields[9] = base64.b64encode(f.tobytes()).decode()
    with pytest.raises(DataError, match="image 1000: features contain NaN"):
        open_features(_tsv_with(tmp_path, nan))["1000"]

    def shrink_image(fields, _):
        fields[1] = fields[2] = "50"
    with pytest.raises(DataError, match="outside the 50×50 image"):
        open_features(_tsv_with(tmp_path, shrink_image))["1000"]


def test_hdf5_needs_its_index(tmp_path):
    write_hdf5(tmp_path / "f.h5", make_regions())
    (tmp_path / "f_imgid2idx.pkl").unlink()
    with pytest.raises(DataError, match="f_imgid2idx.pkl: missing"):
        open_features(tmp_path / "f.h5")


def test_karpathy_json(tmp_path):
    data = {"images": [
        {"filename": "a.jpg", "cocoid": 5, "split": "train",
         "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}]},
        {"filename": "b.jpg", "imgid": 6, "split": "val", "sentences": [{"raw": "Two cats"}]},
    ]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    images = read_karpathy(path)
    assert [(i.image_id, i.split, i.captions) for i in images] == [
        ("5", "train", (("a", "dog", "runs"),)), ("6", "val", (("two", "cats"),))]
    assert [i.image_id for i in read_karpathy(path, splits=("val",))] == ["6"]
    path.write_text('{"images": [{"split": "train"}]}')
    with pytest.raises(DataError, match=r"images\[0\]: needs cocoid or imgid"):
        read_karpathy(path)


CONLLU = """# sent_id = 100_0
# text = A man throws a ball
1\tA\t_\t_\t_\t_\t2\tdet\t_\t_
2\tman\t_\t_\t_\t_\t3\tnsubj\t_\t_
3\tthrows\t_\t_\t_\t_\t0\tROOT\t_\t_
4\ta\t_\t_\t_\t_\t5\tdet\t_\t_
5\tball\t_\t_\t_\t_\t3\tdobj\t_\t_

"""


def test_conllu_read_and_round_trip(tmp_path):
    parses = parse_conllu(CONLLU, "p.conllu")
    parse = parses["100_0"]
    assert parse.arcs() == [(1, 0, "det"), (2, 1, "nsubj"), (4, 3, "det"), (2, 4, "dobj")]
    assert parse_conllu(to_conllu([parse]), "again")["100_0"] == parse
    path = tmp_path / "p.conllu"
    path.write_text(CONLLU)
    assert read_conllu(path)["100_0"] == parse
    with pytest.raises(DataError, match="sent_id 100_0 has 5 tokens but the caption has 6 words"):
        check_parse_matches(parse, "100_0", ("A", "man", "throws", "a", "red", "ball"), "p.conllu")
    with pytest.raises(DataError, match="no sentence with sent_id 100_1"):
        check_parse_matches(None, "100_1", ("x",), "p.conllu")
    with pytest.raises(DataError, match="without '# sent_id"):
        parse_conllu(CONLLU.replace("# sent_id = 100_0\n", ""), "p.conllu")


def test_spacy_parses_words_as_given(tmp_path):
    from vb_probe.data.parses import SpacyParser

    parser = SpacyParser()
    words = ("A", "man", "in", "a", "red", "shirt", "throws", "a", "ball", ".")
    (parse,) = parser.parse([("100_0", words)])
    assert parse.words == words
    arcs = {(words[h], words[d], r) for h, d, r in parse.arcs()}
    assert {("throws", "man", "nsubj"), ("throws", "ball", "dobj"), ("shirt", "red", "amod"),
            ("in", "shirt", "pobj")} <= arcs
    assert parse_conllu(to_conllu([parse]), "x")["100_0"] == parse


def test_tsv_rows_read_the_same_without_pread(tmp_path, monkeypatch):
    """Where the platform has no os.pread (Windows), a seek and a read give the same regions."""
    import vb_probe.data.features as features_module

    write_tsv(tmp_path / "f.tsv", make_regions())
    expected = open_features(tmp_path / "f.tsv")["1001"]
    monkeypatch.delattr(features_module.os, "pread")
    got = open_features(tmp_path / "f.tsv")["1001"]
    np.testing.assert_array_equal(got.features, expected.features)
    np.testing.assert_array_equal(got.boxes, expected.boxes)
