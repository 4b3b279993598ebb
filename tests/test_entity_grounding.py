"""Entity grounding: hand-built attention with known scores, an independent reference through
transformers' own model, batch-size invariance, and the CLI end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_checkpoint, write_dataset

from vb_probe.cli import main as cli_main
from vb_probe.metrics.boxes import iou, region_hits
from vb_probe.metrics.grounding import HeadCounts, baseline_scores, head_correct
from vb_probe.metrics.intervals import wilson_interval


def test_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]])
    np.testing.assert_allclose(iou(a, b), [[50 / 150, 1.0, 0.0, 0.5]])
    assert region_hits(b, a).tolist() == [False, True, False, True]  # 0.5 counts (≥)
    assert region_hits(b, np.zeros((0, 4))).tolist() == [False] * 4


def test_hand_built_heads_have_known_scores():
    # 3 queries, 4 region columns (the third query's image has 3 regions: column 3 is padding)
    hits = torch.tensor([[False, True, False, False],
                         [True, False, False, False],
                         [False, False, True, False]])
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, True, False]])
    rows = torch.zeros(1, 3, 4, 4)  # [layer, n, head, R]
    rows[0, :, 0] = hits.float() * 0.7 + 0.01  # head 0 always looks at a hit
    rows[0, :, 1] = (~hits).float() * 0.5  # head 1 always misses (ties among misses, all wrong)
    rows[0, :, 2] = 0.25  # head 2: all tied → lowest index (hits only query 1)
    rows[0, :, 3] = torch.tensor([0.0, 0.0, 0.0, 0.9])  # head 3: padding column holds the max
    correct = head_correct(rows, valid, hits)
    assert correct[0, :, 0].tolist() == [True, True, True]
    assert correct[0, :, 1].tolist() == [False, False, False]
    assert correct[0, :, 2].tolist() == [False, True, False]
    # query 2: the padding column never wins → ties among valid → region 0 (miss); queries 0/1: column 3 valid
    assert correct[0, :, 3].tolist() == [False, False, False]
    counts = HeadCounts(1, 4)
    conf = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.2, 0.1, 0.0, 0.0], [0.0, 0.1, 0.3, 5.0]])
    counts.add(correct, rows.sum(-1), baseline_scores(hits, valid, conf))
    assert counts.n_correct.tolist() == [[3, 0, 1, 0]]
    base = counts.baseline_accuracy()
    # highest confidence: q0 region1 hit, q1 region0 hit, q2 region2 (padding's 5.0 ignored) hit
    assert base["highest_confidence"] == pytest.approx(1.0)
    assert base["random"] == pytest.approx((1 / 4 + 1 / 4 + 1 / 3) / 3)
    assert base["oracle"] == pytest.approx(1.0)
    assert counts.best_head() == {"layer": 0, "head": 0, "accuracy": 1.0}
    again = HeadCounts.from_state(json.loads(json.dumps(counts.to_state())))
    assert again.n_correct.tolist() == counts.n_correct.tolist() and again.baselines == counts.baselines


def test_no_confidence_means_no_highest_confidence_baseline():
    counts = HeadCounts(1, 1)
    hits = torch.tensor([[True, False]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    counts.add(torch.ones(1, 1, 1, dtype=torch.bool), torch.ones(1, 1, 1), baseline_scores(hits, valid, None))
    assert counts.baseline_accuracy()["highest_confidence"] is None


def test_wilson_interval_by_hand():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eg")
    data = write_dataset(root)
    data["ckpt"] = write_checkpoint(root / "ckpt")
    return data


def reference_scores(data, split="test"):
    """Independent reference: transformers' own VisualBertModel, one caption at a time, full attention maps,
    python loops for IoU and argmax."""
    from transformers import BertTokenizerFast, VisualBertModel

    from vb_probe.data.flickr30k import Flickr30kEntities

    model = VisualBertModel.from_pretrained(data["ckpt"]).eval()
    tok = BertTokenizerFast.from_pretrained(str(data["ckpt"]))
    flickr = Flickr30kEntities(data["flickr"])
    L, H = model.config.num_hidden_layers, model.config.num_attention_heads
    correct = np.zeros((L, H), int)
    n = 0
    hc = rnd = orc = 0.0
    n_phrases = 0

    def box_iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    for image_id in flickr.split(split):
        ann = flickr.annotation(image_id)
        regions = data["regions"][image_id]
        for caption in flickr.captions(image_id):
            pieces = [tok.tokenize(w) for w in caption.words]
            ends = np.cumsum([len(p) for p in pieces])  # word i's last sub-word is at position ends[i]
            ids = tok.convert_tokens_to_ids(["[CLS]"] + [p for ps in pieces for p in ps] + ["[SEP]"])
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]), visual_embeds=torch.from_numpy(regions.features)[None],
                            output_attentions=True)
            T = len(ids)
            for phrase in caption.phrases:
                n_phrases += 1
                if phrase.entity_id not in ann.boxes:
                    continue
                gold = ann.boxes[phrase.entity_id]
                hit = [any(box_iou(r, g) >= 0.5 for g in gold) for r in regions.boxes]
                q = int(ends[phrase.last_word_index])
                n += 1
                for l in range(L):
                    for h in range(H):
                        row = out.attentions[l][0, h, q, T:].numpy()
                        correct[l, h] += hit[int(np.argmax(row))]
                hc += hit[int(np.argmax(regions.confidences))]
                rnd += sum(hit) / len(hit)
                orc += any(hit)
    return {"n_phrases": n_phrases, "n": n, "accuracy": correct / n,
            "highest_confidence": hc / n, "random": rnd / n, "oracle": orc / n}


def run_cli(args):
    return cli_main(["--debug"] + [str(a) for a in args])


def test_cli_matches_independent_reference_and_batch_size(world, tmp_path, capsys):
    ref = reference_scores(world)
    results = {}
    for batch_size in (1, 3, 64):
        out = tmp_path / f"bs{batch_size}"
        code = run_cli(["entity-grounding", "--ckpt", world["ckpt"], "--flickr30k", world["flickr"],
                        "--features", world["tsv"], "--batch-size", batch_size, "--out", out, "--quiet"])
        assert code == 0
        results[batch_size] = out
    run = json.loads((results[3] / "run.json").read_text())
    assert run["n_phrases"] == ref["n_phrases"] == 4 * 7  # 7 phrases a image, 4 test images
    assert run["n_scored"] == ref["n"] == 4 * 4  # 2 phrases with boxes in each of 2 captions
    assert run["skipped"] == {"nobox": 4, "notvisual": 4, "scene": 4}
    assert run["n_phrases"] == run["n_scored"] + sum(run["skipped"].values())
    for name in ("highest_confidence", "random", "oracle"):
        assert run["baselines"][name] == pytest.approx(ref[name], abs=1e-6)
    with open(results[3] / "entity_grounding.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:6] == ["layer", "head", "n", "n_correct", "accuracy", "region_mass"]
    assert len(rows) == ref["accuracy"].size
    for row in rows:
        assert float(row["accuracy"]) == pytest.approx(ref["accuracy"][int(row["layer"]), int(row["head"])], abs=1e-6)
    assert len(set(float(r["accuracy"]) for r in rows)) > 1  # the heads really differ
    best = run["best_head"]
    assert best["accuracy"] == pytest.approx(ref["accuracy"].max())
    assert len(run["per_layer_best"]) == 3
    assert run["checkpoint"]["sha256"] and run["mask"] == "posthoc" and run["visual_token_type"] == 1
    assert (results[3] / "entity_grounding.png").stat().st_size > 5000
    # results do not depend on the batch size: byte-identical tables
    csvs = {bs: (out / "entity_grounding.csv").read_bytes() for bs, out in results.items()}
    assert csvs[1] == csvs[3] == csvs[64]
    printed = capsys.readouterr().out
    assert "best head L" in printed and "highest-confidence" in printed


def test_hdf5_without_confidence_and_select_on_and_control(world, tmp_path):
    import h5py

    h5 = tmp_path / "noconf.h5"
    import shutil
    shutil.copy(world["h5"], h5)
    shutil.copy(world["h5"].with_name("features_imgid2idx.pkl"), tmp_path / "noconf_imgid2idx.pkl")
    with h5py.File(h5, "a") as f:
        del f["confidences"]
    out = tmp_path / "out"
    assert run_cli(["entity-grounding", "--ckpt", world["ckpt"], "--flickr30k", world["flickr"], "--features", h5,
                    "--select-on", "val", "--control", "--mask", "intervene", "--precision", "bf16",
                    "--out", out, "--quiet"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["baselines"]["highest_confidence"] is None
    assert run["mask"] == "intervene" and run["precision"] == "bf16"
    assert run["n_phrases"] == run["n_scored"] + sum(run["skipped"].values())
    with open(out / "entity_grounding.csv") as handle:
        rows = list(csv.DictReader(handle))
    # the selected head is the best head of a separate run on val, scored with this run's test numbers
    val = tmp_path / "val"
    assert run_cli(["entity-grounding", "--ckpt", world["ckpt"], "--flickr30k", world["flickr"], "--features", h5,
                    "--split", "val", "--mask", "intervene", "--precision", "bf16", "--out", val, "--quiet"]) == 0
    best_on_val = json.loads((val / "run.json").read_text())["best_head"]
    sel = run["selected_head"]
    assert (sel["selected_on"], sel["layer"], sel["head"]) == ("val", best_on_val["layer"], best_on_val["head"])
    assert sel["accuracy_on_selection_split"] == best_on_val["accuracy"]
    assert sel["accuracy"] == float(next(r["accuracy"] for r in rows if (int(r["layer"]), int(r["head"])) ==
                                         (sel["layer"], sel["head"])))
    # the control equals the same probe run on a random-initialised model of the same shape (seed 0), saved
    import torch

    from vb_probe.families.visualbert.checkpoints import load_model, save_model
    from vb_probe.families.visualbert.model import VisualBertModel

    config = load_model(world["ckpt"]).config
    torch.manual_seed(0)
    save_model(VisualBertModel(config), tmp_path / "random")
    shutil.copy(Path(world["ckpt"]) / "tokenizer.json", tmp_path / "random")
    control = tmp_path / "control"
    assert run_cli(["entity-grounding", "--ckpt", tmp_path / "random", "--flickr30k", world["flickr"], "--features", h5,
                    "--mask", "intervene", "--precision", "bf16", "--out", control, "--quiet"]) == 0
    def grid(folder):
        with open(folder / "entity_grounding.csv") as handle:
            table = list(csv.DictReader(handle))
        return [[int(r["n_correct"]) for r in table if int(r["layer"]) == l] for l in range(3)]
    # the whole count grid, not only its best head; and the checkpoint itself (sharpened queries) differs from the
    # seed-0 twin, so a "control" that probed the checkpoint again would fail here
    assert run["control_random_init"]["n_correct"] == grid(control)
    assert grid(control) != grid(out)
    assert run["control_random_init"]["best_head"] == json.loads((control / "run.json").read_text())["best_head"]
    # intervene: a text query sees regions only, so all its attention mass is on regions
    assert all(float(r["region_mass"]) == pytest.approx(1.0, abs=1e-5) for r in rows)


@pytest.mark.parametrize("case, message", [
    ("limit0", "argument --limit: 0 must be at least 1"),
    ("empty_split", "lists no images"),
    ("wrong_dim", "region features are 12-d but the checkpoint's visual_embedding_dim is 7"),
    ("missing_image", "image 502 is not in the features"),
    ("device", "no CUDA device is available"),
])
def test_bad_input_exits_2_with_one_line(world, tmp_path, capsys, case, message):
    import shutil

    flickr, features, ckpt, extra = world["flickr"], world["tsv"], world["ckpt"], []
    if case == "limit0":
        extra = ["--limit", "0"]
    elif case == "empty_split":
        flickr = tmp_path / "flickr"
        shutil.copytree(world["flickr"], flickr)
        (flickr / "test.txt").write_text("\n")
    elif case == "wrong_dim":
        ckpt = write_checkpoint(tmp_path / "ckpt7", dim=7)
    elif case == "missing_image":
        from vb_probe.data.features import write_tsv
        features = tmp_path / "some.tsv"
        write_tsv(features, [r for i, r in world["regions"].items() if i != "502"])
    elif case == "device":
        extra = ["--device", "cuda"]
    if case == "device" and torch.cuda.is_available():
        pytest.skip("a GPU is present here, so cuda is not an unavailable device")
    out = tmp_path / "out"
    capsys.readouterr()  # drop what building the fixture printed
    try:
        code = cli_main(["entity-grounding", "--ckpt", str(ckpt), "--flickr30k", str(flickr), "--features",
                         str(features), "--out", str(out), "--quiet", *extra])
    except SystemExit as stop:  # option errors are argparse's: exit 2 with one line
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (out / "run.json").exists() and not (out / "entity_grounding.csv").exists()


def test_integrated_gradients_by_hand():
    """As captum checks its own: on a linear model IG from zero is input × weight, and on F(x) = Σ x² it is x²
    (Gauss–Legendre integrates the quadratic path exactly); attributions add up to F(x) − F(0) (completeness)."""
    from vb_probe.families.visualbert.interventions import integrated_gradients

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 5, generator=g), torch.randn(1, 3, 2, generator=g)
    a, b = torch.randn(5, generator=g), torch.randn(3, 2, generator=g)
    (ax, ay), delta, change = integrated_gradients(lambda x, y: x @ a + (y * b).sum((1, 2)), (x, y), steps=4)
    torch.testing.assert_close(ax, x * a)
    torch.testing.assert_close(ay, y * b)
    assert change == pytest.approx(float(x @ a + (y * b).sum()), rel=1e-5) and abs(delta) < 1e-5
    (ax,), delta, change = integrated_gradients(lambda x: (x ** 2).sum(-1), (x,), steps=4)
    torch.testing.assert_close(ax, x ** 2)
    assert change == pytest.approx(float((x ** 2).sum()), rel=1e-5) and abs(delta) < 1e-5


def test_causal_summary_by_hand():
    """4 phrases: intact 3/4 right; the top-k ablation leaves 1/4 (drop 0.5); three random draws leave 3/4, 2/4,
    3/4 (drops 0, 0.25, 0): no draw drops as far, so p = 1/4; with every draw dropping as far, p = 1."""
    from vb_probe.metrics.causal import causal_summary

    intact = np.array([1, 1, 1, 0], bool)
    top = np.array([1, 0, 0, 0], bool)
    random = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 0]], bool)
    s = causal_summary(intact, top, random, bootstrap=2000, seed=1)
    assert (s["accuracy_intact"], s["accuracy_top_k_ablated"], s["drop_top_k"]) == (0.75, 0.25, 0.5)
    assert s["drop_random_k_draws"] == [0.0, 0.25, 0.0] and s["drop_random_k"] == pytest.approx(1 / 12)
    assert s["excess_drop"] == pytest.approx(0.5 - 1 / 12) and s["p_value"] == pytest.approx(1 / 4)
    low, high = s["drop_top_k_ci95"]
    assert 0.0 <= low < 0.5 < high <= 1.0  # per-phrase drops are 0, 1, 1, 0: a resampled mean lies in [0, 1]
    assert (low * 4) == round(low * 4) and (high * 4) == round(high * 4)  # and is a multiple of 1/4
    assert not s["distinguishable"] and "not distinguishable" in s["verdict"]  # p = 0.25 with only 3 draws
    same = causal_summary(intact, top, np.stack([top] * 19), bootstrap=200)
    assert same["p_value"] == 1.0 and same["excess_drop"] == 0.0 and not same["distinguishable"]
    strong = causal_summary(np.ones(200, bool), np.zeros(200, bool), np.ones((19, 200), bool), bootstrap=200)
    assert strong["p_value"] == pytest.approx(1 / 20) and strong["excess_drop_ci95"] == [1.0, 1.0]
    assert strong["distinguishable"] and strong["verdict"].startswith("ablating the top-k heads drops accuracy 1.000")


def test_prefetched_keeps_order_raises_in_turn_and_stops_early():
    import threading

    from vb_probe.batching import prefetched

    assert list(prefetched((lambda i=i: i * i) for i in range(20))) == [i * i for i in range(20)]

    def fail():
        raise KeyboardInterrupt

    seen = []
    with pytest.raises(KeyboardInterrupt):
        for value in prefetched([lambda: 1, lambda: 2, fail, lambda: 4]):
            seen.append(value)
    assert seen == [1, 2]  # the jobs before the failing one are all delivered first
    started = []
    gen = prefetched((lambda i=i: started.append(i) or i) for i in range(1000))
    assert next(gen) == 0
    gen.close()  # the consumer stops: the worker stops too, far short of the 1000 jobs
    assert len(started) < 10 and not any(t.name == "vb-probe-prefetch" for t in threading.enumerate())


def test_run_json_protocol_is_the_documented_one():
    from vb_probe.queries import PROTOCOL_CHOICES

    doc = (Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md").read_text()
    for key, statement in PROTOCOL_CHOICES.items():
        assert key == "document" or f"`{key}`: {statement}" in doc, key
    from vb_probe.pipeline import QUERY_TOKEN_HEAD

    assert QUERY_TOKEN_HEAD in " ".join(doc.split())  # a head-word run's statement, word for word
