"""The main job end to end at toy size (a tiny model, a few steps), the notebooks headless on its
results, and the attribution and causal commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from vb_probe.cli import main as cli_main

TINY = ["model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=4",
        "model.intermediate_size=64", "train.steps=4", "train.batch_size=8", "train.eval_every=2",
        "train.save_every=2", "train.eval_batches=1"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    args = ["demo", "--out", str(out), "--scenes", "30", "--quiet"]
    for item in TINY:
        args += ["--set", item]
    assert cli_main(["--debug", *args]) == 0
    return out


def test_demo_writes_every_artifact_and_reuses_the_model(demo, capsys, monkeypatch):
    for name in ("entity_grounding/entity_grounding.csv", "entity_grounding/run.json", "syntactic/syntactic.csv",
                 "syntactic/run.json", "figures/fig3_entity_grounding.png", "figures/fig4_syntactic.png",
                 "attribution/attribution_heads.csv", "attribution/attribution.json", "causal.json", "report.md",
                 "explorer/index.html"):
        assert (demo / name).is_file(), name
    assert list((demo / "figures").glob("fig1_attention_*.png")) and list((demo / "figures").glob("fig5_attention_*.png"))
    run = json.loads((demo / "entity_grounding" / "run.json").read_text())
    assert run["n_phrases"] == run["n_scored"] + sum(run["skipped"].values())
    assert run["selected_head"]["selected_on"] == "val" and run["control_random_init"] is not None
    report = (demo / "report.md").read_text()
    assert "highest detector confidence" in report and "random-initialised" in report
    assert "explorer/index.html" in report
    assert "Integrated gradients" in report and "best grounding heads lowers masked entity-word accuracy" in report
    assert set(json.loads((demo / "syntactic" / "run.json").read_text())["relations"]) == {"nsubj", "dobj", "pobj", "amod"}
    with open(demo / "syntactic" / "syntactic.csv") as handle:  # every head with its 95% interval
        rows = list(csv.DictReader(handle))
    assert {"ci95_low", "ci95_high"} <= set(rows[0])
    assert all(float(r["ci95_low"]) <= float(r["accuracy"]) <= float(r["ci95_high"]) for r in rows)
    assert "Head chosen on val, scored on test" in report and "head chosen on val: test accuracy (95% interval)" in report
    models = list((demo / "models").iterdir())
    capsys.readouterr()
    from vb_probe.data import features, flickr30k

    opened = {"annotations": 0, "features": 0}  # each reader is opened once for the whole run

    def counted(cls, kind):
        real = cls.__init__

        def init(self, *args, **kwargs):
            opened[kind] += 1
            real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "__init__", init)
    counted(flickr30k.Flickr30kEntities, "annotations")
    counted(features.TsvFeatures, "features")
    args = ["demo", "--out", str(demo), "--scenes", "30"] + sum((["--set", s] for s in TINY), [])
    assert cli_main(args + ["--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "reusing" in printed and "world: reusing" in printed
    assert list((demo / "models").iterdir()) == models
    assert opened == {"annotations": 1, "features": 1}


@pytest.mark.parametrize("notebook", sorted(p.name for p in (ROOT / "analysis_notebooks").glob("*.ipynb")))
def test_notebooks_run_headless_and_show_figures(demo, tmp_path, notebook, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("VB_PROBE_RESULTS", str(demo))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend shows figures as images
    nb = nbformat.read(ROOT / "analysis_notebooks" / notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # saved without outputs
    assert any(cell.cell_type == "markdown" and "How to read" in cell.source for cell in nb.cells)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert images, f"{notebook} showed no figure"
    if notebook == "entity_grounding.ipynb":  # the in-memory edit changed that head and no other
        printed = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                          for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        assert "heads that changed: ['L1H" in printed and "', 'L" not in printed.split("heads that changed:")[1]


def test_attribution_and_causal_commands(demo, tmp_path, capsys):
    model = next((demo / "models").iterdir()) / "final"
    common = ["--ckpt", str(model), "--flickr30k", str(demo / "world" / "flickr30k"),
              "--features", str(demo / "world" / "features.tsv"), "--limit", "2"]
    assert cli_main(["attribute", *common, "--steps", "16", "--out", str(tmp_path / "a")]) == 0
    summary = json.loads((tmp_path / "a" / "attribution.json").read_text())
    assert summary["n"] == len(summary["per_phrase"]) > 0
    hits = [p["top_region_hits_gold"] for p in summary["per_phrase"]]
    assert summary["ig_top_region_grounding_accuracy"] == pytest.approx(sum(hits) / len(hits))
    assert summary["ig_completeness_error_max"] < 0.05  # the attributions add up to F(x) − F(0)
    assert 0 < summary["mean_image_share_of_attribution"] < 1
    assert cli_main(["causal", *common, "--scores", str(demo / "entity_grounding" / "entity_grounding.csv"),
                     "-k", "2", "--out", str(tmp_path / "c")]) == 0
    causal = json.loads((tmp_path / "c" / "causal.json").read_text())
    assert causal["k"] == 2 and len(causal["heads_ablated"]) == 2 and len(causal["random_draws"]) == 20
    assert causal["drop_top_k_ci95"][0] <= causal["drop_top_k"] <= causal["drop_top_k_ci95"][1]
    assert 1 / 21 <= causal["p_value"] <= 1 and isinstance(causal["distinguishable"], bool) and causal["verdict"]
    # against references made another way: transformers' own model for the intact accuracy, and the heads
    # removed by weight surgery (their columns of the attention output projection zeroed) for the ablation
    import torch
    from transformers import VisualBertForPreTraining

    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.families.visualbert.checkpoints import load_pretraining_model
    from vb_probe.families.visualbert.interventions import _batch, masked_phrases, masked_word_accuracy
    from vb_probe.tokenization import load_tokenizer

    tokenizer = load_tokenizer(model)
    items = masked_phrases(Flickr30kEntities(demo / "world" / "flickr30k"), open_features(demo / "world" / "features.tsv"),
                           tokenizer, "test", 2)
    theirs = VisualBertForPreTraining.from_pretrained(model).eval()
    right = 0
    with torch.no_grad():
        for item in items:
            inputs, query, _ = _batch([item], tokenizer.pad_token_id, 1, "cpu")
            logits = theirs(**inputs).prediction_logits[0, int(query[0])]
            right += int(logits.argmax()) == item.target
    assert causal["accuracy_intact"] == pytest.approx(right / len(items))
    surgery = load_pretraining_model(model)
    width = surgery.config.hidden_size // surgery.config.num_attention_heads
    with torch.no_grad():
        for label in causal["heads_ablated"]:
            layer, head = (int(v) for v in label[1:].split("H"))
            surgery.visual_bert.encoder.layer[layer].attention.output.dense.weight[:, head * width:(head + 1) * width] = 0
    assert causal["accuracy_top_k_ablated"] == pytest.approx(masked_word_accuracy(surgery, items, tokenizer.pad_token_id))
    capsys.readouterr()
    # a probe checkpoint without a masked-LM head is refused with a one-line reason
    from vb_probe.families.visualbert.checkpoints import load_model, save_model
    save_model(load_model(model), tmp_path / "encoder_only")
    code = cli_main(["attribute", *common[:1], str(tmp_path / "encoder_only"), *common[2:], "--out", str(tmp_path / "b")])
    assert code == 2 and "no masked-LM head" in capsys.readouterr().err
