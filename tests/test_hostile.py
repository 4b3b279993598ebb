"""Hostile input, by class: nothing of the user's destroyed, no data file runs code, no wrong number with
exit 0, no half-written results, one line instead of a traceback, and the smaller edges (byte order marks,
argparse, config values). Each class is a README promise; fuzzing covers the config, vocabulary and TOML
readers as test_reliability covers the data readers."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from fixtures import write_probe_set
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.cli import main as train_main
from vb_probe.cli import main as probe_main
from vb_probe.errors import CheckpointError, DataError, VbProbeError

TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
        "model.intermediate_size=64", "model.max_position_embeddings=64", "train.batch_size=8",
        "train.eval_every=2", "train.save_every=2", "train.eval_batches=1", "train.threads=1"]


class RunsAShellCommand:
    """Pickles as a call to os.system: loading it with plain pickle would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_probe_set(tmp_path_factory.mktemp("hostile"), n_images=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small built-in world and a 2-step pre-training run on it (a checkpoint with masked-LM head)."""
    from training.world import build_world

    root = tmp_path_factory.mktemp("hw")
    build_world(root / "world", images=20, seed=3, progress=False, render=False, hdf5=False)
    run = root / "run"
    assert train_main(["pretrain", "--data", str(root / "world"), "--out", str(run), "--quiet", "--steps", "2",
                       *sum((["--set", s] for s in TINY), [])]) == 0
    return {"world": root / "world", "run": run}


def probe_args(data, out, *extra, command="entity-grounding", ckpt=None, flickr=None, features=None):
    return [command, "--ckpt", str(ckpt or data["ckpt"]), "--flickr30k", str(flickr or data["flickr"]),
            "--features", str(features or data["tsv"]), "--out", str(out), "--quiet", *extra]


def one_line_error(capsys, *expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ 1. data loss

def test_world_refuses_a_folder_holding_a_users_file(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "thesis.txt").write_text("three years of work")
    assert train_main(["world", "--out", str(folder), "--images", "10", "--quiet", "--no-images"]) == 2
    one_line_error(capsys, "thesis.txt", "vb-probe did not write")
    assert (folder / "thesis.txt").read_text() == "three years of work"
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]


def test_world_refuses_an_existing_file_as_out(tmp_path, capsys):
    target = tmp_path / "notes.md"
    target.write_text("mine")
    assert train_main(["world", "--out", str(target), "--images", "10", "--quiet", "--no-images"]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]  # no temporary folder left either


def test_world_replaces_its_own_folder_but_not_a_file_added_to_it(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["world", "--out", str(out), "--images", "10", "--quiet", "--no-images", "--no-hdf5"]
    assert train_main(args) == 0
    assert train_main(args) == 0  # its own folder: replaced
    (out / "flickr30k" / "my_notes.txt").write_text("added by the user")
    assert train_main(args) == 2
    one_line_error(capsys, "flickr30k/my_notes.txt")
    assert (out / "flickr30k" / "my_notes.txt").read_text() == "added by the user"


def test_saving_a_model_never_replaces_a_users_folder(data, tmp_path):
    from vb_probe.checkpoints import load_model, save_model

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "table.csv").write_text("a,b\n")
    with pytest.raises(VbProbeError, match="table.csv"):
        save_model(load_model(data["ckpt"]), folder)
    assert (folder / "table.csv").read_text() == "a,b\n"


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_train_commands_refuse_a_file_as_out(tmp_path, capsys, command):
    target = tmp_path / "file"
    target.write_text("mine")
    extra = ["--task", "vqa", "--init", "random"] if command == "finetune" else []
    assert train_main([command, "--data", str(tmp_path), "--out", str(target), *extra]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert target.read_text() == "mine"


# ------------------------------------------------------------------------------ 2. code execution

def test_id_map_pickle_that_runs_code_is_refused(data, tmp_path):
    from vb_probe.data.features import open_features

    h5 = tmp_path / "f.h5"
    shutil.copy(data["h5"], h5)
    marker = tmp_path / "pwned"
    with open(tmp_path / "f_imgid2idx.pkl", "wb") as handle:
        pickle.dump({"500": 0, "501": RunsAShellCommand(marker)}, handle)
    with pytest.raises(DataError, match="refused to read the image-id map.*posix.system"):
        open_features(h5)
    assert not marker.exists()


def test_id_map_with_numpy_integers_still_reads(data, tmp_path):
    from vb_probe.data.features import open_features

    h5 = tmp_path / "f.h5"
    shutil.copy(data["h5"], h5)
    with open(tmp_path / "f_imgid2idx.pkl", "wb") as handle:  # as some converters wrote them
        pickle.dump({np.int64(int(i)): np.int64(n) for n, i in enumerate(data["ids"])}, handle)
    store = open_features(h5)
    np.testing.assert_array_equal(store["501"].boxes, data["regions"]["501"].boxes)


def test_resume_from_a_checkpoint_that_runs_code_is_refused(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    marker = tmp_path / "pwned"
    torch.save({"step": 9, "payload": RunsAShellCommand(marker)}, run / "checkpoints" / "step-0000009.pt")
    args = ["pretrain", "--data", str(world["world"]), "--out", str(run), "--quiet", "--steps", "12", "--resume",
            *sum((["--set", s] for s in TINY), [])]
    assert train_main(args) == 2
    one_line_error(capsys, "step-0000009.pt", "refused to load")
    assert not marker.exists()


def test_evaluate_refuses_a_model_file_that_runs_code(world, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"task": "vqa", "payload": RunsAShellCommand(marker)}, tmp_path / "model.pt")
    assert train_main(["evaluate", "--ckpt", str(tmp_path), "--data", str(world["world"])]) == 2
    one_line_error(capsys, "model.pt", "refused to load")
    assert not marker.exists()


# ------------------------------------------------------------------------------ 3. wrong numbers with exit 0

def test_config_with_fewer_layers_than_the_weights_is_refused(data, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["num_hidden_layers"] = 2  # the weights have 3
    (ckpt / "config.json").write_text(json.dumps(config))
    assert probe_main(probe_args(data, tmp_path / "o", ckpt=ckpt)) == 2
    one_line_error(capsys, "does not describe", "num_hidden_layers must say 3")
    assert not (tmp_path / "o" / "entity_grounding.csv").exists()


def test_vocabulary_without_cls_is_refused(data, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    (ckpt / "tokenizer.json").unlink()
    original = data["ckpt"].parent / "ckpt_vocab" / "vocab.txt"
    vocab = [t for t in original.read_text().splitlines() if t != "[CLS]"]
    (ckpt / "vocab.txt").write_text("\n".join(vocab) + "\n")
    assert probe_main(probe_args(data, tmp_path / "o", ckpt=ckpt)) == 2
    one_line_error(capsys, "has no [CLS]")


def test_resume_with_another_mask_is_refused(data, tmp_path, capsys, monkeypatch):
    from vb_probe import pipeline

    out = tmp_path / "o"
    real = pipeline.collate
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(pipeline, "collate", interrupting)
    assert probe_main(probe_args(data, out, "--batch-size", "1")) == 130
    monkeypatch.setattr(pipeline, "collate", real)
    capsys.readouterr()
    assert probe_main(probe_args(data, out, "--batch-size", "1", "--mask", "intervene", "--resume")) == 2
    one_line_error(capsys, "saved progress is for another run", "mask 'posthoc' → 'intervene'")
    assert not (out / "entity_grounding.csv").exists()


@pytest.mark.parametrize("rows, expected", [({"500": -1}, "maps to row -1"),
                                            ({"500": 0, "501": 0}, "both map to row 0"),
                                            ({"500": 99}, "pos_boxes has rows 0..29"),
                                            ({"500": "zero"}, "is not an image id → row number")])
def test_bad_id_map_rows_are_refused(data, tmp_path, rows, expected):
    from vb_probe.data.features import open_features

    shutil.copy(data["h5"], tmp_path / "f.h5")
    with open(tmp_path / "f_imgid2idx.pkl", "wb") as handle:
        pickle.dump(rows, handle)
    with pytest.raises(DataError, match=expected):
        open_features(tmp_path / "f.h5")


def _annotation_with_box(tmp_path, box: str, size=(400, 300)):
    path = tmp_path / "9.xml"
    path.write_text(f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size><object>"
                    f"<name>1</name><bndbox>{box}</bndbox></object></annotation>")
    return path


def test_gold_box_far_outside_its_image_is_refused(tmp_path):
    from vb_probe.data.flickr30k import read_annotation

    with pytest.raises(DataError, match="reaches outside the 400×300 image"):
        read_annotation(_annotation_with_box(
            tmp_path, "<xmin>10</xmin><ymin>10</ymin><xmax>4000</xmax><ymax>200</ymax>"))
    edge = read_annotation(_annotation_with_box(  # one pixel past the edge, as annotators' tools write
        tmp_path, "<xmin>1</xmin><ymin>1</ymin><xmax>401</xmax><ymax>301</ymax>"))
    np.testing.assert_array_equal(edge.boxes[1], [[0, 0, 400, 300]])


# ------------------------------------------------------------------------------ 4. half-written results

@pytest.mark.parametrize("command", ["entity-grounding", "syntactic"])
def test_full_disk_leaves_the_previous_runs_files(data, tmp_path, capsys, monkeypatch, command):
    import matplotlib.figure

    extra = ["--parses", str(data["parses"]), "--relation", "nsubj"] if command == "syntactic" else []
    out = tmp_path / "o"
    assert probe_main(probe_args(data, out, *extra, command=command)) == 0
    before = snapshot(out)

    def full_disk(self, fname, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    capsys.readouterr()
    assert probe_main(probe_args(data, out, *extra, "--limit", "2", command=command)) == 2
    one_line_error(capsys, "No space left on device")
    assert snapshot(out) == before  # every file as the first run left it, no temporary file beside them


# ------------------------------------------------------------------------------ 5. one line, not a traceback

def _ckpt_with_config(data, tmp_path, **changes):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))
    return ckpt


@pytest.mark.parametrize("changes, expected", [
    ({"num_attention_heads": 5}, "is not a multiple of num_attention_heads 5"),
    ({"hidden_size": "32"}, "hidden_size is '32', expected a whole number"),
    ({"hidden_act": "swishy"}, "hidden_act is 'swishy'"),
    ({"attention_probs_dropout_prob": 2}, "expected a probability"),
])
def test_config_json_errors_are_one_line(data, tmp_path, capsys, changes, expected):
    assert probe_main(probe_args(data, tmp_path / "o", ckpt=_ckpt_with_config(data, tmp_path, **changes))) == 2
    one_line_error(capsys, "config.json", expected)


def test_broken_tokenizer_json_is_one_line(data, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    (ckpt / "vocab.txt").unlink(missing_ok=True)
    (ckpt / "tokenizer.json").write_text('{"model": {"type": "WordPiece", "vocab": 7')
    assert probe_main(probe_args(data, tmp_path / "o", ckpt=ckpt)) == 2
    one_line_error(capsys, "cannot read the tokenizer")


def test_inf_box_coordinate_is_one_line(tmp_path):
    from vb_probe.data.flickr30k import read_annotation

    with pytest.raises(DataError, match="<xmax> is 'inf', expected a finite number"):
        read_annotation(_annotation_with_box(tmp_path, "<xmin>1</xmin><ymin>1</ymin><xmax>inf</xmax><ymax>9</ymax>"))


def test_split_file_that_is_not_utf8_is_one_line(data, tmp_path, capsys):
    flickr = tmp_path / "flickr"
    shutil.copytree(data["flickr"], flickr)
    (flickr / "test.txt").write_bytes(b"500\n\xff\xfe501\n")
    assert probe_main(probe_args(data, tmp_path / "o", flickr=flickr)) == 2
    one_line_error(capsys, "test.txt: not UTF-8")


def test_corrupt_progress_file_under_resume_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".main.progress.json").write_text('{"run": {"n_items": 3}, "done": ')
    assert probe_main(probe_args(data, out, "--resume")) == 2
    one_line_error(capsys, ".main.progress.json", "damaged", "without --resume")


def test_causal_with_a_missing_scores_file_is_one_line(world, tmp_path, capsys):
    w = world["world"]
    assert probe_main(["causal", "--ckpt", str(world["run"] / "final"), "--flickr30k", str(w / "flickr30k"),
                       "--features", str(w / "features.tsv"), "--limit", "2", "--out", str(tmp_path / "c"),
                       "--scores", str(tmp_path / "nowhere.csv")]) == 2
    one_line_error(capsys, "nowhere.csv: file not found")


def test_causal_k_larger_than_the_model_is_one_line(world, tmp_path, capsys):
    w = world["world"]
    scores = tmp_path / "scores.csv"
    scores.write_text("layer,head,accuracy\n" + "".join(f"{l},{h},0.{l}{h}\n" for l in range(2) for h in range(4)))
    assert probe_main(["causal", "--ckpt", str(world["run"] / "final"), "--flickr30k", str(w / "flickr30k"),
                       "--features", str(w / "features.tsv"), "--limit", "2", "--out", str(tmp_path / "c"),
                       "--scores", str(scores), "-k", "200"]) == 2
    one_line_error(capsys, "-k 200", "use -k between 1 and 4")


@pytest.mark.parametrize("argv, expected", [
    (["attribute", "--steps", "0"], "argument --steps: 0 must be at least 1"),
    (["causal", "--draws", "0"], "argument --draws: 0 must be at least 1"),
    (["entity-grounding", "--ckpt", "x"], "the following arguments are required"),
])
def test_argument_errors_are_one_line(capsys, argv, expected):
    base = ["--ckpt", "c", "--flickr30k", "f", "--features", "x", "--out", "o"] if argv[0] != "entity-grounding" else []
    with pytest.raises(SystemExit) as stop:
        probe_main([*argv, *base])
    assert stop.value.code == 2
    one_line_error(capsys, expected, "--help")


def test_world_and_pretrain_out_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert train_main(["world", "--out", str(blocker / "sub"), "--images", "10", "--quiet"]) == 2
    one_line_error(capsys, "file: is a file, not a folder")
    assert train_main(["pretrain", "--data", str(tmp_path), "--out", str(blocker / "sub")]) == 2
    one_line_error(capsys, "cannot create the folder")


# ------------------------------------------------------------------------------ 6. smaller edges

def test_byte_order_marks_are_read_as_text(data, tmp_path):
    flickr = tmp_path / "flickr"
    shutil.copytree(data["flickr"], flickr)
    bom = b"\xef\xbb\xbf"
    for path in [flickr / "test.txt", *sorted((flickr / "Sentences").glob("*.txt"))]:
        path.write_bytes(bom + path.read_bytes())
    parses = tmp_path / "parses.conllu"
    parses.write_bytes(bom + data["parses"].read_bytes())
    plain, marked = tmp_path / "plain", tmp_path / "marked"
    assert probe_main(probe_args(data, plain, "--parses", str(data["parses"]), "--relation", "nsubj",
                                 command="syntactic")) == 0
    assert probe_main(probe_args(data, marked, "--parses", str(parses), "--relation", "nsubj", flickr=flickr,
                                 command="syntactic")) == 0
    assert (plain / "syntactic.csv").read_bytes() == (marked / "syntactic.csv").read_bytes()


def test_toml_that_is_not_utf8_names_the_file(tmp_path):
    from training.config import load_config

    path = tmp_path / "bad.toml"
    path.write_bytes(b"[train]\nsteps = 3 # caf\xe9\n")
    with pytest.raises(VbProbeError, match="bad.toml: not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("override, expected", [("train.lr=-0.001", "train.lr=-0.001 must be above 0"),
                                                ("objective.mask_prob=0", "objective.mask_prob=0.0 must be above 0"),
                                                ("train.warmup_frac=2", "train.warmup_frac=2.0 must be at least 0 "
                                                                        "and at most 1"),
                                                ("data.train_splits=3", "should be a list of names")])
def test_config_values_out_of_range_name_the_key(override, expected):
    from training.config import load_config

    with pytest.raises(VbProbeError, match=expected.replace(".", r"\.")):
        load_config(None, [override])


def test_resume_refuses_new_set_values(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    args = ["pretrain", "--data", str(world["world"]), "--out", str(run), "--quiet", "--steps", "4", "--resume",
            *sum((["--set", s] for s in TINY), [])]
    assert train_main([*args, "--set", "train.lr=0.001"]) == 2
    one_line_error(capsys, "train.lr: 0.0003 → 0.001", "only --steps may change")


def test_resume_removes_a_killed_saves_temporary_file(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    stale = run / "checkpoints" / ".step-0000004.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    args = ["pretrain", "--data", str(world["world"]), "--out", str(run), "--quiet", "--steps", "4", "--resume",
            *sum((["--set", s] for s in TINY), [])]
    assert train_main(args) == 0
    assert not stale.exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002.pt", "step-0000004.pt"]


def test_ablate_heads_refuses_an_unknown_mode(data):
    from vb_probe.checkpoints import load_model
    from vb_probe.hooks import ablate_heads

    with pytest.raises(ValueError, match="ablation mode 'maen'"):
        with ablate_heads(load_model(data["ckpt"]), [(0, 0)], mode="maen"):  # type: ignore[arg-type]
            pass


# ------------------------------------------------------------------------------ fuzzing the remaining readers

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
json_values = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True),
                        st.text(max_size=6), st.lists(st.integers(0, 3), max_size=2))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["vocab_size", "hidden_size", "num_hidden_layers",
                                                "num_attention_heads", "intermediate_size", "visual_embedding_dim",
                                                "max_position_embeddings", "type_vocab_size", "hidden_act",
                                                "layer_norm_eps", "hidden_dropout_prob", "bypass_transformer",
                                                "model_type"]), json_values, max_size=3))
def test_fuzz_config_json(data, tmp_path_factory, changes):
    from vb_probe.checkpoints import load_model

    folder = tmp_path_factory.mktemp("cfg")
    ckpt = folder / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(changes)
    (ckpt / "config.json").write_text(json.dumps(config))
    try:
        model = load_model(ckpt)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 32  # it fits the weights


@FUZZ
@given(lines=st.lists(st.one_of(st.sampled_from(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "##s", ""]),
                                st.text(max_size=5)), max_size=12),
       tokenizer_json=st.one_of(st.none(), st.text(max_size=30), st.sampled_from(
           ['{}', '{"model": {}}', '[]', '{"model": {"type": "WordPiece", "vocab": {"[CLS]": 0}}}'])))
def test_fuzz_vocab_and_tokenizer_json(tmp_path_factory, lines, tokenizer_json):
    from vb_probe.tokenization import BERT_SPECIAL_TOKENS, load_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    (folder / "vocab.txt").write_text("\n".join(lines) + "\n")
    if tokenizer_json is not None:
        (folder / "tokenizer.json").write_text(tokenizer_json)
    try:
        tokenizer = load_tokenizer(folder)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    assert all(token in vocab for token in BERT_SPECIAL_TOKENS)
    encoded = tokenizer(["a"], is_split_into_words=True)["input_ids"]
    assert encoded[0] == vocab["[CLS]"] and encoded[-1] == vocab["[SEP]"]


toml_text = st.one_of(
    st.text(max_size=60),
    st.builds(lambda section, key, value: f"[{section}]\n{key} = {value}\n",
              st.sampled_from(["model", "train", "objective", "data", "nope"]),
              st.sampled_from(["steps", "lr", "hidden_size", "num_attention_heads", "masking", "train_splits",
                               "mask_prob", "amp", "zzz"]),
              st.sampled_from(["1", "-1", "0", "3.5", "nan", "inf", '"x"', "true", "[1, 2]", '["a"]', "{a = 1}"])),
    st.builds(lambda key, value: f"{key} = {value}\n", st.sampled_from(["model", "train"]),
              st.sampled_from(["3", '"x"', "[1]"])),
)


@FUZZ
@given(text=toml_text)
def test_fuzz_toml_config(tmp_path_factory, text):
    from training.config import load_config

    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_text(text)
    try:
        config = load_config(path)
    except VbProbeError as exc:
        assert "\n" not in str(exc) and "c.toml" in str(exc)
        return
    t = config.train
    assert t.steps >= 1 and 0 < t.lr <= 1 and config.model.hidden_size % config.model.num_attention_heads == 0
