"""RefCOCO (refer layout) and Visual Genome: the readers on files the tests write, hostile files (a pickle that
would run code, negative box sizes, ids that do not resolve, fuzzed bytes), the built-in world's three layouts
giving the same numbers where their protocols coincide, and the probes taking any of them for region and pixel
families, with relation grounding from Visual Genome's own relationships."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vb_probe
from vb_probe.cli import main as probe_main
from vb_probe.data.annotations import head_word
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.data.refcoco import RefCoco, read_plain_pickle, write_refcoco
from vb_probe.data.visual_genome import VisualGenome, write_visual_genome
from vb_probe.errors import DataError

# ------------------------------------------------------------------------------------------- RefCOCO


def _refcoco(folder: Path, **change) -> Path:
    images = [{"id": 7, "width": 100, "height": 80, "file_name": "COCO_train2014_000000000007.jpg"},
              {"id": 9, "width": 60, "height": 60, "file_name": "COCO_train2014_000000000009.jpg"}]
    objects = [{"id": 70, "image_id": 7, "box": [10, 20, 40, 60]}, {"id": 71, "image_id": 7, "box": [50, 0, 100, 30]},
               {"id": 90, "image_id": 9, "box": [0, 0, 30, 30]}]
    refs = [{"ref_id": 0, "ann_id": 70, "image_id": 7, "split": "testA",
             "sentences": [("man", "on", "left"), ("guy", "in", "red")]},
            {"ref_id": 1, "ann_id": 71, "image_id": 7, "split": "testA", "sentences": [("the", "dog")]},
            {"ref_id": 2, "ann_id": 90, "image_id": 9, "split": "val", "sentences": [("a", "cat")]}]
    refs, objects = change.get("refs", refs), change.get("objects", objects)
    write_refcoco(folder, images, objects, refs)
    return folder


def test_refcoco_reads_refs_and_instances_as_captions_with_one_gold_box(tmp_path):
    data = RefCoco(_refcoco(tmp_path / "refcoco"))
    assert data.split_by == "unc" and data.split("testA") == ["7"] and data.split("val") == ["9"]
    captions = data.captions("7")
    assert [c.words for c in captions] == [("man", "on", "left"), ("guy", "in", "red"), ("the", "dog")]
    assert [c.key for c in captions] == ["7_0", "7_1", "7_2"]
    assert [(p.first_word_index, p.last_word_index, p.entity_id) for c in captions for p in c.phrases] == \
        [(0, 2, 70), (0, 2, 70), (0, 1, 71)]
    annotation = data.annotation("7")
    np.testing.assert_array_equal(annotation.boxes[70], [[10, 20, 40, 60]])  # [x, y, w, h] → x1 y1 x2 y2
    assert (annotation.width, annotation.height) == (100, 80)
    assert data.image_files()["7"] == "COCO_train2014_000000000007.jpg"
    with pytest.raises(DataError, match="no split 'test' in the unc splits"):
        data.split("test")
    assert open_grounding_set(tmp_path / "refcoco").name == "refcoco"


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    folder = _refcoco(tmp_path / "refcoco")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "refs(unc).p").write_bytes(pickle.dumps([{"ref_id": 0, "sentences": [], "x": Payload()}], protocol=2))
    refused = r"refs\(unc\)\.p: holds more than plain data \(it refers to .*\); refused without running it"
    with pytest.raises(DataError, match=refused) as caught:
        RefCoco(folder)
    assert not marker.exists() and len(str(caught.value).splitlines()) == 1
    (folder / "refs(unc).p").write_bytes(pickle.dumps({1, 2}, protocol=4))  # pickle's own set opcodes: not refs
    with pytest.raises(DataError, match="holds a set, not plain data"):
        read_plain_pickle(folder / "refs(unc).p")


@given(st.binary(max_size=200))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_pickles_give_one_line_errors(tmp_path, blob):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(b"\x80\x02" + blob)
    try:
        read_plain_pickle(path)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)


@pytest.mark.parametrize("case, message", [
    ("negative_size", r"annotation 70: box .* width or height of 0 or less"),
    ("unknown_object", r"ref_id 0: object ann_id 99 is not an annotation of image 7"),
    ("unknown_image", r"ref_id 0: image 5 is not in instances.json"),
    ("no_tokens", r"ref_id 0: sentence 0 has no tokens"),
    ("mixed_split", r"image 7 has refs in split 'testA' and 'val'"),
    ("not_a_list", r"holds a dict, expected a list of refs"),
])
def test_hostile_refcoco_files_get_one_line_errors_naming_the_record(tmp_path, case, message):
    folder = tmp_path / "refcoco"
    base = [{"ref_id": 0, "ann_id": 70, "image_id": 7, "split": "testA", "sentences": [("man",)]}]
    if case == "negative_size":
        _refcoco(folder, objects=[{"id": 70, "image_id": 7, "box": [40, 20, 10, 60]}], refs=base)
    elif case == "unknown_object":
        _refcoco(folder, refs=[{**base[0], "ann_id": 99}])
    elif case == "unknown_image":
        _refcoco(folder, refs=[{**base[0], "image_id": 5}])
    elif case == "no_tokens":
        _refcoco(folder, refs=[{**base[0], "sentences": [()]}])
    elif case == "mixed_split":
        _refcoco(folder, refs=[base[0], {**base[0], "ref_id": 1, "split": "val"}])
    else:
        _refcoco(folder)
        (folder / "refs(unc).p").write_bytes(pickle.dumps({"refs": []}, protocol=2))
    with pytest.raises(DataError, match=message) as caught:
        RefCoco(folder)
    assert len(str(caught.value).splitlines()) == 1


def test_head_word_is_the_word_whose_head_lies_outside_the_span():
    # "man on left": man ← root; on → man; left → on
    assert head_word((0, 1, 2), 0, 2) == 0
    # "a big dog" inside a caption: a → dog, big → dog, dog → outside (the verb at 5)
    assert head_word((3, 3, 5, 0, 4), 0, 2) == 2
    # a span with two words attached outside it (a parse that splits the phrase): the last of them
    assert head_word((5, 1, 5, 0, 4), 0, 2) == 2


# ------------------------------------------------------------------------------------------- Visual Genome


def _visual_genome(folder: Path, relationships=None, regions=None, images=None) -> Path:
    images = images or [{"image_id": 1, "width": 100, "height": 100}, {"image_id": 2, "width": 50, "height": 40}]
    regions = regions if regions is not None else {
        "1": [{"region_id": 11, "phrase": "a man riding a horse.", "box": [10, 10, 60, 90]},
              {"region_id": 12, "phrase": "green grass", "box": [0, 80, 100, 100]}],
        "2": [{"region_id": 21, "phrase": "red car", "box": [5, 5, 45, 35]}]}
    relationships = relationships if relationships is not None else {
        "1": [{"relationship_id": 5, "predicate": "Sitting on",
               "subject": {"object_id": 100, "name": "man", "box": [20, 10, 50, 60]},
               "object": {"object_id": 101, "name": "horse", "box": [10, 40, 70, 95]}}], "2": []}
    write_visual_genome(folder, images, regions, relationships, {"train": ["2"], "val": ["1"], "test": ["1"]})
    return folder


def test_visual_genome_regions_and_relations(tmp_path):
    folder = _visual_genome(tmp_path / "vg")
    regions = VisualGenome(folder)
    assert regions.split("val") == ["1"] and open_grounding_set(folder).name == "visual_genome"
    assert [c.words for c in regions.captions("1")] == [("a", "man", "riding", "a", "horse"), ("green", "grass")]
    np.testing.assert_array_equal(regions.annotation("1").boxes[12], [[0, 80, 100, 100]])
    relations = VisualGenome(folder, relations=True)
    caption = relations.captions("1")[0]
    assert caption.words == ("man", "Sitting", "on", "horse")
    assert [(p.first_word_index, p.last_word_index, p.entity_id) for p in caption.phrases] == [(0, 0, 100), (3, 3, 101)]
    parse = relations.parses(["1"])["1_0"]
    assert parse.arcs() == [(0, 3, "sitting_on")]  # subject word → object word, the predicate as the relation
    np.testing.assert_array_equal(relations.annotation("1").boxes[101], [[10, 40, 70, 95]])


def test_a_relationship_may_name_its_objects_by_id_only(tmp_path):
    folder = _visual_genome(tmp_path / "vg")
    data = json.loads((folder / "relationships.json").read_text())
    data[0]["relationships"][0]["object"] = {"object_id": 101}  # its box and name from objects.json
    (folder / "relationships.json").write_text(json.dumps(data))
    caption = VisualGenome(folder, relations=True).captions("1")[0]
    assert caption.words[-1] == "horse"
    data[0]["relationships"][0]["object"] = {"object_id": 555}
    (folder / "relationships.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"relationship 5 object: object_id 555 has no box here and is not in "
                                        r"objects.json for image 1"):
        VisualGenome(folder, relations=True).captions("1")


@pytest.mark.parametrize("case, message", [
    ("negative", r"region_descriptions.json: image 1, region 0: box .* width or height of 0 or less"),
    ("unsized", r"region_descriptions.json: record 0: image 1 is not in image_data.json"),
    ("outside", r"region 0: box .* reaches outside the 100 × 100 image"),
    ("no_words", r"region 0: the text '' has no words"),
])
def test_hostile_visual_genome_files_get_one_line_errors(tmp_path, case, message):
    region = {"region_id": 11, "phrase": "a man", "box": [10, 10, 60, 90]}
    images = None
    if case == "negative":
        region["box"] = [60, 10, 10, 90]
    elif case == "unsized":
        images = [{"image_id": 2, "width": 50, "height": 40}]
    elif case == "outside":
        region["box"] = [10, 10, 400, 90]
    else:
        region["phrase"] = ""
    folder = _visual_genome(tmp_path / "vg", regions={"1": [region]}, images=images)
    with pytest.raises(DataError, match=message) as caught:
        VisualGenome(folder).captions("1") if case != "unsized" else VisualGenome(folder).captions("2")
    assert len(str(caught.value).splitlines()) == 1


@given(st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=3) | st.dictionaries(
                        st.sampled_from(["image_id", "id", "regions", "region_id", "phrase", "x", "y", "width",
                                         "height"]), children, max_size=5), max_leaves=12))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fuzzed_region_files_give_one_line_errors(tmp_path, value):
    folder = _visual_genome(tmp_path / "vg")
    (folder / "region_descriptions.json").write_text(json.dumps(value))
    try:
        data = VisualGenome(folder)
        for image_id in ("1", "2"):
            data.captions(image_id)
            data.annotation(image_id)
    except DataError as exc:
        assert "\n" not in str(exc)


# ------------------------------------------------------------------------------------------- the world and the probes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from training.world import build_world
    from training.world.scenes import FEATURE_DIM

    root = tmp_path_factory.mktemp("world3")
    build_world(root / "world", images=30, seed=4, progress=False, render=True, hdf5=False)
    return {"root": root / "world", "ckpt": write_checkpoint(root / "ckpt", dim=FEATURE_DIM)}


def _probe(world, out: Path, option: str, folder: str, *extra, split: str = "val") -> dict:
    assert probe_main(["entity-grounding", "--ckpt", str(world["ckpt"]), option, str(world["root"] / folder),
                       "--features", str(world["root"] / "features.tsv"), "--split", split, "--out", str(out),
                       "--quiet", *extra]) == 0
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("query_word", ["last", "head"])
def test_the_worlds_refcoco_and_visual_genome_layouts_give_the_same_numbers(world, tmp_path, query_word):
    """The world writes each one-box phrase as a RefCOCO expression and a Visual Genome region, in the same order:
    the two layouts ask the same questions, and the tables are the same byte for byte; for these phrases (ending
    in their noun) the head word is the last word, so both query words give the same numbers too."""
    ref = _probe(world, tmp_path / "ref", "--refcoco", "refcoco", "--query-word", query_word)
    vg = _probe(world, tmp_path / "vg", "--visual-genome", "visual_genome", "--query-word", query_word)
    assert (tmp_path / "ref" / "entity_grounding.csv").read_bytes() == \
        (tmp_path / "vg" / "entity_grounding.csv").read_bytes()
    assert ref["n_scored"] == vg["n_scored"] > 20 and ref["baselines"] == vg["baselines"]
    assert ref["dataset"] == "refcoco" and vg["dataset"] == "visual_genome" and ref["query_word"] == query_word
    if query_word == "head":
        last = _probe(world, tmp_path / "last", "--dataset", "refcoco", "--query-word", "last")
        assert (tmp_path / "last" / "entity_grounding.csv").read_bytes() == \
            (tmp_path / "ref" / "entity_grounding.csv").read_bytes()
        assert last["n_scored"] == ref["n_scored"]


def test_refcoco_splits_and_the_flickr30k_layout_count_every_expression(world, tmp_path):
    """RefCOCO's unc test halves (testA, testB) cover the world's test images; every expression is scored or
    skipped with its reason; the Flickr30K layout of the same world still probes as before."""
    data = RefCoco(world["root"] / "refcoco")
    flickr = vb_probe.Flickr30kEntities(world["root"] / "flickr30k")
    assert data.split("testA") + data.split("testB") == flickr.split("test")
    run = _probe(world, tmp_path / "a", "--refcoco", "refcoco", split="testA")
    expressions = sum(len(data.captions(i)) for i in data.split("testA"))
    assert run["n_phrases"] == expressions == run["n_scored"] + sum(run["skipped"].values())
    flickr_run = _probe(world, tmp_path / "f", "--flickr30k", "flickr30k", split="test")
    assert (flickr_run["dataset"], flickr_run["query_word"]) == ("flickr30k", "last")  # the set's own default
    assert (run["dataset"], run["query_word"]) == ("refcoco", "head")


def test_relation_grounding_from_visual_genomes_relationships_needs_no_parser(world, tmp_path):
    out = tmp_path / "rel"
    assert probe_main(["syntactic", "--ckpt", str(world["ckpt"]), "--visual-genome", str(world["root"] / "visual_genome"),
                       "--features", str(world["root"] / "features.tsv"), "--split", "train", "--relation", "all",
                       "--out", str(out), "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["parser"] == "visual_genome:relationships"
    vg = VisualGenome(world["root"] / "visual_genome", relations=True)
    predicates = {label for i in vg.split("train") for p in vg.parses([i]).values() for _, _, label in p.arcs()}
    assert set(run["relations"]) == predicates and {"kicks", "above"} & predicates
    rows = (out / "syntactic.csv").read_text().splitlines()
    assert any(",head_to_dependent," in r for r in rows) and any(",dependent_to_head," in r for r in rows)


def test_a_pixel_family_reads_refcoco_with_cocos_file_names(world, tmp_path):
    """A decoder model on RefCOCO: images found by COCO's file names (renamed here as COCO names them), by the probe
    and by the explorer (which did not look them up)."""
    import shutil

    from decoder_fixtures import tiny_paligemma

    images = tmp_path / "train2014"
    images.mkdir()
    folder = tmp_path / "refcoco"
    shutil.copytree(world["root"] / "refcoco", folder)
    instances = json.loads((folder / "instances.json").read_text())
    for image in instances["images"]:
        name = f"COCO_train2014_{image['id']:012d}.png"
        shutil.copy(world["root"] / "images" / f"{image['id']}.png", images / name)
        image["file_name"] = name
    (folder / "instances.json").write_text(json.dumps(instances))
    model = vb_probe.load_model(tiny_paligemma())
    result = vb_probe.entity_grounding(model, None, folder, images, split="val", progress=False)
    expressions = sum(len(c.phrases) for i in RefCoco(folder).split("val") for c in RefCoco(folder).captions(i))
    assert result.n_phrases == expressions and result.n > 0 and result.provenance["dataset"] == "refcoco"
    page = vb_probe.explore(model, None, folder, images, split="val", limit=2, progress=False).data  # the same names
    assert page["captions"] and all(c["picture"] for c in page["captions"])


def test_check_data_counts_refcoco_and_visual_genome_as_the_probe_does(world, capsys):
    """check-data on the world's RefCOCO folder lists its own splits (testA, testB), and its counts are the
    expressions the probe scores; the same for Visual Genome's regions."""
    from vb_probe.check_data import check_data

    assert probe_main(["check-data", "--refcoco", str(world["root"] / "refcoco"), "--features",
                       str(world["root"] / "features.tsv"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "testA" in printed and "testB" in printed and "Flickr30K" not in printed and "nothing is missing" in printed
    reports, _ = check_data(world["root"] / "refcoco")
    data = RefCoco(world["root"] / "refcoco")
    assert [r.split for r in reports] == ["train", "val", "testA", "testB"]
    for report in reports:
        expressions = sum(len(data.captions(i)) for i in data.split(report.split))
        assert report.phrases == report.with_boxes == expressions
    reports, _ = check_data(world["root"] / "visual_genome", splits=("val",))
    regions = VisualGenome(world["root"] / "visual_genome")
    assert reports[0].with_boxes == sum(len(regions.captions(i)) for i in regions.split("val"))


@pytest.mark.parametrize("chunk", [5, 64, 1 << 22])
def test_records_of_a_large_json_array_are_found_by_byte_span(tmp_path, monkeypatch, chunk):
    """The streaming index of a JSON array (Visual Genome's files) gives each image's record exactly as the whole
    file parses, across read boundaries that split records and multi-byte characters, after a byte order mark;
    the index is kept in the user cache by content, and a record cut short is one line naming the file."""
    from vb_probe.data import json_records
    from vb_probe.data.json_records import JsonRecords

    monkeypatch.setattr(json_records, "CHUNK", chunk)
    monkeypatch.setenv("VB_PROBE_CACHE", str(tmp_path / "cache"))
    records = [{"id": i, "regions": [{"phrase": f"café naïve 東京 {i} 🐴", "x": i}]} for i in range(40)]
    path = tmp_path / "region_descriptions.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False, indent=1).encode("utf-8"))
    index = JsonRecords(path, lambda entry, where: str(entry["id"]))
    assert index.ids() == [str(i) for i in range(40)]
    assert all(index.record(str(i)) == records[i] for i in range(40)) and index.record("99") is None
    assert list((tmp_path / "cache" / "json-index").glob("*.json"))  # cached, outside the data folder
    monkeypatch.setattr(json_records, "scan_records", lambda *a: pytest.fail("the cached index was not used"))
    assert JsonRecords(path, lambda entry, where: str(entry["id"])).record("7") == records[7]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(records)[:-40])
    monkeypatch.undo()
    monkeypatch.setattr(json_records, "CHUNK", chunk)
    monkeypatch.setenv("VB_PROBE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"broken.json: record \d+ is not valid JSON|broken.json: ends inside"):
        JsonRecords(broken, lambda entry, where: str(entry["id"]))
