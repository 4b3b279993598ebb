"""Fine-tuning: every task reads its real-format files from the world, trains and reports held-out metrics
with chance; evaluate re-scores a saved model; the ablation study writes its table. Metrics by hand."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from training.cli import main as train_main
from training.tasks import Example, Flickr30kTask, VCRTask, VQATask

TINY_PRETRAIN = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
                 "model.intermediate_size=64", "train.batch_size=8", "train.steps=3", "train.eval_every=3",
                 "train.save_every=3", "train.eval_batches=1"]


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    from training.config import load_config
    from training.loop import pretrain
    from training.world import build_world

    root = tmp_path_factory.mktemp("ft")
    build_world(root / "world", images=40, seed=2, progress=False, render=False, hdf5=False)
    pretrain(load_config(None, TINY_PRETRAIN), root / "world", root / "pre", progress=False)
    return root / "world", root / "pre" / "final"


def test_vqa_metrics_by_hand(world_and_model):
    task = VQATask(world_and_model[0])
    target = {"soft": {}, "human": {"red": 2, "blue": 8}}
    logits = torch.full((1, len(task.answers)), -5.0)
    logits[0, task.index["red"]] = 5.0
    assert task.score(logits, [target]) == [pytest.approx(2 / 3)]
    logits[0, task.index["blue"]] = 9.0
    assert task.score(logits, [target]) == [1.0]



def test_vqa_question_type_prior_by_hand(tmp_path):
    """The question-only baseline: each type's most frequent training answer, scored with VQA accuracy."""
    def write(split, rows):
        questions = [{"image_id": 1, "question": q, "question_id": i} for i, (q, _, _, _) in enumerate(rows)]
        annotations = [{"question_id": i, "image_id": 1, "multiple_choice_answer": top, "question_type": kind,
                        "answer_type": "number" if kind == "how many" else "other",
                        "answers": [{"answer": a} for a, n in human.items() for _ in range(n)]}
                       for i, (_, kind, top, human) in enumerate(rows)]
        (tmp_path / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": questions}))
        (tmp_path / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))

    colour, count = "what color is the", "how many"
    write("train", [("what color is the cat ?", colour, "red", {"red": 10}),
                    ("what color is the dog ?", colour, "red", {"red": 10}),
                    ("what color is the car ?", colour, "blue", {"blue": 10}),
                    ("how many dogs are there ?", count, "2", {"2": 10})])
    write("test", [("what color is the bus ?", colour, "blue", {"red": 2, "blue": 8}),  # guess red: 2/3
                   ("how many cats are there ?", count, "2", {"2": 10}),  # guess 2: 1
                   ("is there a cat ?", "is there a", "yes", {"yes": 9, "red": 1})])  # unseen type, guess red: 1/3
    task = VQATask(tmp_path)
    assert task.text_prior(task.examples("test")) == {"vqa_accuracy": pytest.approx((2 / 3 + 1 + 1 / 3) / 3)}
    # chance answers "red" (the most frequent training answer) to everything
    assert task.chance(task.examples("test")) == {"vqa_accuracy": pytest.approx((2 / 3 + 0 + 1 / 3) / 3)}
    metrics = task.metrics([1.0, 0.0, 1 / 3], task.examples("test"))
    assert metrics["vqa_accuracy"] == pytest.approx(4 / 9)
    assert metrics["by_answer_type"] == {"other": pytest.approx(2 / 3), "number": 0.0}

def test_vcr_q2ar_and_flickr_recall_by_hand(world_and_model):
    examples = [Example([], [], {"mode": "q2a"}, group="a"), Example([], [], {"mode": "qa2r"}, group="a"),
                Example([], [], {"mode": "q2a"}, group="b"), Example([], [], {"mode": "qa2r"}, group="b")]
    metrics = VCRTask(world_and_model[0]).metrics([1.0, 1.0, 1.0, 0.0], examples)
    assert metrics == {"q2a": 1.0, "qa2r": 0.5, "q2ar": 0.5}
    recall = Flickr30kTask(world_and_model[0]).metrics([0, 3, 7, float("inf")], [])
    assert recall == {"r@1": 0.25, "r@5": 0.5, "r@10": 0.75, "upper_bound": 0.75}


def test_nlvr2_consistency_by_hand(tmp_path):
    """Consistency: the share of statements whose every image pair is right (NLVR2's, by set and sentence)."""
    from training.tasks import NLVR2Task

    rows = [("dev-1-0-0", "a", "True"), ("dev-1-1-0", "a", "False"),  # statement a: both pairs right below
            ("dev-1-0-1", "b", "False"), ("dev-1-1-1", "b", "True"),  # statement b: one of two right
            ("dev-2-0-0", "a", "True")]  # the same words in another set: another statement, alone
    (tmp_path / "dev.json").write_text("\n".join(json.dumps({"identifier": i, "sentence": s, "label": label})
                                                 for i, s, label in rows) + "\n")
    task = NLVR2Task(tmp_path)
    examples = task.examples("dev")
    assert examples[0].images == ["dev-1-0-img0", "dev-1-0-img1"] and [e.target for e in examples] == [1, 0, 0, 1, 1]
    metrics = task.metrics([1.0, 1.0, 1.0, 0.0, 0.0], examples)
    assert metrics == {"accuracy": pytest.approx(0.6), "consistency": pytest.approx(0.5)}  # 2 statements with >1 pair


@pytest.mark.parametrize("task", ["vqa", "nlvr2", "vcr", "flickr30k"])
def test_each_task_finetunes_and_evaluates(world_and_model, tmp_path, capsys, task):
    world, model = world_and_model
    out = tmp_path / task
    assert train_main(["finetune", "--task", task, "--data", str(world), "--init", str(model), "--out", str(out),
                       "--steps", "3", "--batch-size", "4", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    keys = {"vqa": ["vqa_accuracy"], "nlvr2": ["accuracy"], "vcr": ["q2a", "qa2r", "q2ar"],
            "flickr30k": ["r@1", "r@5", "r@10", "upper_bound"]}[task]
    n = metrics["n_held_out"]
    if task == "flickr30k":  # recall can only grow with k, up to the share of phrases any region grounds
        assert metrics["r@1"] <= metrics["r@5"] <= metrics["r@10"] <= metrics["upper_bound"] == 1.0
        assert metrics["chance"]["r@1"] <= metrics["chance"]["r@5"] <= metrics["chance"]["r@10"]
    elif task == "vcr":  # Q→AR needs both right; each accuracy is a share of the 2 × n / 2 questions
        assert metrics["q2ar"] <= min(metrics["q2a"], metrics["qa2r"])
        assert (metrics["q2a"] * n / 2) == pytest.approx(round(metrics["q2a"] * n / 2))
    elif task == "nlvr2":  # a share of n statements
        assert metrics["accuracy"] * n == pytest.approx(round(metrics["accuracy"] * n))
    else:  # VQA accuracy is a multiple of 1/3 per question, and the mean of the answer types weighted by their size
        assert (metrics["vqa_accuracy"] * n * 3) == pytest.approx(round(metrics["vqa_accuracy"] * n * 3), abs=1e-6)
        from training.tasks import VQATask

        sizes = Counter(e.target["answer_type"] for e in VQATask(world).examples("test"))
        weighted = sum(metrics["by_answer_type"][k] * v for k, v in sizes.items()) / sum(sizes.values())
        assert weighted == pytest.approx(metrics["vqa_accuracy"])
    assert set(keys) - {"upper_bound"} <= set(metrics["chance"])
    assert ("text_prior" in metrics) == (task == "vqa")
    assert "chance" in capsys.readouterr().out
    assert train_main(["evaluate", "--ckpt", str(out), "--data", str(world), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for key in keys:
        assert again[key] == pytest.approx(metrics[key])


def test_ablation_table_from_one_command(world_and_model, tmp_path):
    world, _ = world_and_model
    args = ["ablate", "--task", "nlvr2", "--data", str(world), "--out", str(tmp_path / "ab"), "--seeds", "2",
            "--variants", "full,no-early-fusion,no-coco-pretraining", "--steps", "2", "--batch-size", "4", "--quiet"]
    for item in TINY_PRETRAIN:
        args += ["--set", item]
    assert train_main(args) == 0
    with open(tmp_path / "ab" / "ablation.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["variant"] for r in rows] == ["full", "no-early-fusion", "no-coco-pretraining"]
    assert all(r["seeds"] == "2" and r["metric"] == "accuracy" for r in rows)
    with open(tmp_path / "ab" / "ablation_runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    for row in rows:
        scores = [float(r["score"]) for r in runs if r["variant"] == row["variant"]]
        assert float(row["mean"]) == pytest.approx(np.mean(scores), abs=1e-4)
    assert (tmp_path / "ab" / "ablation.png").is_file()
    assert train_main(["ablate", "--task", "nlvr2", "--data", str(world), "--out", str(tmp_path / "x"),
                       "--variants", "full,nonsense"]) == 2


def test_ablation_with_bert_gives_every_variant_berts_shape_and_tokenizer(world_and_model, tmp_path):
    import shutil

    from transformers import BertConfig, BertModel

    from vb_probe.tokenization import load_tokenizer

    world, _ = world_and_model
    bert = tmp_path / "bert"
    shutil.copytree(world / "tokenizer", bert)  # a BERT folder whose vocabulary covers the world's words
    vocab = len(load_tokenizer(bert))
    BertModel(BertConfig(vocab_size=vocab, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=64)).save_pretrained(bert)
    args = ["ablate", "--task", "nlvr2", "--data", str(world), "--out", str(tmp_path / "ab"), "--seeds", "1",
            "--variants", "full,no-bert-init", "--steps", "2", "--batch-size", "4", "--quiet", "--bert", str(bert)]
    for item in TINY_PRETRAIN:  # hidden 32 asked for; BERT's 48 wins, for both variants
        args += ["--set", item]
    assert train_main(args) == 0
    for variant, init in (("full", f"bert:{bert.resolve()}"), ("no-bert-init", "random")):
        saved = json.loads((tmp_path / "ab" / variant / "seed0" / "pretrain" / "final" / "training_config.json")
                           .read_text())
        assert saved["model"]["init"] == init
        assert saved["model"]["hidden_size"] == 48 and saved["model"]["intermediate_size"] == 96
        assert saved["data"]["tokenizer"] == str(bert.resolve())
    with open(tmp_path / "ab" / "ablation.csv") as handle:
        assert [r["variant"] for r in csv.DictReader(handle)] == ["full", "no-bert-init"]


def test_task_specific_pretraining_on_vqa_text(world_and_model, tmp_path):
    world, model = world_and_model
    args = ["pretrain", "--task", "vqa", "--data", str(world), "--init", str(model), "--out", str(tmp_path / "tsp"),
            "--quiet"]
    for item in TINY_PRETRAIN:
        args += ["--set", item]
    assert train_main(args) == 0
    text = json.loads((tmp_path / "tsp" / "vqa_text.json").read_text())
    assert {i["split"] for i in text["images"]} == {"train", "val"}
    assert any(s["tokens"][:2] == ["what", "color"] for i in text["images"] for s in i["sentences"])
    assert (tmp_path / "tsp" / "final" / "model.safetensors").is_file()


def test_flickr_chance_by_hand(world_and_model):
    task = Flickr30kTask(world_and_model[0])
    examples = [Example([], [], [(0, np.array([True, False, False, False])), (1, np.array([False] * 12))])]
    chance = task.chance(examples)
    # phrase 1: 1 hit in 4 regions → r@1 1/4, r@5 and r@10 draw all 4 → 1; phrase 2 has no hit → 0
    assert chance == {"r@1": pytest.approx(0.125), "r@5": pytest.approx(0.5), "r@10": pytest.approx(0.5)}


def test_a_fifth_task_is_one_class_in_one_module(world_and_model, tmp_path, capsys):
    """A new task — here, "does the caption name two or more boxed things?" — is a Task subclass registered in
    one place (this test); `vb-train finetune` and `evaluate` take it with no other change."""
    from training.tasks import TASKS, Task, register_task
    from vb_probe.data.flickr30k import Flickr30kEntities

    @register_task
    class BoxedPhrasesTask(Task):
        name = "boxed-phrases"
        n_outputs = 2
        headline = "accuracy"
        default_steps = 4

        def examples(self, split):
            flickr = Flickr30kEntities(self.data_dir / "flickr30k")
            out = []
            for image_id in flickr.split(split):
                boxed = flickr.annotation(image_id).boxes
                for caption in flickr.captions(image_id):
                    target = int(sum(p.entity_id in boxed for p in caption.phrases) >= 2)
                    out.append(Example([list(caption.words)], [image_id], target))
            return out

        def loss(self, logits, targets):
            return torch.nn.functional.cross_entropy(logits, torch.tensor(targets, device=logits.device))

        def score(self, logits, targets):
            return (logits.argmax(-1).cpu() == torch.tensor(targets)).float().tolist()

        def metrics(self, scores, examples):
            return {"accuracy": float(np.mean(scores))}

        def chance(self, examples):
            share = float(np.mean([e.target for e in examples]))
            return {"accuracy": max(share, 1 - share)}

    world, model = world_and_model
    try:
        out = tmp_path / "toy"
        assert train_main(["finetune", "--task", "boxed-phrases", "--data", str(world), "--init", str(model),
                           "--out", str(out), "--quiet"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["task"] == "boxed-phrases" and metrics["steps"] == 4
        held_out = BoxedPhrasesTask(world).examples("test")
        assert metrics["n_held_out"] == len(held_out) and metrics["chance"]["accuracy"] >= 0.5
        assert metrics["accuracy"] * len(held_out) == pytest.approx(round(metrics["accuracy"] * len(held_out)))
        capsys.readouterr()
        assert train_main(["evaluate", "--ckpt", str(out), "--data", str(world), "--out", str(tmp_path / "ev")]) == 0
        again = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert again["accuracy"] == metrics["accuracy"]  # the saved model re-scores to the same number
    finally:
        TASKS.pop("boxed-phrases")


def test_a_fine_tuned_model_is_probed_and_errors_say_what_to_pass(world_and_model, tmp_path, capsys):
    """A `vb-train finetune --out` folder probes as it is (its encoder, the task head set aside, the tokenizer it
    was fine-tuned with); --task all's folder is answered with the per-task folders to pass."""
    from safetensors.torch import load_file

    from vb_probe.cli import main as probe_main

    world, model = world_and_model
    out = tmp_path / "ft"
    assert train_main(["finetune", "--task", "all", "--data", str(world), "--init", str(model), "--out", str(out),
                       "--steps", "2", "--batch-size", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert train_main(["evaluate", "--ckpt", str(out), "--data", str(world)]) == 2
    err = capsys.readouterr().err
    assert "holds the fine-tuned models of flickr30k, nlvr2, vcr, vqa (from --task all); pass one of them" in err
    probe = ["entity-grounding", "--ckpt", str(out / "vqa"), "--flickr30k", str(world / "flickr30k"), "--features",
             str(world / "features.tsv"), "--limit", "3", "--quiet", "--out", str(tmp_path / "eg")]
    assert probe_main(probe) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned for vqa: its encoder is probed" in printed and "bert-base-uncased" not in printed
    run = json.loads((tmp_path / "eg" / "run.json").read_text())
    assert run["checkpoint"]["weights"] == "model.pt" and run["n_scored"] > 0
    saved = torch.load(out / "vqa" / "model.pt", weights_only=True)["model"]
    pretrained = load_file(str(model / "model.safetensors"))
    changed = [k for k, v in saved.items() if k.startswith("visual_bert.") and not torch.equal(v, pretrained[k])]
    assert changed
    import vb_probe

    loaded = vb_probe.load_model(out / "vqa").state_dict()  # the fine-tuned encoder, not the pre-trained one
    assert all(torch.equal(loaded[k[len("visual_bert."):]], saved[k]) for k in changed)
    assert probe_main(["figures", "--results", str(tmp_path / "eg"), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "fig3_entity_grounding.png").is_file()
