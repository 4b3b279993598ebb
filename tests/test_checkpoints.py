"""Checkpoints round-trip with transformers; bad folders give one-line errors naming the fix."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from conftest import random_inputs, tiny_config

from vb_probe.errors import CheckpointError
from vb_probe.families.visualbert.checkpoints import init_from_bert, load_model, save_model
from vb_probe.families.visualbert.model import VisualBertModel
from vb_probe.tokenization import load_tokenizer, tokenize_words

WORDS = ["a", "man", "dog", "red", "ball", "throws", "the", "##s", "play", "##ing", "on", "grass", "'", "s"]


def write_vocab(folder, extra=0):
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(extra)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return len(vocab)


def test_task_checkpoint_with_prefix_loads_and_matches_transformers(tmp_path):
    from transformers import VisualBertForQuestionAnswering
    from transformers import VisualBertModel as Reference

    config = tiny_config(num_labels=5)
    torch.manual_seed(0)
    task = VisualBertForQuestionAnswering(config).eval()
    task.save_pretrained(tmp_path / "vqa")  # keys carry the visual_bert. prefix + a classifier head
    model = load_model(tmp_path / "vqa")
    assert not model.training
    assert any("cls" in note or "task-head" in note for note in model.load_notes)
    inputs = random_inputs(config)
    with torch.no_grad():
        ref = task.visual_bert(**inputs, output_attentions=True)
        out = model(**inputs, output_attentions=True)
    for mine, theirs in zip(out.attentions, ref.attentions):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # and what we save, transformers loads as it is
    save_model(model, tmp_path / "ours")
    back = Reference.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        again = back(**inputs, output_attentions=True)
    torch.testing.assert_close(again.last_hidden_state, out.last_hidden_state, atol=1e-5, rtol=0)


def test_pytorch_bin_checkpoint_loads(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    model = VisualBertModel(config)
    folder = tmp_path / "bin"
    folder.mkdir()
    config.to_json_file(folder / "config.json")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    loaded = load_model(folder)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)


def test_save_writes_tokenizer_and_is_atomic(tmp_path):
    write_vocab(tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    config = tiny_config(vocab_size=len(tokenizer))
    model = VisualBertModel(config)
    save_model(model, tmp_path / "out", tokenizer=tokenizer)
    save_model(model, tmp_path / "out", tokenizer=tokenizer)  # overwriting an existing folder works
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors"} <= names and names & {"vocab.txt", "tokenizer.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)  # the temporary's private mode is not kept: others may read as with a plain write
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "out" / "config.json").stat().st_mode) == 0o666 & ~umask
    assert load_tokenizer(tmp_path / "out").convert_tokens_to_ids("dog") == tokenizer.convert_tokens_to_ids("dog")


def test_word_by_word_tokenisation_keeps_word_map(tmp_path):
    write_vocab(tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    tokens = tokenize_words(tokenizer, ["A", "man", "throws", "playing", "dog's"])
    pieces = tokenizer.convert_ids_to_tokens(tokens.input_ids)
    assert pieces == ["[CLS]", "a", "man", "throws", "play", "##ing", "dog", "'", "s", "[SEP]"]
    assert tokens.word_first_token == [1, 2, 3, 4, 6]
    assert tokens.word_last_token == [1, 2, 3, 5, 8]


def test_init_from_bert_copies_text_side_and_visual_embeddings(tmp_path):
    from transformers import BertConfig, BertModel

    bert_config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    bert = BertModel(bert_config)
    bert.save_pretrained(tmp_path / "bert")
    model = init_from_bert(tmp_path / "bert", visual_embedding_dim=10).eval()
    bert.eval()
    assert model.config.visual_embedding_dim == 10
    torch.testing.assert_close(model.encoder.layer[1].output.dense.weight, bert.encoder.layer[1].output.dense.weight)
    emb = model.embeddings
    torch.testing.assert_close(emb.visual_position_embeddings.weight, bert.embeddings.position_embeddings.weight)
    torch.testing.assert_close(emb.visual_token_type_embeddings.weight, bert.embeddings.token_type_embeddings.weight)
    # a text-only forward equals BERT's
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, bert(ids).last_hidden_state, atol=1e-5, rtol=0)


def test_bad_checkpoints_name_the_problem(tmp_path):
    config = tiny_config()
    model = VisualBertModel(config)
    save_model(model, tmp_path / "good")

    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        load_model(tmp_path / "nowhere")

    wrong = tmp_path / "wrongtype"
    save_model(model, wrong)
    data = json.loads((wrong / "config.json").read_text())
    data["model_type"] = "bert"
    (wrong / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="model_type is 'bert', expected 'visual_bert'"):
        load_model(wrong)

    truncated = tmp_path / "truncated"
    save_model(model, truncated)
    blob = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(truncated)

    shape = tmp_path / "shape"
    save_model(model, shape)
    data = json.loads((shape / "config.json").read_text())
    data["visual_embedding_dim"] = 99
    (shape / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"visual_projection.weight has shape \(32, 12\).*\(32, 99\)"):
        load_model(shape)

    layers = tmp_path / "layers"
    save_model(model, layers)
    data = json.loads((layers / "config.json").read_text())
    data["num_hidden_layers"] = 5
    (layers / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="weights missing .*encoder.layer.3"):
        load_model(layers)

    write_vocab(tmp_path / "bigtok", extra=500)
    with pytest.raises(CheckpointError, match="vocab_size is 120"):
        load_tokenizer(tmp_path / "bigtok", vocab_size=config.vocab_size)


def test_save_pretrained_and_from_pretrained_as_transformers_users_expect(tmp_path, config):
    from transformers import VisualBertModel as Reference

    from vb_probe.families.visualbert.model import VisualBertModel

    torch.manual_seed(3)
    model = VisualBertModel(config).eval()
    model.save_pretrained(tmp_path / "m")
    again = VisualBertModel.from_pretrained(tmp_path / "m")
    theirs = Reference.from_pretrained(tmp_path / "m")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)
        torch.testing.assert_close(theirs.state_dict()[name], tensor, rtol=0, atol=0)
    assert not again.training
