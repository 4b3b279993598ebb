"""The trainer: schedule and masking by hand, masked LM only on matching text, exact resume, DDP with
two processes equal to one, and checkpoints that load in transformers and vb-probe."""

from __future__ import annotations

import csv
import os
import socket

import numpy as np
import pytest
import torch

from training.config import ObjectiveSection, load_config
from training.loop import lr_at
from training.objectives import choose_masked, corrupt

TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
        "model.intermediate_size=64", "model.max_position_embeddings=64", "train.batch_size=8",
        "train.eval_every=3", "train.save_every=3", "train.eval_batches=1", "train.threads=1"]


def test_lr_schedule_by_hand():
    values = [lr_at(s, 10, 1.0, 0.2) for s in range(10)]
    assert values[:2] == [0.5, 1.0]  # warm-up over 2 steps
    assert values[2:] == pytest.approx([1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])


def test_masking_policies_rates():
    rng = np.random.default_rng(0)
    n = 200_000
    classes = rng.integers(0, 3, n)
    words = np.arange(n)
    uniform = choose_masked(classes, words, ObjectiveSection(masking="uniform"), rng)
    assert uniform.mean() == pytest.approx(0.15, abs=0.005)
    entity = choose_masked(classes, words, ObjectiveSection(masking="entity"), rng)
    for cls, p in ((2, 0.4), (1, 0.25), (0, 0.1)):
        assert entity[classes == cls].mean() == pytest.approx(p, abs=0.01)
    # whole-word masking: all sub-words of a word together
    sub_words = np.repeat(np.arange(1000), 3)
    whole = choose_masked(np.zeros(3000, int), sub_words, ObjectiveSection(masking="uniform", whole_word=True), rng)
    assert (whole.reshape(-1, 3).all(1) | ~whole.reshape(-1, 3).any(1)).all()
    ids = np.full(n, 50)
    out = corrupt(ids, np.ones(n, bool), mask_id=4, vocab_size=100, n_special=5, rng=rng)
    assert (out == 4).mean() == pytest.approx(0.8, abs=0.01)
    assert (out == 50).mean() == pytest.approx(0.1 + 0.1 / 95, abs=0.01)
    assert out.min() >= 4 and out.max() < 100


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from training.world import build_world

    out = tmp_path_factory.mktemp("tw") / "world"
    build_world(out, images=40, seed=1, progress=False, render=False, hdf5=False)
    return out


def test_masked_lm_only_where_text_matches(small_world):
    from training.data import PretrainData
    from vb_probe.tokenization import load_tokenizer

    config = load_config(None, ["train.batch_size=64"])
    data = PretrainData(small_world, config.data, load_tokenizer(small_world / "tokenizer"), cache_dir=small_world / "c")
    batch = data.batch(0, config.objective, config.train)
    labels = batch.sip_labels
    assert 0 < int(labels.sum()) < 64  # both kinds present
    segment = batch.inputs["token_type_ids"][batch.mlm_batch_index, batch.mlm_positions]
    mismatched = labels[batch.mlm_batch_index] == 1
    assert (segment[mismatched] == 0).all()  # a mismatched second caption is never a masked-LM target
    assert (segment[~mismatched] == 1).any()  # a matching one is
    # batches are a pure function of the step
    again = data.batch(0, config.objective, config.train)
    assert torch.equal(again.inputs["input_ids"], batch.inputs["input_ids"])


def _log(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_resume_is_exact_and_checkpoint_loads_in_transformers(small_world, tmp_path, monkeypatch):
    from transformers import VisualBertForPreTraining

    from training import loop
    from training.cli import main
    from vb_probe.families.visualbert.checkpoints import load_model

    base = ["pretrain", "--data", str(small_world), "--quiet", "--steps", "6",
            *sum((["--set", s] for s in TINY), [])]
    assert main(base + ["--out", str(tmp_path / "full")]) == 0
    real_save = loop.save_checkpoint

    def save_then_interrupt(*args, **kwargs):  # the run is stopped right after its step-3 checkpoint
        real_save(*args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(loop, "save_checkpoint", save_then_interrupt)
    assert main(base + ["--out", str(tmp_path / "part")]) == 130
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert main(base + ["--out", str(tmp_path / "part"), "--resume"]) == 0
    full, part = _log(tmp_path / "full" / "log.csv"), _log(tmp_path / "part" / "log.csv")
    assert [r["step"] for r in part] == [str(s) for s in range(1, 7)]
    assert [r["loss"] for r in full] == [r["loss"] for r in part]  # step for step
    final = tmp_path / "full" / "final"
    ours = load_model(final)
    theirs = VisualBertForPreTraining.from_pretrained(final).eval()
    ids = torch.randint(5, 50, (2, 7))
    visual = torch.randn(2, 4, ours.config.visual_embedding_dim)
    with torch.no_grad():
        a = ours(input_ids=ids, visual_embeds=visual).last_hidden_state
        b = theirs.visual_bert(input_ids=ids, visual_embeds=visual).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert any("cls" in note for note in ours.load_notes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data, out, overrides):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    from training.loop import pretrain

    pretrain(load_config(None, overrides), data, out, progress=False)
    import torch.distributed as dist

    dist.destroy_process_group()


def test_two_processes_match_one(small_world, tmp_path):
    import torch.multiprocessing as mp

    from training.loop import pretrain

    overrides = TINY + ["model.hidden_dropout_prob=0.0", "model.attention_probs_dropout_prob=0.0", "train.steps=4"]
    pretrain(load_config(None, overrides), small_world, tmp_path / "one", progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), small_world, tmp_path / "two", overrides), nprocs=2, join=True)
    one, two = _log(tmp_path / "one" / "log.csv"), _log(tmp_path / "two" / "log.csv")
    for a, b in zip(one, two):
        assert float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-4)
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "one" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "final" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4)


def test_tensorboard_and_csv_logs_are_written(small_world, tmp_path):
    from training.loop import pretrain

    pretrain(load_config(None, TINY + ["train.steps=3"]), small_world, tmp_path / "run", progress=False)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    rows = _log(tmp_path / "run" / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[-1]["eval_entity_acc"] != ""


def test_compiled_training_matches_eager(small_world, tmp_path):
    """train.compile: the same losses step for step as the eager run (no dropout, so both draw nothing)."""
    from training.loop import pretrain

    common = TINY + ["train.steps=3", "model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0"]
    pretrain(load_config(None, common), small_world, tmp_path / "eager", progress=False)
    pretrain(load_config(None, common + ["train.compile=default"]), small_world, tmp_path / "compiled", progress=False)
    eager, compiled = _log(tmp_path / "eager" / "log.csv"), _log(tmp_path / "compiled" / "log.csv")
    assert len(eager) == len(compiled) == 3
    for a, b in zip(eager, compiled):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-4)


def test_config_rejects_values_outside_a_fields_choices():
    from vb_probe.errors import VbProbeError

    for override, message in [("train.compile=fast", "train.compile='fast'; choose one of off, default"),
                              ("objective.masking=nouns", "objective.masking='nouns'; choose one of uniform, entity"),
                              ("train.amp=fp8", "train.amp='fp8'; choose one of auto, bf16, fp16, off")]:
        with pytest.raises(VbProbeError, match=message.replace("(", r"\(")):
            load_config(None, [override])


def test_shipped_configs_load_and_the_tasks_config_is_the_demo_with_matching():
    """Every packaged TOML (training/configs/) loads; tasks.toml is the demo model with image–text matching and more
    steps (the README's downstream-task recipe says so), nothing else changed."""
    import dataclasses
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "training" / "configs"
    configs = {p.stem: dataclasses.asdict(load_config(p, [])) for p in sorted(folder.glob("*.toml"))}
    assert {"demo", "paper", "tasks"} <= set(configs)
    demo, tasks = configs["demo"], configs["tasks"]
    changed = {(section, key) for section in demo for key in demo[section] if demo[section][key] != tasks[section][key]}
    assert changed == {("objective", "sentence_image"), ("train", "steps")}
    assert tasks["objective"]["sentence_image"] == "itm" and tasks["train"]["steps"] > demo["train"]["steps"]


def test_finetune_steps_default_to_each_tasks_own():
    from training.cli import _settings, build_parser

    base = ["finetune", "--task", "all", "--data", "w", "--init", "m", "--out", "o"]
    args = build_parser().parse_args(base)
    assert {task: _settings(args, task).steps for task in ("vqa", "nlvr2", "vcr", "flickr30k")} == {
        "vqa": 800, "nlvr2": 800, "vcr": 300, "flickr30k": 300}
    args = build_parser().parse_args(base + ["--steps", "7"])
    assert _settings(args, "nlvr2").steps == 7
    ablate = build_parser().parse_args(["ablate", "--task", "nlvr2", "--data", "w", "--out", "o"])
    assert _settings(ablate).steps == 150
