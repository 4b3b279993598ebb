"""Reliability: the bad-input matrix over the CLI commands, interrupted work (probe resume, a checkpoint
save killed with SIGKILL), determinism, and fuzzing of the readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fixtures import write_probe_set
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vb_probe.cli import main as probe_main
from vb_probe.errors import DataError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_probe_set(tmp_path_factory.mktemp("rel"), n_images=30)


def _args(world, out, *extra, command="entity-grounding", ckpt=None):
    return [command, "--ckpt", str(ckpt or world["ckpt"]), "--flickr30k", str(world["flickr"]),
            "--features", str(world["tsv"]), "--out", str(out), "--quiet", *extra]


def _bad_checkpoint(world, tmp_path, case):
    folder = tmp_path / case
    shutil.copytree(world["ckpt"], folder)
    if case == "wrong_model_type":
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "bert"
        (folder / "config.json").write_text(json.dumps(config))
    elif case == "missing_weights":
        (folder / "model.safetensors").unlink()
    elif case == "truncated_weights":
        blob = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    elif case == "tokenizer_mismatch":
        config = json.loads((folder / "config.json").read_text())
        config["vocab_size"] = 10
        (folder / "config.json").write_text(json.dumps(config))
        from safetensors.torch import load_file, save_file
        state = load_file(folder / "model.safetensors")
        state["embeddings.word_embeddings.weight"] = state["embeddings.word_embeddings.weight"][:10].clone()
        save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    return folder


BAD_CHECKPOINTS = {
    "wrong_model_type": "model_type is 'bert', expected 'visual_bert'",
    "missing_weights": "no model.safetensors or pytorch_model.bin",
    "truncated_weights": "truncated or corrupt",
    "tokenizer_mismatch": "but the checkpoint's vocab_size is 10",
}


@pytest.mark.parametrize("command", ["entity-grounding", "syntactic", "visualize"])
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoints_across_commands(world, tmp_path, capsys, command, case):
    ckpt = _bad_checkpoint(world, tmp_path, case)
    out = tmp_path / "out"
    if command == "visualize":
        args = ["visualize", "--ckpt", str(ckpt), "--flickr30k", str(world["flickr"]), "--features",
                str(world["tsv"]), "--image-id", "500", "--out", str(out / "v.png")]
    else:
        extra = ["--parses", str(world["parses"]), "--relation", "nsubj"] if command == "syntactic" else []
        args = _args(world, out, *extra, command=command, ckpt=ckpt)
    code = probe_main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert BAD_CHECKPOINTS[case] in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_unwritable_out(world, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert probe_main(_args(world, blocker / "sub")) == 2
    assert "cannot create the folder" in capsys.readouterr().err


def test_debug_shows_the_traceback(world, tmp_path):
    from vb_probe.errors import VbProbeError

    with pytest.raises(VbProbeError):
        probe_main(["--debug", *_args(world, tmp_path / "o", "--visual-token-type", "9")])
    with pytest.raises(VbProbeError):  # --debug after the command works too
        probe_main([*_args(world, tmp_path / "o", "--visual-token-type", "9"), "--debug"])


def test_vb_train_bad_input(tmp_path, capsys):
    from training.cli import main as train_main

    assert train_main(["pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--set", "train.stepz=3"]) == 2
    assert "unknown key train.stepz" in capsys.readouterr().err
    assert train_main(["pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no vocab.txt or tokenizer.json" in capsys.readouterr().err


def test_probe_resume_gives_the_same_tables(world, tmp_path, monkeypatch):
    from vb_probe.families.visualbert import inputs as pipeline  # where a batch is collated

    reference = tmp_path / "reference"
    assert probe_main(_args(world, reference, "--batch-size", "1")) == 0
    calls = {"n": 0}
    real_collate = pipeline.collate

    def interrupting_collate(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 13:
            raise KeyboardInterrupt
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "collate", interrupting_collate)
    resumed = tmp_path / "resumed"
    assert probe_main(_args(world, resumed, "--batch-size", "1")) == 130
    state = json.loads((resumed / ".main.progress.json").read_text())
    assert state["done"] == 10  # saved every 10 batches
    assert not (resumed / "entity_grounding.csv").exists()
    monkeypatch.setattr(pipeline, "collate", real_collate)
    counted = {"n": 0}

    def counting_collate(*args, **kwargs):
        counted["n"] += 1
        return real_collate(*args, **kwargs)

    monkeypatch.setattr(pipeline, "collate", counting_collate)
    assert probe_main(_args(world, resumed, "--batch-size", "1", "--resume")) == 0
    total = json.loads((reference / "run.json").read_text())["n_captions"]
    assert counted["n"] == total - 10  # nothing done twice
    assert (resumed / "entity_grounding.csv").read_bytes() == (reference / "entity_grounding.csv").read_bytes()
    assert not list(resumed.glob(".*.progress.json"))


def test_same_inputs_give_byte_identical_tables(world, tmp_path):
    outs = []
    for n, batch in enumerate((2, 2, 5)):
        out = tmp_path / f"run{n}"
        assert probe_main(_args(world, out, "--parses", str(world["parses"]), "--relation", "all",
                                "--batch-size", str(batch), command="syntactic")) == 0
        outs.append((out / "syntactic.csv").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_checkpoint_save_killed_leaves_previous_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        import torch
        from training import loop
        from training.config import TrainConfig
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters())
        out = __import__("pathlib").Path({str(tmp_path)!r})
        loop.save_checkpoint(out, 1, model, opt, TrainConfig())
        real_save = torch.save
        def dying_save(obj, handle, *a, **k):
            handle.write(b"partial bytes of a checkpoint")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        loop.save_checkpoint(out, 2, model, opt, TrainConfig())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    from training.loop import latest_checkpoint

    state = latest_checkpoint(tmp_path)
    assert state is not None and state["step"] == 1
    assert [p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")] == ["step-0000001.pt"]


# ------------------------------------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
markup_text = st.text(alphabet=st.sampled_from(list("[]/EN#0123 abc.\t'")), max_size=60)


@FUZZ
@given(line=st.one_of(markup_text, st.text(max_size=40)))
def test_fuzz_sentence_parser(line):
    from vb_probe.data.flickr30k import parse_sentence

    try:
        words, phrases = parse_sentence(line, "fuzz:1")
    except DataError:
        return
    for p in phrases:
        assert list(p.words) == words[p.first_word_index:p.last_word_index + 1]


@FUZZ
@given(body=st.one_of(st.text(max_size=80), st.builds(
    lambda n, box: f"<annotation><size><width>{n}</width><height>{n}</height></size>"
                   f"<object><name>{n}</name><bndbox>{box}</bndbox></object></annotation>",
    st.sampled_from(["10", "x", "", "-3"]),
    st.text(alphabet=st.sampled_from(list("<>/xminyma0123 ")), max_size=40))))
def test_fuzz_xml_reader(tmp_path_factory, body):
    from vb_probe.data.flickr30k import read_annotation

    path = tmp_path_factory.mktemp("x") / "1.xml"
    path.write_text(body)
    try:
        annotation = read_annotation(path)
    except DataError:
        return
    for boxes in annotation.boxes.values():
        assert boxes.shape[1] == 4 and (boxes[:, 2] >= boxes[:, 0]).all()


@FUZZ
@given(row=st.lists(st.text(alphabet=st.sampled_from(list("AQgw=+/09x-. ")), max_size=16), min_size=1, max_size=11))
def test_fuzz_tsv_reader(tmp_path_factory, row):
    from vb_probe.data.features import TsvFeatures

    path = tmp_path_factory.mktemp("t") / "f.tsv"
    path.write_text("img7\t" + "\t".join(row) + "\n")
    try:
        store = TsvFeatures(path)
        regions = store["img7"]
    except DataError:
        return
    assert len(regions) >= 1 and np.isfinite(regions.features).all()


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("#=\t\n0123_abc- .")), max_size=120))
def test_fuzz_conllu_reader(text):
    from vb_probe.data.parses import parse_conllu

    try:
        parses = parse_conllu(text, "fuzz.conllu")
    except DataError:
        return
    for parse in parses.values():
        assert len(parse.words) == len(parse.heads) == len(parse.relations)
        assert all(0 <= h <= len(parse.words) for h in parse.heads)


@pytest.fixture(scope="module")
def real_shaped(tmp_path_factory):
    """12 images of the built-in world with 100 regions × 2048-d features each (as detectors write them) and a
    small model over them."""
    import torch
    from transformers import VisualBertConfig

    from bench.real_shaped import write_real_shaped_set
    from vb_probe.families.visualbert.checkpoints import save_model
    from vb_probe.families.visualbert.model import VisualBertModel
    from vb_probe.tokenization import load_tokenizer

    root = tmp_path_factory.mktemp("real")
    data = write_real_shaped_set(root, 12)
    vocab = len(load_tokenizer(root / "world" / "tokenizer"))
    torch.manual_seed(0)
    save_model(VisualBertModel(VisualBertConfig(vocab_size=vocab, visual_embedding_dim=2048, hidden_size=48,
                                                num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)),
               root / "ckpt")
    for f in (root / "world" / "tokenizer").iterdir():
        shutil.copy(f, root / "ckpt")
    return {**data, "ckpt": root / "ckpt"}


def test_real_shaped_tables_are_byte_identical_across_batch_sizes(real_shaped, tmp_path):
    tables = []
    for batch in (1, 7, 64):
        out = tmp_path / f"b{batch}"
        assert probe_main(["entity-grounding", "--ckpt", str(real_shaped["ckpt"]), "--flickr30k",
                           str(real_shaped["flickr30k"]), "--features", str(real_shaped["tsv"]), "--split", "train",
                           "--batch-size", str(batch), "--out", str(out), "--quiet"]) == 0
        tables.append((out / "entity_grounding.csv").read_bytes())
    assert tables[0] == tables[1] == tables[2]


def test_features_are_read_batch_by_batch_not_held(real_shaped):
    """Collecting the split reads no features; each batch reads its own images' once; nothing keeps them."""
    from collections import Counter

    from vb_probe.api import load_model, load_tokenizer
    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.pipeline import probe_pass
    from vb_probe.queries import collect_items

    class CountingFeatures:
        def __init__(self, store):
            self.store, self.reads, self.source, self.dim = store, Counter(), store.source, store.dim

        def __contains__(self, image_id):
            return image_id in self.store

        def __getitem__(self, image_id):
            self.reads[image_id] += 1
            return self.store[image_id]

    features = CountingFeatures(open_features(real_shaped["tsv"]))
    flickr = Flickr30kEntities(real_shaped["flickr30k"])
    image_ids = flickr.split("train")
    items, _ = collect_items(flickr, features, image_ids)
    assert sum(features.reads.values()) == 0 and all(item.regions is None for item in items)
    model = load_model(real_shaped["ckpt"])
    probe_pass(model, load_tokenizer(model=model), items, batch_size=5, facts={"visual_token_type": 1}, max_text_len=64,
               progress=False, features=features)
    batches = [items[i:i + 5] for i in range(0, len(items), 5)]
    expected = Counter(image for batch in batches for image in {item.image_id for item in batch})
    assert features.reads == expected
