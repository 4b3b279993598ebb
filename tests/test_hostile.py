"""Hostile input, by class: nothing of the user's destroyed, no data file runs code, no wrong number with
exit 0, no half-written results, one line instead of a traceback, and the smaller edges (byte order marks,
argparse, config values). Each class is a README promise; fuzzing covers the config, vocabulary and TOML
readers as test_reliability covers the data readers."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
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
    assert train_main(["world", "--out", str(folder), "--scenes", "10", "--quiet", "--no-images"]) == 2
    one_line_error(capsys, "thesis.txt", "vb-probe did not write")
    assert (folder / "thesis.txt").read_text() == "three years of work"
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]


def test_world_refuses_an_existing_file_as_out(tmp_path, capsys):
    target = tmp_path / "notes.md"
    target.write_text("mine")
    assert train_main(["world", "--out", str(target), "--scenes", "10", "--quiet", "--no-images"]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]  # no temporary folder left either


def test_world_replaces_its_own_folder_but_not_a_file_added_to_it(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["world", "--out", str(out), "--scenes", "10", "--quiet", "--no-images", "--no-hdf5"]
    assert train_main(args) == 0
    assert train_main(args) == 0  # its own folder: replaced
    (out / "flickr30k" / "my_notes.txt").write_text("added by the user")
    assert train_main(args) == 2
    one_line_error(capsys, "flickr30k/my_notes.txt")
    assert (out / "flickr30k" / "my_notes.txt").read_text() == "added by the user"


def test_saving_a_model_never_replaces_a_users_folder(data, tmp_path):
    from vb_probe.families.visualbert.checkpoints import load_model, save_model

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


def interrupted_probe(monkeypatch, argv: list[str], after_batches: int = 10) -> None:
    """Run ``vb-probe argv`` and press Ctrl-C when batch ``after_batches + 1`` would be scored (progress is saved
    every 10 batches, so a resume has something to continue from); any family."""
    import vb_probe.pipeline as pipeline

    real, calls = pipeline.score_batch, {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == after_batches + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(pipeline, "score_batch", interrupting)
    assert probe_main(argv) == 130
    monkeypatch.setattr(pipeline, "score_batch", real)


def test_resume_with_another_mask_is_refused(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    interrupted_probe(monkeypatch, probe_args(data, out, "--batch-size", "1"))
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
    assert train_main(["world", "--out", str(blocker / "sub"), "--scenes", "10", "--quiet"]) == 2
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
    from vb_probe.families.visualbert.checkpoints import load_model
    from vb_probe.families.visualbert.hooks import ablate_heads

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
    from vb_probe.families.visualbert.checkpoints import load_model

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


# ====================================================================================== round two
# Each class of the second hostile round: script from captions, plausible numbers from broken numbers, our
# writers against our own folders, a user's single file, silent wrong data, another model's scores, tracebacks,
# the Python API, leftovers.

def _rewrite_captions(flickr, image_id: str, lines: list[str]) -> None:
    (flickr / "Sentences" / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _copy_set(data, tmp_path):
    """A private copy of the probe set's data (flickr root, TSV) to damage."""
    root = tmp_path / "set"
    shutil.copytree(data["flickr"], root / "flickr")
    shutil.copy(data["tsv"], root / "features.tsv")
    return {**data, "flickr": root / "flickr", "tsv": root / "features.tsv"}


def _test_regions(data):
    """The regions of the test split's images (the set's val split holds a box that the reader refuses)."""
    from vb_probe.data.features import open_features

    store = open_features(data["tsv"])
    return [store[i] for i in (data["flickr"] / "test.txt").read_text().split()]


def _write_tsv_rows(path, regions_list):
    from vb_probe.data.features import write_tsv

    write_tsv(path, regions_list)


# ------------------------------------------------------------------------- 1. script from data in the page

PAYLOADS = [
    "[/EN#1/people <img src=x onerror=window.__pwned=1;document.title='pwned'> man]",
    "throws [/EN#2/other a <!--<script> ball] </script><script>window.__pwned=2</script>",
    "[/EN#3/other <svg/onload=window.__pwned=3> &lt;b&gt;x&lt;/b&gt; <!-- --> balls] ]]> \u2028 \u2029 end",
]


@pytest.fixture(scope="module")
def hostile_page(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("xss")
    flickr = root / "flickr"
    shutil.copytree(data["flickr"], flickr)
    for image_id in data["ids"][:2]:
        _rewrite_captions(flickr, image_id, [" ".join(PAYLOADS[:2]), PAYLOADS[2] + " <!--<script>"])
    out = root / "page"
    assert probe_main(["explore", "--ckpt", str(data["ckpt"]), "--flickr30k", str(flickr), "--features",
                       str(data["tsv"]), "--limit", "2", "--out", str(out), "--quiet"]) == 0
    return {"html": out / "index.html", "flickr": flickr}


def test_page_json_cannot_end_its_script_or_open_a_comment(hostile_page):
    html = hostile_page["html"].read_text(encoding="utf-8")
    assert html.count("</script>") == 2 and html.count("<script") == 2  # the data element and the page's own
    payload = html.split('<script id="vb-data" type="application/json">')[1].split("</script>")[0]
    assert not {"<", ">", "&"} & set(payload) and "onerror" in payload  # the captions are there, as escapes
    assert "<!--" not in html
    assert "Content-Security-Policy" in html and "'unsafe-inline'" not in html and "default-src 'none'" in html


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("<>/!-&'\"scriptSCRIPT \u2028\u2029\\x")), max_size=40))
def test_fuzz_page_json_round_trips_and_holds_no_markup(text):
    from vb_probe.explorer import page_json

    encoded = page_json({"words": [text], "key": text})
    assert json.loads(encoded) == {"words": [text], "key": text}
    assert not {"<", ">", "&", "\u2028", "\u2029"} & set(encoded)


def test_page_json_refuses_numbers_that_are_not_finite():
    from vb_probe.explorer import page_json

    for bad in (float("nan"), float("inf")):
        with pytest.raises(VbProbeError, match="not finite"):
            page_json({"width": bad})


def test_hostile_captions_stay_text_in_the_browser(hostile_page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from test_explorer import _browser

    browser = _browser()
    try:
        browser.get(hostile_page["html"].as_uri())
        hovered = 0
        for index in range(len(browser.find_elements(By.CSS_SELECTOR, "#captions li"))):
            browser.find_element(By.CSS_SELECTOR, f'#captions li[data-caption="{index}"]').click()
            for layer, head in ((0, 0), (2, 3)):
                browser.find_element(By.CSS_SELECTOR, f'#grid rect[data-layer="{layer}"][data-head="{head}"]').click()
                for word in browser.find_elements(By.CSS_SELECTOR, "#caption span"):  # every word, query or not
                    ActionChains(browser).move_to_element(word).click().perform()
                    hovered += 1
                    assert browser.execute_script("return window.__pwned") is None
        assert hovered > 40
        assert len(browser.find_elements(By.CSS_SELECTOR, "#captions li")) == 4  # 2 images × 2 captions, none split
        browser.find_element(By.CSS_SELECTOR, '#captions li[data-caption="0"]').click()
        shown = browser.find_element(By.ID, "caption").text
        assert "<img src=x onerror=window.__pwned=1;document.title='pwned'>" in shown  # the payload, as text
        assert "</script><script>window.__pwned=2</script>" in shown
        assert browser.title == "vb-probe explorer"
        ActionChains(browser).move_to_element(browser.find_element(By.CSS_SELECTOR, "#caption span.query")).perform()
        status = browser.find_element(By.ID, "status").text
        assert "most-attended region" in status
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # and were markup ever to slip in, the policy forbids its inline handler and any request
        browser.execute_script("document.getElementById('status').innerHTML = "
                               "'<img src=x onerror=\"window.__csp=1\">';")
        browser.execute_script("fetch('data:text/plain,x').then(() => { window.__fetched = 1; }, () => {});")
        import time

        time.sleep(0.5)
        assert browser.execute_script("return window.__csp") is None
        assert browser.execute_script("return window.__fetched") is None
    finally:
        browser.quit()


def test_nan_image_size_never_reaches_the_page(data, tmp_path, capsys):
    bad = _copy_set(data, tmp_path)
    rows = bad["tsv"].read_text().splitlines()
    fields = rows[0].split("\t")
    fields[1] = "nan"  # img_h
    rows[0] = "\t".join(fields)
    bad["tsv"].write_text("\n".join(rows) + "\n")
    assert probe_main(["explore", "--ckpt", str(data["ckpt"]), "--flickr30k", str(bad["flickr"]), "--features",
                       str(bad["tsv"]), "--limit", "2", "--out", str(tmp_path / "p"), "--quiet"]) == 2
    one_line_error(capsys, f"image {data['ids'][0]}", "image height is nan")
    assert not (tmp_path / "p" / "index.html").exists()


# ------------------------------------------------------------------------- 2. plausible numbers from broken numbers

def test_a_nan_weight_in_a_checkpoint_is_refused(data, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    key = next(k for k in state if "encoder.layer.1.attention.self.key.weight" in k)
    state[key][0, 0] = float("nan")
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    assert probe_main(probe_args(data, tmp_path / "o", ckpt=ckpt)) == 2
    one_line_error(capsys, "model.safetensors", "encoder.layer.1.attention.self.key.weight", "NaN or infinite")
    assert not (tmp_path / "o" / "entity_grounding.csv").exists()


def test_non_finite_attention_from_a_model_in_memory_is_an_error_naming_the_image(data):
    import vb_probe

    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    with torch.no_grad():
        model.blocks[1].attention.self.key.weight[0, 0] = float("nan")
    with pytest.raises(DataError, match=r"image 500: attention is not finite .* from layer 1.*weights are not finite"):
        vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"])


def test_features_that_overflow_attention_are_an_error_naming_the_image(data, tmp_path, capsys):
    bad = _copy_set(data, tmp_path)
    regions = _test_regions(data)
    huge = regions[1]
    huge.features = np.full_like(huge.features, 3e38)  # finite, but no float32 product of it is
    _write_tsv_rows(bad["tsv"], regions)
    assert probe_main(probe_args(data, tmp_path / "o", features=bad["tsv"])) == 2
    one_line_error(capsys, f"image {data['ids'][1]}: attention is not finite", "reach 3e+38")
    assert not (tmp_path / "o" / "entity_grounding.csv").exists()


@pytest.mark.parametrize("layout", ["tsv", "h5", "npz"])
def test_normalised_boxes_are_refused_naming_the_file(data, tmp_path, layout):
    from vb_probe.data.features import Regions, open_features, write_hdf5, write_npz, write_tsv

    store = open_features(data["tsv"])
    regions = [store[i] for i in data["ids"][:3]]
    normalised = [Regions(r.image_id, r.boxes / np.array([400, 300, 400, 300], np.float32), r.features,
                          r.confidences, r.image_w, r.image_h) for r in regions]
    path = tmp_path / {"tsv": "f.tsv", "h5": "f.h5", "npz": "npz"}[layout]
    {"tsv": write_tsv, "h5": write_hdf5, "npz": write_npz}[layout](path, normalised)
    with pytest.raises(DataError, match=f"{path.name}.*image {regions[0].image_id}.*look normalised"):
        open_features(path)[regions[0].image_id]


# ------------------------------------------------------------------------- 3. our writers against our own folders

def test_world_refuses_to_replace_a_checkpoint(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = snapshot(run / "final")
    assert train_main(["world", "--out", str(run / "final"), "--scenes", "10", "--quiet", "--no-images",
                       "--no-hdf5"]) == 2
    one_line_error(capsys, "is a model checkpoint that vb-probe wrote", "this command writes a built-in world")
    assert snapshot(run / "final") == before
    assert train_main(["world", "--out", str(run), "--scenes", "10", "--quiet", "--no-images"]) == 2
    one_line_error(capsys, "is a pre-training run that vb-probe wrote")


def test_a_checkpoint_is_never_saved_over_a_world_or_a_run(world, tmp_path):
    from vb_probe.families.visualbert.checkpoints import load_model, save_model

    model = load_model(world["run"] / "final")
    w = tmp_path / "w"
    shutil.copytree(world["world"], w)
    before = snapshot(w)
    with pytest.raises(VbProbeError, match="is a built-in world that vb-probe wrote"):
        save_model(model, w)
    assert snapshot(w) == before
    with pytest.raises(VbProbeError, match="is a pre-training run"):
        save_model(model, world["run"])


def test_pretrain_into_an_existing_run_needs_resume(world, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    before = snapshot(run)
    args = ["pretrain", "--data", str(world["world"]), "--out", str(run), "--quiet", "--steps", "4",
            *sum((["--set", s] for s in TINY), [])]
    assert train_main(args) == 2
    one_line_error(capsys, "holds a pre-training run already", "pass --resume")
    assert snapshot(run) == before  # final/, the log and the old step files all as they were
    assert train_main([*args, "--resume"]) == 0
    steps = [int(r.split(",")[0]) for r in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]  # one run, continued: no steps of another mixed in


def test_pretrain_refuses_a_world_or_a_users_folder(world, tmp_path, capsys):
    args = ["--data", str(world["world"]), "--quiet", "--steps", "2", *sum((["--set", s] for s in TINY), [])]
    assert train_main(["pretrain", "--out", str(world["world"]), *args, "--resume"]) == 2
    one_line_error(capsys, "is a built-in world that vb-probe wrote, not a pre-training run")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.csv").write_text("my own log\n")
    assert train_main(["pretrain", "--out", str(mine), *args]) == 2
    one_line_error(capsys, "not a pre-training run (log.csv)")
    assert (mine / "log.csv").read_text() == "my own log\n"


def test_a_file_the_user_edited_inside_a_world_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "w"
    args = ["world", "--out", str(out), "--scenes", "10", "--quiet", "--no-images", "--no-hdf5"]
    assert train_main(args) == 0
    caption = next((out / "flickr30k" / "Sentences").glob("*.txt"))
    caption.write_text(caption.read_text() + "my correction\n")
    assert train_main(args) == 2
    one_line_error(capsys, f"flickr30k/Sentences/{caption.name} changed since vb-probe wrote it")
    assert caption.read_text().endswith("my correction\n")


# ------------------------------------------------------------------------- 4. a user's single file

def _never(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} ran before the refusal")
    return fail


@pytest.mark.parametrize("command, name", [
    ("entity-grounding", "entity_grounding.csv"), ("entity-grounding", "entity_grounding.png"),
    ("syntactic", "syntactic.csv"), ("syntactic", "parses.test.conllu"), ("explore", "index.html"),
    ("causal", "causal.json"), ("attribute", "attribution.json"),
])
def test_a_users_file_among_the_outputs_is_refused_before_the_work(data, world, tmp_path, capsys, monkeypatch,
                                                                   command, name):
    from vb_probe import api, cli, explorer, pipeline
    from vb_probe.families.visualbert import interventions

    for module, attr in ((pipeline, "run_probes"), (explorer, "explorer_data"), (interventions, "masked_phrases"),
                         (cli, "_load_masked_lm"), (api, "load_model")):
        monkeypatch.setattr(module, attr, _never(attr))
    out = tmp_path / "o"
    out.mkdir()
    (out / name).write_text("the user's own")
    if command in ("causal", "attribute"):
        w = world["world"]
        argv = [command, "--ckpt", str(world["run"] / "final"), "--flickr30k", str(w / "flickr30k"), "--features",
                str(w / "features.tsv"), "--out", str(out), "--quiet"]
        argv += ["--scores", str(out / name)] if command == "causal" else []
    else:
        extra = ["--parses", str(data["parses"]), "--relation", "nsubj"] if command == "syntactic" else []
        argv = probe_args(data, out, *extra, command=command)
    assert probe_main(argv) == 2
    one_line_error(capsys, f"holds files vb-probe did not write ({name})")
    assert (out / name).read_text() == "the user's own"
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_an_edited_result_file_is_refused_and_the_own_run_replaced(data, tmp_path, capsys):
    out = tmp_path / "o"
    assert probe_main(probe_args(data, out, "--limit", "2")) == 0
    assert probe_main(probe_args(data, out, "--limit", "3")) == 0  # its own files: replaced
    table = out / "entity_grounding.csv"
    table.write_text(table.read_text() + "my note\n")
    assert probe_main(probe_args(data, out)) == 2
    one_line_error(capsys, "entity_grounding.csv changed since vb-probe wrote it")
    assert table.read_text().endswith("my note\n")


def test_visualize_figures_and_demo_refuse_a_users_file(data, tmp_path, capsys, monkeypatch):

    results = tmp_path / "results"
    assert probe_main(probe_args(data, results / "entity_grounding", "--limit", "2")) == 0
    monkeypatch.setattr("vb_probe.api.load_model", _never("load_model"))
    mine = tmp_path / "attention.png"
    mine.write_bytes(b"my picture")
    assert probe_main(["visualize", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
                       str(data["tsv"]), "--image-id", "500", "--out", str(mine)]) == 2
    one_line_error(capsys, "holds files vb-probe did not write (attention.png)")
    assert mine.read_bytes() == b"my picture"
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "fig3_entity_grounding.png").write_bytes(b"mine")
    monkeypatch.setattr("vb_probe.api.load_model", _never("load_model"))
    assert probe_main(["figures", "--results", str(results), "--out", str(figures)]) == 2
    one_line_error(capsys, "(fig3_entity_grounding.png)")
    demo_out = tmp_path / "demo"
    demo_out.mkdir()
    (demo_out / "report.md").write_text("my report")
    monkeypatch.setattr("training.world.build_world", _never("build_world"))
    assert probe_main(["demo", "--out", str(demo_out), "--quiet"]) == 2
    one_line_error(capsys, "(report.md)")
    assert sorted(p.name for p in demo_out.iterdir()) == ["report.md"]


def test_only_the_runs_own_progress_files_are_removed(data, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".x.progress.json").write_text("a user's hidden file")
    assert probe_main(probe_args(data, out)) == 0
    assert (out / ".x.progress.json").read_text() == "a user's hidden file"
    (out / ".main.progress.json").write_text("not a progress file")
    assert probe_main(probe_args(data, out)) == 2
    one_line_error(capsys, ".main.progress.json, which is not vb-probe's progress file")
    assert (out / ".main.progress.json").read_text() == "not a progress file"


# ------------------------------------------------------------------------- 5. silent wrong data

def test_an_image_listed_twice_in_a_split_is_refused(data, tmp_path, capsys):
    bad = _copy_set(data, tmp_path)
    (bad["flickr"] / "test.txt").write_text("500\n501\n500\n")
    assert probe_main(probe_args(data, tmp_path / "o", flickr=bad["flickr"])) == 2
    one_line_error(capsys, "test.txt:3: image 500 is listed a second time (first on line 1)")


def test_an_image_twice_in_a_tsv_is_refused(data, tmp_path, capsys):
    bad = _copy_set(data, tmp_path)
    rows = bad["tsv"].read_text().splitlines()
    bad["tsv"].write_text("\n".join([*rows, rows[1]]) + "\n")
    assert probe_main(probe_args(data, tmp_path / "o", features=bad["tsv"])) == 2
    one_line_error(capsys, f"features.tsv:{len(rows) + 1}: image {data['ids'][1]} has a second row (the first is line 2)")


def test_a_tsv_rewritten_in_place_never_gives_one_image_anothers_regions(data, tmp_path):
    from vb_probe.data.features import open_features

    store = open_features(data["tsv"])
    a, b = store["500"], store["501"]
    path = tmp_path / "f.tsv"
    b.boxes, b.features = b.boxes[: len(a)], b.features[: len(a)]  # rows of equal length
    b.confidences = b.confidences[: len(a)]
    _write_tsv_rows(path, [a, b])
    opened = open_features(path)
    stat = path.stat()
    swapped_a = type(a)("501", a.boxes, a.features, a.confidences, a.image_w, a.image_h)
    swapped_b = type(b)("500", b.boxes, b.features, b.confidences, b.image_w, b.image_h)
    _write_tsv_rows(path, [swapped_b, swapped_a])  # same size; same time stamp below
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    for store_now in (opened, open_features(path)):  # the store opened before, and a new one
        np.testing.assert_array_equal(store_now["500"].features, b.features)
        np.testing.assert_array_equal(store_now["501"].features, a.features)


def test_resume_after_the_features_changed_is_refused(data, tmp_path, capsys, monkeypatch):
    bad = _copy_set(data, tmp_path)
    out = tmp_path / "o"
    interrupted_probe(monkeypatch, probe_args(data, out, "--batch-size", "1", features=bad["tsv"]))
    regions = _test_regions(data)
    regions[-1].features = regions[-1].features + 1.0  # same ids and sizes, other numbers
    _write_tsv_rows(bad["tsv"], regions)
    capsys.readouterr()
    assert probe_main(probe_args(data, out, "--batch-size", "1", "--resume", features=bad["tsv"])) == 2
    one_line_error(capsys, "saved progress is for another run (features")


# ------------------------------------------------------------------------- 6. another model's scores

@pytest.fixture(scope="module")
def other_shape_scores(data, tmp_path_factory):
    """entity-grounding scores of a 2-layer × 8-head model (the set's checkpoint is 3 × 4)."""
    from fixtures import write_checkpoint

    root = tmp_path_factory.mktemp("shape")
    ckpt = write_checkpoint(root / "ckpt", layers=2, heads=8)
    assert probe_main(probe_args(data, root / "eg", ckpt=ckpt)) == 0
    return root / "eg"


@pytest.mark.parametrize("command", ["explore", "visualize", "causal"])
def test_scores_of_another_model_are_refused_naming_both_shapes(data, world, other_shape_scores, tmp_path, capsys,
                                                                command):
    if command == "causal":  # the world's checkpoint is 2 × 4
        w = world["world"]
        argv = ["causal", "--ckpt", str(world["run"] / "final"), "--flickr30k", str(w / "flickr30k"), "--features",
                str(w / "features.tsv"), "--scores", str(other_shape_scores), "-k", "2", "--out",
                str(tmp_path / "c"), "--quiet"]
        shapes = ("2×8", "this model is 2×4")
    else:
        argv = [command, "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
                str(data["tsv"]), "--scores", str(other_shape_scores), "--out",
                str(tmp_path / ("p" if command == "explore" else "a.png"))]
        argv += ["--image-id", "500"] if command == "visualize" else ["--quiet"]
        shapes = ("2×8", "this model is 3×4")
    assert probe_main(argv) == 2
    one_line_error(capsys, "--scores", *shapes)
    assert not (tmp_path / "p" / "index.html").exists() and not (tmp_path / "a.png").exists()


# ------------------------------------------------------------------------- 7. tracebacks where one line belongs

def _h5(data, tmp_path, build):
    """An HDF5 feature file built by ``build(h5file)``, with the set's id map beside it."""
    import h5py

    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as handle:
        build(handle)
    shutil.copy(data["h5"].with_name("features_imgid2idx.pkl"), tmp_path / "f_imgid2idx.pkl")
    return path


def _good_h5(handle, n_images=30, per=4, pos=None):
    handle["image_features"] = np.zeros((n_images * per, 12), np.float32)
    handle["image_bb"] = np.tile(np.array([[1, 1, 50, 50]], np.float32), (n_images * per, 1))
    handle["pos_boxes"] = pos if pos is not None else np.stack([np.arange(n_images) * per,
                                                                (np.arange(n_images) + 1) * per], 1)


@pytest.mark.parametrize("case, expected", [
    ("external", "cannot be opened"),
    ("vlen", "expected a 2-D array of whole numbers"),
    ("1d", "expected a 2-D array of whole numbers"),
    ("billion", "declares regions 0..1000000000"),
    ("bb_rows", "image_bb has shape (119, 4), expected [120, 4]"),
])
def test_hdf5_layout_errors_are_one_line(data, tmp_path, case, expected):
    import h5py

    from vb_probe.data.features import open_features

    def build(handle):
        if case == "external":
            _good_h5(handle)
            del handle["image_features"]
            handle["image_features"] = h5py.ExternalLink(str(tmp_path / "gone.h5"), "/image_features")
        elif case == "vlen":
            _good_h5(handle, pos=np.zeros((30, 2), np.int64))
            del handle["pos_boxes"]
            vlen = handle.create_dataset("pos_boxes", (30,), dtype=h5py.vlen_dtype(np.int64))
            vlen[0] = np.array([0, 4])
        elif case == "1d":
            _good_h5(handle, pos=np.arange(30))
        elif case == "billion":
            pos = np.stack([np.arange(30) * 4, (np.arange(30) + 1) * 4], 1)
            pos[0] = (0, 10**9)
            _good_h5(handle, pos=pos)
        else:
            _good_h5(handle)
            del handle["image_bb"]
            handle["image_bb"] = np.ones((119, 4), np.float32)
    with pytest.raises(DataError, match=re.escape(expected)) as caught:
        open_features(_h5(data, tmp_path, build))["500"]
    assert "\n" not in str(caught.value)


def test_npz_size_with_two_values_is_one_line(tmp_path):
    from vb_probe.data.features import open_features

    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "7.npz", boxes=np.array([[1, 1, 9, 9]], np.float32), features=np.ones((1, 3), np.float32),
             image_w=np.array([400.0, 300.0]), image_h=np.float32(300))
    with pytest.raises(DataError, match=r"7.npz: image_w holds float64 of shape \(2,\), expected one number"):
        open_features(folder)["7"]


def test_a_later_image_with_features_of_another_width_is_one_line(data, tmp_path, capsys):
    bad = _copy_set(data, tmp_path)
    regions = _test_regions(data)
    regions[2].features = np.concatenate([regions[2].features, regions[2].features], 1)
    _write_tsv_rows(bad["tsv"], regions)
    assert probe_main(probe_args(data, tmp_path / "o", features=bad["tsv"])) == 2
    one_line_error(capsys, f"image {regions[2].image_id} has 24-d features but the others are 12-d")


DEEP = 100_000


def test_deeply_nested_config_run_json_and_toml_are_one_line(data, tmp_path, capsys):
    from training.config import load_config
    from vb_probe.results import GroundingResult

    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["ckpt"], ckpt)
    (ckpt / "config.json").write_text("[" * DEEP + "]" * DEEP)
    assert probe_main(probe_args(data, tmp_path / "o", ckpt=ckpt)) == 2
    one_line_error(capsys, "config.json: nested too deeply")
    scores = tmp_path / "eg"
    scores.mkdir()
    (scores / "run.json").write_text('{"probe": ' + "[" * DEEP + "]" * DEEP + "}")
    with pytest.raises(DataError, match="run.json: cannot read"):
        GroundingResult.load(scores)
    toml = tmp_path / "deep.toml"
    toml.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    with pytest.raises(VbProbeError, match="deep.toml: nested too deeply"):
        load_config(toml)


def test_captions_longer_than_the_model_and_mathtext_in_explore_and_visualize(data, tmp_path, capsys):
    long = _copy_set(data, tmp_path)
    words = " ".join(["a"] * 70)  # the checkpoint has 64 positions
    _rewrite_captions(long["flickr"], "500", [f"{words} [/EN#1/people a man] throws [/EN#2/other a ball]",
                                              "[/EN#1/people a $\\foo$ man] holds [/EN#2/other a $x^2 ball]"])
    common = ["--ckpt", str(data["ckpt"]), "--flickr30k", str(long["flickr"]), "--features", str(data["tsv"])]
    assert probe_main(["explore", *common, "--limit", "1", "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert "query words cut by truncation" in capsys.readouterr().out
    for index in (0, 1):
        out = tmp_path / f"v{index}.png"
        assert probe_main(["visualize", *common, "--image-id", "500", "--caption-index", str(index),
                           "--out", str(out)]) == 0
        assert out.stat().st_size > 10_000


@pytest.mark.parametrize("argv, expected", [
    (["ablate", "--task", "vqa", "--data", "d", "--seeds", "0"], "argument --seeds: 0 must be at least 1"),
    (["finetune", "--task", "vqa", "--data", "d", "--init", "random", "--steps", "0"],
     "argument --steps: 0 must be at least 1"),
    (["finetune", "--task", "vqa", "--data", "d", "--init", "random", "--batch-size", "0"],
     "argument --batch-size: 0 must be at least 1"),
    (["finetune", "--task", "vqa", "--data", "d", "--init", "random", "--lr", "nan"],
     "argument --lr: nan must be a finite number above 0"),
    (["pretrain", "--data", "d", "--steps", "0"], "argument --steps: 0 must be at least 1"),
    (["world", "--scenes", "-3"], "argument --scenes: -3 must be at least 1"),
])
def test_vb_train_counts_below_one_are_one_line(tmp_path, capsys, argv, expected):
    with pytest.raises(SystemExit) as stop:
        train_main([*argv, "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    one_line_error(capsys, expected)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------- 8. the Python API

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_probed(data, dtype):
    import vb_probe

    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    full = vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"])
    half = vb_probe.entity_grounding(model.to(dtype), tokenizer, data["flickr"], data["tsv"])
    assert half.n == full.n and half.n_phrases == full.n_phrases
    agree = (half.n_correct == full.n_correct).mean()
    assert agree > 0.5, agree  # the same picks but for near-ties
    assert np.abs(half.accuracy - full.accuracy).max() < 0.15


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_cpu_only_torch_is_one_line(data):
    import vb_probe

    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    with pytest.raises(VbProbeError, match="--device cuda: no CUDA device is available here"):
        vb_probe.entity_grounding(model, tokenizer, data["flickr"], data["tsv"], device="cuda")
    assert next(model.parameters()).device.type == "cpu"


def test_region_attention_refuses_a_vector_and_splits_a_string(data):
    import vb_probe
    from vb_probe.data.features import open_features

    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    regions = open_features(data["tsv"])["500"]
    with pytest.raises(VbProbeError, match=r"regions have shape \(12,\), expected \[R, D\]"):
        vb_probe.region_attention(model, tokenizer, ["a", "man"], regions.features[0])
    as_string = vb_probe.region_attention(model, tokenizer, "a man throws a ball", regions)
    as_words = vb_probe.region_attention(model, tokenizer, ["a", "man", "throws", "a", "ball"], regions)
    assert as_string.shape[2] == 5
    np.testing.assert_array_equal(as_string, as_words)


def test_explore_gives_a_training_model_back_in_training_mode(data):
    import vb_probe

    model = vb_probe.load_model(data["ckpt"]).train()
    vb_probe.explore(model, vb_probe.load_tokenizer(model=model), data["flickr"], data["tsv"], limit=1)
    assert model.training and all(m.training for m in model.modules())


# ------------------------------------------------------------------------- 9. leftovers

def test_sigterm_during_a_final_save_leaves_no_temporary(world, tmp_path, capsys, monkeypatch):
    import signal

    import vb_probe.families.visualbert.folders as checkpoints  # where the weights are written

    real = checkpoints.save_file

    def killed(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` would, in the middle of writing final/
        import time

        time.sleep(5)
    monkeypatch.setattr(checkpoints, "save_file", killed)
    run = tmp_path / "run"
    assert train_main(["pretrain", "--data", str(world["world"]), "--out", str(run), "--quiet", "--steps", "2",
                       *sum((["--set", s] for s in TINY), [])]) == 143
    err = one_line_error(capsys, "terminated", "run again with --resume")
    assert "Traceback" not in err
    assert not [p.name for p in run.rglob("*.tmp")] and not (run / "final").exists()


def test_sigterm_during_world_leaves_nothing_behind(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "w"
    process = subprocess.Popen([sys.executable, "-m", "training.cli", "world", "--out", str(out), "--scenes", "400",
                                "--quiet", "--no-hdf5"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".w.*.tmp")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".w.*.tmp")), "the world never started writing"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert err.strip().splitlines() == ["vb-train: error: terminated; nothing half-written was left; run it again"] or \
        err.strip().endswith("nothing half-written was left; run it again"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(data, tmp_path):
    from vb_probe.atomic import remove_stale_temporaries

    dead = 2**22 + 12345  # above the usual pid range: no such process
    out = tmp_path / "o"
    out.mkdir()
    (out / f".entity_grounding.csv.{dead}-ab12cd.tmp").write_text("half")
    (out / f".index.{dead}-old.tmp").mkdir()
    live = out / f".run.json.{os.getppid()}-zz99.tmp"  # a live process's write in progress
    live.write_text("being written")
    assert probe_main(probe_args(data, out, "--limit", "2")) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == [live.name]
    (out / f".x.{dead}-q.tmp").write_text("")
    assert remove_stale_temporaries(out) == 1


@pytest.mark.parametrize("command", ["explore", "world"])
def test_interrupting_a_command_without_resume_does_not_suggest_it(data, tmp_path, capsys, monkeypatch, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    if command == "explore":
        monkeypatch.setattr("vb_probe.explorer.explorer_data", interrupted)
        code = probe_main(["explore", "--ckpt", str(data["ckpt"]), "--flickr30k", str(data["flickr"]), "--features",
                           str(data["tsv"]), "--out", str(tmp_path / "p"), "--quiet"])
    else:
        monkeypatch.setattr("training.world.build_world", interrupted)
        code = train_main(["world", "--out", str(tmp_path / "w"), "--scenes", "10", "--quiet"])
    assert code == 130
    err = one_line_error(capsys, "interrupted; nothing half-written was left; run it again")
    assert "--resume" not in err


# ------------------------------------------------------------------------- the same classes, further cases

def test_normalised_gold_boxes_in_the_xml_are_refused(tmp_path):
    from vb_probe.data.flickr30k import read_annotation

    with pytest.raises(DataError, match=r"9.xml object 0: box \(0.1, 0.2, 0.5, 0.9\) lies within 0..1, so it looks "
                                        "normalised"):
        read_annotation(_annotation_with_box(
            tmp_path, "<xmin>0.1</xmin><ymin>0.2</ymin><xmax>0.5</xmax><ymax>0.9</ymax>"))


@pytest.mark.parametrize("change", [{"split": None}, {"n_phrases": "many"}, {"skipped": [1, 2]},
                                    {"selected_head": {"layer": 1}}, {"n_phrases": 3}])
def test_a_run_json_with_fields_missing_or_wrong_is_one_line(data, tmp_path, change):
    from vb_probe.results import GroundingResult

    out = tmp_path / "eg"
    assert probe_main(probe_args(data, out, "--limit", "2")) == 0
    run = json.loads((out / "run.json").read_text())
    for key, value in change.items():
        run.pop(key) if value is None else run.__setitem__(key, value)
    (out / "run.json").write_text(json.dumps(run))
    with pytest.raises(DataError, match="run.json: ") as caught:
        GroundingResult.load(out)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("row, expected", [("-1,0,0.9", "layer -1, head 0"), ("0,1,nan", "accuracy nan")])
def test_score_tables_with_negative_heads_or_nan_are_refused(tmp_path, row, expected):
    from vb_probe.results import top_heads_from_csv

    table = tmp_path / "entity_grounding.csv"
    table.write_text("layer,head,accuracy\n" + "".join(f"{l},{h},0.{l}{h}\n" for l in range(2) for h in range(4))
                     + row + "\n")
    with pytest.raises(DataError, match=re.escape(expected)):
        top_heads_from_csv(tmp_path, 2)  # the folder holding the table, as for --scores


def test_one_relation_given_as_a_string_is_one_relation(data):
    import vb_probe

    model = vb_probe.load_model(data["ckpt"])
    tokenizer = vb_probe.load_tokenizer(model=model)
    one = vb_probe.syntactic_grounding(model, tokenizer, data["flickr"], data["tsv"], relations="nsubj",
                                       parses=data["parses"])
    assert one.relations == ["nsubj"]
    shown = vb_probe.explore(model, tokenizer, data["flickr"], data["tsv"], limit=1, parses=data["parses"])
    assert "nsubj/head_to_dependent" in shown.data["views"]


def test_finetune_evaluate_and_ablate_refuse_a_users_file_before_training(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("training.finetune.finetune", _never("finetune"))
    monkeypatch.setattr("training.finetune.ablate", _never("ablate"))
    monkeypatch.setattr("training.finetune.evaluate_saved", _never("evaluate_saved"))
    for command, name, extra in (("finetune", "metrics.json", ["--init", "random", "--task", "vqa"]),
                                 ("ablate", "ablation.png", ["--task", "vqa"]),
                                 ("evaluate", "metrics.json", [])):
        out = tmp_path / command
        out.mkdir()
        (out / name).write_text("mine")
        where = ["--ckpt", str(out)] if command == "evaluate" else ["--out", str(out)]
        assert train_main([command, "--data", str(world["world"]), *where, *extra]) == 2
        one_line_error(capsys, f"holds files vb-probe did not write ({name})")
        assert (out / name).read_text() == "mine"


# ====================================================================================== round three
# Each class of the third hostile round, aimed at what landed since the second (LXMERT, ViLT, the decoder family,
# sharded and hub checkpoints, torchrun, RefCOCO and Visual Genome): random weights probed as trained, a caption
# speaking as the prompt, an image out of its annotation's frame, a processor that does not fit its model,
# duplicates and overflows in the datasets, stale caches and resumes, our own progress files and unbounded work.

def _saved_model(kind: str, folder, shard: str | None = None):
    """A tiny random model of ``kind`` (llava, paligemma, qwen2_vl, vilt, lxmert) saved as transformers saves it,
    with its processor or tokenizer (``shard``: a max_shard_size, for a sharded checkpoint)."""
    from pathlib import Path

    folder = Path(folder)
    if kind == "vilt":
        from test_vilt import _tiny_vilt

        return _tiny_vilt(folder)
    if kind == "lxmert":
        from test_families import _tiny_lxmert

        return _tiny_lxmert(folder)
    from decoder_fixtures import save_model_folder

    return save_model_folder(kind, folder, shard)


def _rewrite_weights(folder, rename=lambda key: key, drop=lambda key: False) -> None:
    """Every safetensors file of ``folder`` rewritten with its tensors renamed and some dropped (the index too)."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors"):
        tensors = load_file(path)
        save_file({rename(k): v for k, v in tensors.items() if not drop(k)}, path, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {rename(k): v for k, v in data["weight_map"].items() if not drop(k)}
        index.write_text(json.dumps(data))


# ------------------------------------------------------------------------- 1. random weights probed as trained

@pytest.mark.parametrize("kind", ["llava", "paligemma", "vilt", "lxmert"])
def test_weights_under_a_foreign_prefix_are_refused_not_probed_at_random(kind, tmp_path):
    import vb_probe

    folder = _saved_model(kind, tmp_path / kind)
    _rewrite_weights(folder, rename=lambda key: "base_model.model." + key)  # as an adapter wrapper saves them
    with pytest.raises(CheckpointError, match=r"lacks \d+ of the model's weights .*probed as if trained"):
        vb_probe.load_model(folder)


@pytest.mark.parametrize("kind", ["llava", "paligemma", "vilt", "lxmert"])
def test_a_checkpoint_missing_one_attention_weight_is_refused_naming_it(kind, tmp_path):
    import vb_probe

    folder = _saved_model(kind, tmp_path / kind)
    names = sorted(k for p in folder.glob("*.safetensors") for k in
                   __import__("safetensors").safe_open(str(p), "pt").keys())
    dropped = next(k for k in names if re.search(r"(q_proj|attention\.self\.query|attention\.attention\.query)\.weight",
                                                 k))
    _rewrite_weights(folder, drop=lambda key: key == dropped)
    with pytest.raises(CheckpointError, match=r"lacks 1 of the model's weights \(.*(q_proj|query)\.weight\)"):
        vb_probe.load_model(folder)


def test_a_shard_index_that_leaves_out_a_shards_keys_is_refused(tmp_path):
    import vb_probe

    folder = _saved_model("llava", tmp_path / "llava", shard="200KB")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    last = sorted(set(data["weight_map"].values()))[-1]
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if v != last}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="lacks"):
        vb_probe.load_model(folder)


def test_a_task_head_set_aside_is_said_once_by_name(tmp_path):
    """A ViLT saved with its masked-LM head and an LXMERT pre-training model: the encoder loads, the heads are named
    in one note each."""
    from test_vilt import _tiny_vilt
    from transformers import LxmertForPreTraining, ViltForMaskedLM

    import vb_probe

    vilt = _tiny_vilt(tmp_path / "vilt")
    ViltForMaskedLM.from_pretrained(str(vilt)).save_pretrained(tmp_path / "vilt_mlm")
    model = vb_probe.load_model(tmp_path / "vilt_mlm")
    assert [n for n in model.load_notes if "set aside" in n] == [
        f"{tmp_path / 'vilt_mlm'}: task head(s) mlm_score set aside (5 weights); the encoder is probed"]
    from test_families import _tiny_lxmert

    LxmertForPreTraining.from_pretrained(str(_tiny_lxmert(tmp_path / "lx"))).save_pretrained(tmp_path / "lx_pre")
    notes = [n for n in vb_probe.load_model(tmp_path / "lx_pre").load_notes if "set aside" in n]
    assert len(notes) == 1 and "answer_head, cls, obj_predict_head" in notes[0]


@pytest.mark.parametrize("case, expected", [
    ("outside", "points to '../elsewhere.safetensors', outside the checkpoint folder"),
    ("missing", "a shard the index names is missing"),
    ("malformed", "not a weight index"),
    ("flash", None),
])
def test_shard_index_and_attention_config_faults_are_one_line(case, expected, tmp_path, capsys):
    from test_vilt import _write_world

    folder = _saved_model("llava", tmp_path / "llava", shard="200KB")
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(set(data["weight_map"].values()))[0]
    if case == "outside":
        shutil.move(folder / first, tmp_path / "elsewhere.safetensors")
        data["weight_map"] = {k: ("../elsewhere.safetensors" if v == first else v) for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data))
    elif case == "missing":
        (folder / first).unlink()
    elif case == "malformed":
        index.write_text('{"weight_map": [1, 2]}')
    else:
        config = json.loads((folder / "config.json").read_text())
        config["attn_implementation"] = "flash_attention_2"
        (folder / "config.json").write_text(json.dumps(config))
    world = _write_world(tmp_path / "w")
    argv = ["entity-grounding", "--ckpt", str(folder), "--flickr30k", str(world["flickr"]), "--images",
            str(world["images"]), "--out", str(tmp_path / "o"), "--quiet", "--limit", "1"]
    if expected is None:
        assert probe_main(argv) == 0
        assert "asks for attention 'flash_attention_2'; vb-probe loads it with 'sdpa'" in capsys.readouterr().out
        return
    assert probe_main(argv) == 2
    one_line_error(capsys, expected)


def test_shard_hashes_are_of_the_content_so_an_overwritten_blob_changes_the_provenance(tmp_path, monkeypatch):
    """The hub cache names each blob by its SHA-256: a blob overwritten in place keeps that name, so run.json's
    shard hashes (and a resume's key) must come from the content."""
    import hashlib

    from vb_probe.pipeline import checkpoint_info

    folder = _saved_model("llava", tmp_path / "llava", shard="200KB")
    repo = tmp_path / "hub" / "models--llava-hf--llava-1.5-7b-hf"
    snapshot_dir = repo / "snapshots" / ("0" * 40)
    snapshot_dir.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for path in folder.iterdir():  # the hub's own layout: blobs named by their hash, the snapshot links to them
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, blob)
        (snapshot_dir / path.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = checkpoint_info("llava-hf/llava-1.5-7b-hf")["shards"]
    shard = snapshot_dir / sorted(before)[0]
    blob = shard.resolve()
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 1  # the blob overwritten in place: same name, same size
    blob.write_bytes(bytes(raw))
    after = checkpoint_info("llava-hf/llava-1.5-7b-hf")["shards"]
    assert after[shard.name] != before[shard.name] == blob.name
    assert after[shard.name] == hashlib.sha256(bytes(raw)).hexdigest()


# ------------------------------------------------------------------------- 2. a caption speaking as the prompt

CAPTIONS = ["a man in a red shirt rides a brown horse .", "two dogs play with the ball near the blue car",
            "A woman, smiling, holds an umbrella in the rain !", "the boy's cat sits on 3 steps",
            "an old man 's hat , on the grass"]
SPEAKING = ["a man holds <image> and a dog", "the <|image_pad|> cat", "a dog <|im_end|> <|im_start|>assistant says",
            "a horse </s> near the car", "a [SEP] man [MASK] rides"]


def _items(captions: list[str], image_id: str = "700"):
    from vb_probe.queries import ProbeItem, Query

    return [ProbeItem(f"{image_id}_{k}", tuple(c.split()), image_id,
                      [Query("entity", w, np.array([[100, 60, 220, 180]], np.float32)) for w in range(len(c.split()))])
            for k, c in enumerate(captions)]


@pytest.fixture(scope="module")
def real_decoders(tmp_path_factory):
    """Tiny LLaVA-1.5 and Qwen2-VL with the public checkpoints' own tokenizer, processor and chat template files."""
    from decoder_fixtures import real_settings

    import vb_probe

    root = tmp_path_factory.mktemp("real")
    return {kind: vb_probe.load_model(real_settings(kind, root / kind)) for kind in ("llava", "qwen2_vl")}


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_the_prompt_is_the_token_sequence_the_models_processor_makes_from_the_whole_prompt(kind, real_decoders):
    """With the real Llama tokenizer, tokenizing the prompt in pieces gave `▁a` after the newline and an extra `▁`
    before `ASSISTANT:` in every prompt; the sequence must equal the processor's own for the whole prompt."""
    from PIL import Image

    from vb_probe.families import family_of

    model = real_decoders[kind]
    family = family_of(model)
    image = Image.new("RGB", (500, 375), (90, 120, 30))
    cells = family.image_tokens(model, type("One", (), {"image": lambda self, i: image})(), "700")
    items = _items(CAPTIONS)
    for item in items:
        item.regions = cells
    batch = family.collate(model, items, family.tokenizer_of(model), {}, 64)
    template = model.prompt_template
    for row, caption in enumerate(CAPTIONS):
        whole = model.processor(images=image, text=template.prefix + caption + template.suffix, return_tensors="pt")
        expected = whole["input_ids"][0].tolist()
        got = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()].tolist()
        assert got == expected, (caption, model.processor.tokenizer.convert_ids_to_tokens(got[-12:]),
                                 model.processor.tokenizer.convert_ids_to_tokens(expected[-12:]))
        words = caption.split()
        pieces = model.processor.tokenizer.convert_ids_to_tokens(got)
        for query, position in zip(item.queries, batch.query_index[batch.batch_index == row].tolist()):
            word = words[query.word_index]
            last = pieces[position].lstrip("▁").replace("Ġ", "")
            assert last and word.endswith(last), (word, pieces[position])


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl", "paligemma", "vilt", "lxmert", "visualbert"])
def test_caption_words_that_spell_special_tokens_stay_text(kind, real_decoders, data, tmp_path):
    """`<image>`, `<|image_pad|>`, `<|im_end|> <|im_start|>assistant`, `</s>`, `[SEP]` in a caption are text: the
    prompt holds exactly the image's tokens, the caption no control token, and every word its own last token."""
    import vb_probe
    from vb_probe.families import family_of, reads_pixels

    if kind in real_decoders:
        model = real_decoders[kind]
    elif kind == "paligemma":
        from decoder_fixtures import tiny_paligemma

        model = family_of(tiny_paligemma()).load(tiny_paligemma())
    elif kind in ("vilt", "lxmert"):
        model = vb_probe.load_model(_saved_model(kind, tmp_path / kind))
    else:
        model = vb_probe.load_model(data["ckpt"])
    family = family_of(model)
    tokenizer = vb_probe.load_tokenizer(model=model)
    items = _items(SPEAKING)
    if reads_pixels(family):
        from PIL import Image

        image = Image.new("RGB", (320, 240), (90, 120, 30))
        for item in items:
            item.regions = family.image_tokens(model, type("One", (), {"image": lambda self, i: image})(), "700")
    else:
        regions = vb_probe.open_features(data["tsv"])[data["ids"][0]]
        for item in items:
            item.regions = regions
    facts = family.prepare(model, type("Items", (), {"regions": items[0].regions, "source": "x", "dim": 12,
                                                     "kind": items[0].regions.kind})(), {})
    batch = family.collate(model, items, tokenizer, facts, 64)
    special = (set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)) - {tokenizer.unk_token_id}
    for row, item in enumerate(items):
        ids = batch.inputs["input_ids"][row].tolist()
        positions = batch.query_index[batch.batch_index == row].tolist()
        assert len(positions) == len(item.words)  # every word has its own last token
        caption_ids = ids[min(positions):max(positions) + 1]  # each caption's first word is one token
        assert not special & set(caption_ids), (item.words, tokenizer.convert_ids_to_tokens(caption_ids))
        if reads_pixels(family) and kind != "vilt":
            image_id = model.config.image_token_id if getattr(model.config, "image_token_id", None) is not None \
                else model.config.image_token_index
            assert ids.count(image_id) == len(item.regions.boxes)


@pytest.mark.parametrize("template, said", [
    ("{{ raise_exception('no images here') }}", "the processor's chat template raises"),
    ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
     "{% endfor %}{% endfor %}", "leaves the image out"),
    ("{% for m in messages %}<image><image>{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
     "{% endif %}{% endfor %}{% endfor %}", "places the image 2 times"),
])
def test_a_chat_template_that_raises_or_misplaces_the_image_is_said_with_the_prompt_used(template, said, tmp_path):
    from decoder_fixtures import real_settings

    import vb_probe

    folder = real_settings("llava", tmp_path / "llava")
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink()
    (folder / "chat_template.jinja").write_text(template)
    model = vb_probe.load_model(folder)
    assert model.prompt_template.prefix == "USER: <image>\n" and model.prompt_template.suffix == " ASSISTANT:"
    notes = [n for n in model.load_notes if "chat template" in n]
    assert len(notes) == 1 and said in notes[0] and "'USER: <image>\\n… ASSISTANT:' is used instead" in notes[0]


# ------------------------------------------------------------------------- 3. an image out of its annotation's frame

def _image_set(root, annotated=(400, 300), box=(100, 50, 300, 250), n_images: int = 2):
    """A Flickr30K-layout set of ``n_images`` images annotated ``annotated`` (width, height), each with one phrase
    ("a man") boxed at ``box``; the images themselves are written by the test. Returns the paths and ids."""
    from vb_probe.data.flickr30k import Annotation, Phrase, format_annotation, format_sentence

    flickr, images = root / "flickr", root / "images"
    for sub in (flickr / "Sentences", flickr / "Annotations", images):
        sub.mkdir(parents=True)
    ids = [str(900 + i) for i in range(n_images)]
    for image_id in ids:
        annotation = Annotation(image_id, annotated[0], annotated[1], boxes={1: np.array([box], np.float32)})
        (flickr / "Annotations" / f"{image_id}.xml").write_text(format_annotation(annotation))
        (flickr / "Sentences" / f"{image_id}.txt").write_text(
            format_sentence(["a", "man", "sits", "."], [Phrase(0, ("a", "man"), 1, ("people",))]) + "\n")
    for split in ("train", "val", "test"):
        (flickr / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return {"flickr": flickr, "images": images, "ids": ids}


def _block_image(size, box, value=230):
    from PIL import Image

    pixels = np.full((size[1], size[0], 3), 20, np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = value
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def pixel_models(tmp_path_factory):
    """Saved tiny ViLT, LLaVA and Qwen2-VL checkpoints, and a LLaVA-1.5 with its real processor (336², the crop)."""
    from decoder_fixtures import real_settings

    root = tmp_path_factory.mktemp("pixel_models")
    return {**{kind: _saved_model(kind, root / kind) for kind in ("vilt", "llava", "qwen2_vl")},
            "llava_real": real_settings("llava", root / "llava_real")}


def _pixel_probe(models, kind, images, out, *extra):
    return ["entity-grounding", "--ckpt", str(models[kind]), "--flickr30k", str(images["flickr"]), "--images",
            str(images["images"]), "--out", str(out), "--quiet", *extra]


def test_an_exif_rotated_jpeg_is_read_upright_as_its_boxes_are_drawn(tmp_path):
    """A phone JPEG stores its pixels sideways (300 × 400) with orientation 6; viewers and annotation tools show it
    400 × 300, and the boxes are drawn there. It is read upright: the annotated box's block is where the box is."""
    from PIL import Image

    from vb_probe.data.images import ImageFolder

    images = _image_set(tmp_path, annotated=(400, 300), box=(100, 50, 300, 250), n_images=1)
    upright = _block_image((400, 300), (100, 50, 300, 250))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 undoes (a turn of 270° clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(images["images"] / "900.jpg", exif=exif, quality=95)
    folder = ImageFolder(images["images"])
    assert folder.size("900") == (400, 300)
    read = np.asarray(folder.image("900"))
    assert read.shape == (300, 400, 3)
    assert read[50:250, 100:300].mean() > 200 and read[:40].mean() < 60  # the block where the box is
    import base64
    import io

    from vb_probe.explorer import _image_uri  # the explorer's picture: upright too, the boxes drawn over it

    shown = Image.open(io.BytesIO(base64.b64decode(_image_uri(images["images"], "900").split(",", 1)[1])))
    assert shown.size == (400, 300) and np.asarray(shown)[60:240, 110:290].mean() > 190


@pytest.mark.parametrize("stored", [(100, 75), (1, 1), (461, 525)])
def test_an_image_of_another_size_than_its_annotation_is_refused_before_the_model_loads(stored, tmp_path, capsys,
                                                                                      pixel_models, monkeypatch):
    """A thumbnail, a 1 × 1 file, or the annotation's size turned, stand in for an image annotated 525 × 461: one
    line naming the image, before any weight is read."""
    images = _image_set(tmp_path, annotated=(525, 461), box=(10, 10, 200, 200), n_images=2)
    _block_image((525, 461), (10, 10, 200, 200)).save(images["images"] / "900.png")
    _block_image(stored, (0, 0, 1, 1)).save(images["images"] / "901.png")
    monkeypatch.setattr("vb_probe.api.load_model", _never("load_model"))
    assert probe_main(_pixel_probe(pixel_models, "vilt", images, tmp_path / "o")) == 2
    one_line_error(capsys, "901.png: is", f"{stored[0]} × {stored[1]} pixels (upright) but its annotation gives 525 × 461")


def test_a_16_bit_png_is_read_as_seen_not_clipped_to_white(tmp_path):
    from PIL import Image

    from vb_probe.data.images import ImageFolder

    levels = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "7.png")
    read = np.asarray(ImageFolder(tmp_path).image("7")).astype(float)
    np.testing.assert_allclose(read[..., 0], levels / 257.0, atol=0.51)  # 65535 → 255, not every level above 255


@pytest.mark.parametrize("kind", ["vilt", "llava_real", "qwen2_vl"])
def test_an_image_the_processor_cannot_take_is_refused_once_in_one_line(kind, tmp_path, capsys, pixel_models):
    """20000 × 10: ViLT's resize floors it to no patch row and Qwen2-VL's refuses ratios past 200 (tracebacks from
    transformers), LLaVA's would resize it to 672000 × 336 pixels twice."""
    images = _image_set(tmp_path, annotated=(20000, 10), box=(0, 0, 5000, 10), n_images=1)
    _block_image((20000, 10), (0, 0, 5000, 10)).save(images["images"] / "900.png")
    assert probe_main(_pixel_probe(pixel_models, kind, images, tmp_path / "o")) == 2
    err = one_line_error(capsys, "900.png: 20000 × 10 pixels:", "crop it nearer a square")
    assert err.count("error") == 1


def test_a_symlink_loop_among_the_images_is_named_as_such(tmp_path, capsys, pixel_models):
    images = _image_set(tmp_path, n_images=1)
    (images["images"] / "900.png").symlink_to(images["images"] / "900.png")
    assert probe_main(_pixel_probe(pixel_models, "vilt", images, tmp_path / "o")) == 2
    err = one_line_error(capsys, "900.png: a symbolic link that loops back on itself")
    assert "free space" not in err


# ------------------------------------------------------------------------- 4. a processor that does not fit its model

def test_paligemmas_image_seq_length_must_be_its_towers_patch_count(tmp_path, capsys, pixel_models):
    folder = _saved_model("paligemma", tmp_path / "pg")
    saved = json.loads((folder / "processor_config.json").read_text())  # transformers 5 nests the image processor
    saved["image_processor"]["image_seq_length"] = 9  # a square, of the wrong size (the tower makes 16)
    (folder / "processor_config.json").write_text(json.dumps(saved))
    images = _image_set(tmp_path, n_images=1)
    _block_image((400, 300), (100, 50, 300, 250)).save(images["images"] / "900.png")
    pixel_models = {**pixel_models, "paligemma": folder}
    assert probe_main(_pixel_probe(pixel_models, "paligemma", images, tmp_path / "o")) == 2
    one_line_error(capsys, "image_seq_length is 9 but the vision tower makes 16 tokens")


def test_llava_without_its_centre_crop_is_refused_naming_the_setting(tmp_path, capsys, pixel_models):
    folder = tmp_path / "llava"
    shutil.copytree(pixel_models["llava_real"], folder)
    data = json.loads((folder / "preprocessor_config.json").read_text())
    data["do_center_crop"] = False
    (folder / "preprocessor_config.json").write_text(json.dumps(data))
    images = _image_set(tmp_path, n_images=1)
    _block_image((400, 300), (100, 50, 300, 250)).save(images["images"] / "900.png")
    assert probe_main(_pixel_probe({"llava": folder}, "llava", images, tmp_path / "o")) == 2
    one_line_error(capsys, "its processor makes 448 × 336 pixels of a 400 × 300 image but the vision tower takes "
                           "336 × 336")


def test_a_vilt_size_divisor_that_leaves_a_band_unseen_skips_its_phrases_as_outside_view(tmp_path, pixel_models):
    """size_divisor 1 with 32-pixel patches: a 400 × 300 image becomes 170 × 128, 4 × 5 patches cover 160 × 128, and
    a gold box in the 10 right-most resized pixels (the 24 right-most original ones) is not seen: outside_view, not a
    miss."""
    folder = tmp_path / "vilt"
    shutil.copytree(pixel_models["vilt"], folder)
    data = json.loads((folder / "preprocessor_config.json").read_text())
    data["size_divisor"] = 1
    (folder / "preprocessor_config.json").write_text(json.dumps(data))
    images = _image_set(tmp_path, annotated=(400, 300), box=(380, 50, 399, 250), n_images=2)
    for image_id in images["ids"]:
        _block_image((400, 300), (380, 50, 399, 250)).save(images["images"] / f"{image_id}.png")
    out = tmp_path / "o"
    assert probe_main(_pixel_probe({"vilt": folder}, "vilt", images, out)) == 2  # nothing left to score
    import vb_probe

    model = vb_probe.load_model(folder)
    from vb_probe.pipeline import ProbeConfig, run_probes

    results = run_probes(ProbeConfig(annotations=images["flickr"], images=images["images"]), model,
                         vb_probe.load_tokenizer(model=model), progress=False)
    assert dict(results.main.skipped["entity"]) == {"outside_view": 2}


def test_a_qwen2_vl_min_pixels_that_makes_thousands_of_tokens_is_said_before_the_first_forward(tmp_path, capsys,
                                                                                             pixel_models, monkeypatch):
    folder = tmp_path / "qwen"
    shutil.copytree(pixel_models["qwen2_vl"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 32768  # Qwen2-VL's own
    (folder / "config.json").write_text(json.dumps(config))
    saved = json.loads((folder / "processor_config.json").read_text())  # as transformers 5 saves a processor
    data = saved["image_processor"]
    data["min_pixels"] = data["size"]["shortest_edge"] = 5000 * 28 * 28  # 5,000 tokens an image
    data["max_pixels"] = data["size"]["longest_edge"] = 6000 * 28 * 28
    (folder / "processor_config.json").write_text(json.dumps(saved))
    images = _image_set(tmp_path, n_images=1)
    _block_image((400, 300), (100, 50, 300, 250)).save(images["images"] / "900.png")
    monkeypatch.setattr("vb_probe.pipeline.probe_pass", _never("probe_pass"))
    with pytest.raises(AssertionError, match="probe_pass"):
        probe_main(_pixel_probe({"qwen2_vl": folder}, "qwen2_vl", images, tmp_path / "o"))
    out = capsys.readouterr().out
    assert "note: the processor makes up to 50" in out and "image tokens an image" in out
    data["min_pixels"] = data["size"]["shortest_edge"] = 40000 * 28 * 28  # past the model's 32768 positions
    data["max_pixels"] = data["size"]["longest_edge"] = 50000 * 28 * 28
    (folder / "processor_config.json").write_text(json.dumps(saved))
    assert probe_main(_pixel_probe({"qwen2_vl": folder}, "qwen2_vl", images, tmp_path / "o2")) == 2
    one_line_error(capsys, "more than the model's", "positions; lower the processor's max_pixels")


# ------------------------------------------------------------------------- 5. duplicates and overflows in the datasets

def _refcoco_set(folder, images=None, objects=None, refs=None):
    from vb_probe.data.refcoco import write_refcoco

    images = images or [{"id": 7, "width": 100, "height": 80, "file_name": "a.jpg"},
                        {"id": 9, "width": 60, "height": 60, "file_name": "b.jpg"}]
    objects = objects or [{"id": 70, "image_id": 7, "box": [10, 20, 40, 60]}, {"id": 90, "image_id": 9,
                                                                                "box": [0, 0, 30, 30]}]
    refs = refs or [{"ref_id": 0, "ann_id": 70, "image_id": 7, "split": "testA", "sentences": [("man",)]},
                    {"ref_id": 1, "ann_id": 90, "image_id": 9, "split": "val", "sentences": [("cat",)]}]
    write_refcoco(folder, images, objects, refs)
    return folder


def _instances_edit(folder, change):
    data = json.loads((folder / "instances.json").read_text())
    change(data)
    (folder / "instances.json").write_text(json.dumps(data))


@pytest.mark.parametrize("case, expected", [
    ("annotation_twice", r"instances.json: annotations\[1\]: annotation id 70 is listed a second time"),
    ("image_twice", r"instances.json: images\[1\]: image id 7 is listed a second time"),
    ("ref_twice", r"refs\(unc\).p: ref 1: ref_id 0 is listed a second time"),
    ("size_1e400", r"instances.json: holds the number 1e400, beyond floating point"),
    ("long_id", r"instances.json: holds an integer of 6,000 digits where ids and sizes have at most 20"),
    ("tuple_key", r"refs\(unc\).p: a dict keyed by a tuple; refs files key their dicts by strings"),
    ("pickled_long_id", r"refs\(unc\).p: ref 0: ref_id an integer of .*-odd digits is not an integer id"),
    ("memo_bomb", r"refs\(unc\).p: does not parse as a pickle"),
    ("truncated", r"refs\(unc\).p: ends before its last object \(a truncated download\?\)"),
])
def test_refcoco_duplicates_and_overflows_are_one_line_naming_file_and_record(case, expected, tmp_path):
    import resource

    from vb_probe.data.refcoco import RefCoco

    folder = _refcoco_set(tmp_path / "refcoco")
    refs_path = folder / "refs(unc).p"
    if case == "annotation_twice":
        _instances_edit(folder, lambda d: d["annotations"].append(dict(d["annotations"][0])))
        _instances_edit(folder, lambda d: d["annotations"].insert(1, d["annotations"].pop()))
    elif case == "image_twice":
        _instances_edit(folder, lambda d: d["images"].insert(1, dict(d["images"][0])))
    elif case == "ref_twice":
        refs = pickle.loads(refs_path.read_bytes())
        refs[1]["ref_id"] = 0
        refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    elif case == "size_1e400":
        text = (folder / "instances.json").read_text().replace('"width": 100', '"width": 1e400', 1)
        (folder / "instances.json").write_text(text)
    elif case == "long_id":
        text = (folder / "instances.json").read_text().replace('"id": 9,', f'"id": {"9" * 6000},', 1)
        (folder / "instances.json").write_text(text)
    elif case == "tuple_key":
        refs = pickle.loads(refs_path.read_bytes())
        refs[0][("a", "b")] = 1
        refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    elif case == "pickled_long_id":
        refs = pickle.loads(refs_path.read_bytes())
        refs[0]["ref_id"] = 10 ** 6000 - 1  # 6,000 digits (Python will not read or print one)
        refs_path.write_bytes(pickle.dumps(refs, protocol=2))
    elif case == "memo_bomb":
        refs_path.write_bytes(b"\x80\x02]r\xff\xff\xff\xffh")  # nine bytes: memo slot 2**32 - 1, then a GET
        assert len(refs_path.read_bytes()) == 9
    else:
        refs_path.write_bytes(refs_path.read_bytes()[:-30])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=expected) as caught:
        RefCoco(folder)
    assert len(str(caught.value).splitlines()) == 1 and "hostile" not in str(caught.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB: no 4 GB memo


def _vg_set(folder):
    from vb_probe.data.visual_genome import write_visual_genome

    write_visual_genome(folder, [{"image_id": 1, "width": 100, "height": 100}, {"image_id": 2, "width": 50,
                                                                               "height": 40}],
                        {"1": [{"region_id": 11, "phrase": "a man", "box": [10, 10, 60, 90]},
                               {"region_id": 12, "phrase": "green grass", "box": [0, 80, 100, 100]}],
                         "2": [{"region_id": 21, "phrase": "red car", "box": [5, 5, 45, 35]}]},
                        {"1": [], "2": []}, {"train": ["2"], "val": ["1"], "test": ["1", "2"]})
    return folder


@pytest.mark.parametrize("case, expected", [
    ("region_twice", r"region_descriptions.json: image 1, region 1: region_id 11 is also region 0 of this image"),
    ("second_document", r"region_descriptions.json: holds more after its list \(at byte [\d,]+: a second JSON "
                        r"document\?\)"),
    ("unlisted", r"test.txt: image 3 has no record in region_descriptions.json"),
    ("size_1e400", r"image_data.json: holds the number 1e400, beyond floating point"),
    ("long_id", r"region_descriptions.json: record 1: holds an integer of 6,000 digits"),
])
def test_visual_genome_duplicates_and_overflows_are_one_line_naming_file_and_record(case, expected, tmp_path,
                                                                                    monkeypatch):
    from vb_probe.data.visual_genome import VisualGenome

    monkeypatch.setenv("VB_PROBE_CACHE", str(tmp_path / "cache"))
    folder = _vg_set(tmp_path / "vg")
    regions = folder / "region_descriptions.json"
    if case == "region_twice":
        data = json.loads(regions.read_text())
        data[0]["regions"][1]["region_id"] = 11
        regions.write_text(json.dumps(data))
    elif case == "second_document":
        regions.write_text(regions.read_text() + '\n[{"id": 3, "regions": []}]')
    elif case == "unlisted":
        (folder / "test.txt").write_text("1\n2\n3\n")
        images = json.loads((folder / "image_data.json").read_text()) + [{"image_id": 3, "width": 10, "height": 10}]
        (folder / "image_data.json").write_text(json.dumps(images))
    elif case == "size_1e400":
        (folder / "image_data.json").write_text((folder / "image_data.json").read_text().replace("100", "1e400", 1))
    else:
        regions.write_text(regions.read_text().replace('"id": 2', f'"id": {"2" * 6000}', 1))
    with pytest.raises(DataError, match=expected) as caught:
        data = VisualGenome(folder)
        data.split("test")
        for image_id in ("1", "2"):
            data.captions(image_id)
    assert len(str(caught.value).splitlines()) == 1


def test_check_data_names_a_split_image_without_a_record(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VB_PROBE_CACHE", str(tmp_path / "cache"))
    folder = _vg_set(tmp_path / "vg")
    (folder / "test.txt").write_text("1\n2\n3\n")
    images = json.loads((folder / "image_data.json").read_text()) + [{"image_id": 3, "width": 10, "height": 10}]
    (folder / "image_data.json").write_text(json.dumps(images))
    assert probe_main(["check-data", "--visual-genome", str(folder), "--split", "test"]) == 2
    out = capsys.readouterr().out
    assert "image 3 has no record in region_descriptions.json" in out and "nothing is missing" not in out


# ------------------------------------------------------------------------- 6. stale caches and resumes

def test_records_swapped_in_place_are_indexed_again_not_given_to_another_image(tmp_path, monkeypatch):
    """Two records of equal length swapped in place (same size, same modification time) in a file large enough that
    the cache key samples it: the cached byte-span index would give each image the other's regions; each record's
    own image id is checked when read, and the file is indexed again, once (the next run reads the new index, no
    cache to delete)."""
    from vb_probe.data.visual_genome import VisualGenome

    monkeypatch.setenv("VB_PROBE_CACHE", str(tmp_path / "cache"))
    folder = _vg_set(tmp_path / "vg")
    regions = folder / "region_descriptions.json"

    def record(image_id, phrase, box):
        return {"id": image_id, "regions": [{"region_id": 10 * image_id + 1, "image_id": image_id, "phrase": phrase,
                                             "x": box[0], "y": box[1], "width": box[2], "height": box[3]}]}
    filler = [record(1000 + k, "a long filler phrase " * 8, (1, 1, 5, 5)) for k in range(6000)]  # about 3 MB
    images = json.loads((folder / "image_data.json").read_text()) + [
        {"image_id": 1000 + k, "width": 10, "height": 10} for k in range(6000)]
    (folder / "image_data.json").write_text(json.dumps(images))
    one, two = record(1, "a man", (10, 10, 50, 80)), record(2, "a car", (5, 5, 40, 30))
    head, tail = filler[:2900], filler[2900:]
    regions.write_text(json.dumps(head + [one, two] + tail))
    assert [c.words for c in VisualGenome(folder).captions("1")] == [("a", "man")]
    stat = regions.stat()
    swapped = json.dumps(head + [two, one] + tail)
    assert len(swapped) == stat.st_size
    regions.write_text(swapped)
    os.utime(regions, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    from vb_probe.data.features import sampled_digest

    data = VisualGenome(folder)
    assert data._file._key == sampled_digest(regions)  # the key did not see the swap: the cached index is stale
    assert [c.words for c in data.captions("1")] == [("a", "man")] and [c.words for c in data.captions("2")] == \
        [("a", "car")]
    again = VisualGenome(folder)  # the fresh index was kept
    assert [c.words for c in again.captions("2")] == [("a", "car")] and not again._file._rescanned


def test_a_resume_after_an_image_was_replaced_by_one_of_the_same_size_is_refused(tmp_path, capsys, monkeypatch,
                                                                                pixel_models):
    from PIL import Image
    from test_vilt import _write_world

    world = _write_world(tmp_path / "w")
    for k in range(130):  # a folder of many images, of which a run reads six: a sampled key would skip some
        Image.new("RGB", (8, 8)).save(world["images"] / f"{800 + k}.png")
    argv = ["entity-grounding", "--ckpt", str(pixel_models["vilt"]), "--flickr30k", str(world["flickr"]), "--images",
            str(world["images"]), "--out", str(tmp_path / "o"), "--quiet", "--batch-size", "1"]
    interrupted_probe(monkeypatch, argv)
    image = world["images"] / f"{world['ids'][1]}.png"  # one a key sampling every other image would not read

    pixels = np.asarray(Image.open(image)).copy()
    Image.fromarray(255 - pixels).save(image)  # another picture, same size in pixels
    capsys.readouterr()
    assert probe_main([*argv, "--resume"]) == 2
    one_line_error(capsys, "saved progress is for another run (features")


def test_a_single_process_resume_of_a_torchrun_folder_is_refused(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o"
    interrupted_probe(monkeypatch, probe_args(data, out, "--batch-size", "1"))
    saved = out / ".main.progress.json"
    for rank in (0, 1):  # as two processes under torchrun leave their progress
        shutil.copy(saved, out / f".main.rank{rank}.progress.json")
    saved.unlink()
    capsys.readouterr()
    assert probe_main(probe_args(data, out, "--batch-size", "1", "--resume")) == 2
    one_line_error(capsys, "holds the progress of a run over 2 processes (torchrun); resume it with torchrun "
                           "--nproc_per_node 2")


def test_scores_of_another_model_type_of_the_same_shape_are_refused(tmp_path, capsys, pixel_models):
    """A LLaVA run's scores drawn over a Qwen2-VL model of the same shape (2 × 4 heads)."""
    images = _image_set(tmp_path, n_images=1)
    _block_image((400, 300), (100, 50, 300, 250)).save(images["images"] / "900.png")
    assert probe_main(_pixel_probe(pixel_models, "llava", images, tmp_path / "llava_scores")) == 0
    capsys.readouterr()
    assert probe_main(["explore", "--ckpt", str(pixel_models["qwen2_vl"]), "--flickr30k", str(images["flickr"]),
                       "--images", str(images["images"]), "--scores", str(tmp_path / "llava_scores"), "--out",
                       str(tmp_path / "page"), "--quiet"]) == 2
    one_line_error(capsys, "the scores are of a llava model but this model is a qwen2_vl")


# ------------------------------------------------------------------------- 7. our own progress files, unbounded work

def test_a_users_rank_progress_file_is_never_overwritten(data, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".main.rank0.progress.json").write_text("a user's file")
    assert probe_main(probe_args(data, out)) == 2
    one_line_error(capsys, ".main.rank0.progress.json, which is not vb-probe's progress file")
    assert (out / ".main.rank0.progress.json").read_text() == "a user's file"


def test_figure_4_over_thousands_of_predicates_is_bounded_and_says_what_it_left_out():
    from vb_probe.results import MAX_PANELS, HeadScores, SyntacticResult

    relations = [f"predicate_{k}" for k in range(3000)]
    scores = {(r, d): HeadScores(np.full((2, 2), k % 7), 10 + k % 50) for k, r in enumerate(relations)
              for d in ("head_to_dependent", "dependent_to_head")}
    result = SyntacticResult(relations, scores, {f"{r}/{d}": {} for r, d in scores}, "test", 9000, "visual_genome",
                             {}, {}, {})
    figure = result.plot()
    width, _ = figure.get_size_inches() * figure.dpi
    assert len(figure.axes) == MAX_PANELS and width < 4000
    assert "the 8 of 3,000 relations with the most arcs (the other 2,992 in syntactic.csv)" in figure._suptitle.get_text()
    assert [a.get_title() for a in figure.axes] == [f"predicate_{k}" for k in range(3000) if k % 50 == 49][:8]


def test_a_llava_image_token_that_is_not_the_tokenizers_is_one_line(tmp_path, capsys, pixel_models):
    folder = tmp_path / "llava"
    shutil.copytree(pixel_models["llava"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_index"] = config["image_token_id"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    images = _image_set(tmp_path, n_images=1)
    _block_image((400, 300), (100, 50, 300, 250)).save(images["images"] / "900.png")
    assert probe_main(_pixel_probe({"llava": folder}, "llava", images, tmp_path / "o")) == 2
    one_line_error(capsys, "the config's image token id is 5 but the tokenizer's <image> is 3")


@pytest.mark.parametrize("argv, expected", [
    (["pretrain", "--config", "vilt", "--set", "model.patch_size=0"], "model.patch_size=0 must be at least 1"),
    (["pretrain", "--config", "vilt", "--set", "model.max_position_embeddings=3"],
     "model.max_position_embeddings=3 is fewer than the 40 text tokens a caption is cut to"),
])
def test_vilt_pretraining_values_that_cannot_build_a_model_are_one_line(argv, expected, world, tmp_path, capsys):
    assert train_main([*argv, "--data", str(world["world"]), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    one_line_error(capsys, expected)
    assert not [p for p in (tmp_path / "run").glob("*") if not p.name.startswith(".")]  # nothing trained or saved


def test_a_demo_of_three_scenes_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        probe_main(["demo", "--scenes", "3", "--out", str(tmp_path / "d")])
    assert exit_.value.code == 2
    one_line_error(capsys, "argument --scenes: 3 must be at least 10")
