"""The LLaVA grown on the built-in world (``vb-train pretrain --config llava``, ``vb-probe demo --family llava``) at
toy size: the four stages through the CLI, each cached by what it depends on (a changed caption stage reuses the
three before it); the report's verdicts computed from the numbers; the demo's numbers the same on a rerun."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.cli import main as train_main
from vb_probe.cli import main as probe_main

TOY = ["llava.image_size=56", "llava.vision_hidden=32", "llava.vision_layers=1", "llava.text_hidden=32",
       "llava.text_layers=3", "llava.batch_size=8", "llava.lm_steps=3", "llava.clip_steps=3", "llava.align_steps=2",
       "llava.caption_steps=3", "train.save_every_s=0"]


def _sets(values: list[str]) -> list[str]:
    return sum((["--set", v] for v in values), [])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from training.world import build_world

    root = tmp_path_factory.mktemp("llava_world")
    build_world(root / "world", images=30, seed=3, progress=False, hdf5=False)
    return root / "world"


def test_the_recipe_runs_through_the_cli_and_a_changed_stage_reuses_the_ones_before(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["pretrain", "--config", "llava", "--data", str(world), "--out", str(out), "--quiet",
                       *_sets(TOY)]) == 0
    stages = sorted(p.name for p in (out / "stages").iterdir())
    assert [s.split("-")[0] for s in stages] == ["align", "caption", "clip", "lm"]
    weights = {s: (out / "stages" / s / "weights.pt").stat().st_mtime_ns for s in stages}
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out / "final")  # transformers' own class loads it
    assert model.config.vision_config.image_size == 56 and model.config.text_config.num_hidden_layers == 3
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "stage,step,loss" and {r.split(",")[0] for r in rows[1:]} == {"lm", "clip", "align", "caption"}
    capsys.readouterr()
    assert train_main(["pretrain", "--config", "llava", "--data", str(world), "--out", str(out), "--quiet", "--resume",
                       *_sets([*TOY, "llava.caption_steps=4"])]) == 0
    shown = capsys.readouterr().out
    assert shown.count("reusing") == 3 and "stage caption: captioning, 4 steps" in shown
    after = sorted(p.name for p in (out / "stages").iterdir())
    assert len(after) == 5 and all((out / "stages" / s / "weights.pt").stat().st_mtime_ns == weights[s] for s in stages)
    # a changed CLIP retrains everything that builds on it, and only that
    keys = __import__("training.llava", fromlist=["stage_keys"]).stage_keys
    from training.config import load_config

    base, clip = keys(load_config("llava", TOY)), keys(load_config("llava", [*TOY, "llava.clip_steps=4"]))
    assert base["lm"] == clip["lm"] and all(base[s] != clip[s] for s in ("clip", "align", "caption"))


def test_an_interrupted_stage_goes_on_from_its_saved_state(world, tmp_path):
    """A stage saves its state as it goes (here every step); stopped in the caption stage, a rerun continues from
    the saved step and ends with the weights an uninterrupted run has."""
    import torch

    from training import llava
    from training.config import load_config

    config = load_config("llava", [*TOY, "llava.caption_steps=4"])
    config = replace(config, train=replace(config.train, save_every_s=1e-9))
    whole = llava.pretrain_llava(config, world, tmp_path / "whole", progress=False, log=lambda *_: None)
    real = llava.run_stage
    calls = []

    def stopping(name, folder, model, trained, steps, lr, loss_of, *rest):
        def loss(step):
            calls.append((name, step))
            if name == "caption" and step == 2 and len([c for c in calls if c == ("caption", 2)]) == 1:
                raise KeyboardInterrupt
            return loss_of(step)
        return real(name, folder, model, trained, steps, lr, loss, *rest)

    llava.run_stage = stopping
    try:
        with pytest.raises(KeyboardInterrupt):
            llava.pretrain_llava(config, world, tmp_path / "cut", progress=False, log=lambda *_: None)
        llava.pretrain_llava(config, world, tmp_path / "cut", progress=False, log=lambda *_: None)
    finally:
        llava.run_stage = real
    caption_steps = [step for name, step in calls if name == "caption"]
    assert caption_steps == [0, 1, 2, 2, 3]  # steps 0 and 1 not run again
    a = torch.load(tmp_path / "whole" / "stages" / f"caption-{whole['keys']['caption']}" / "weights.pt")["model"]
    b = torch.load(tmp_path / "cut" / "stages" / f"caption-{whole['keys']['caption']}" / "weights.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _result(selected_acc: float, n: int, control_acc: float, permuted_acc: float, kang_rank: int = 1,
            kang_acc: float | None = None):
    """A GroundingResult of 2 × 2 heads whose val-chosen head L1H0 scores ``selected_acc`` on ``n`` phrases, the
    controls' best heads the given accuracies, Kang et al.'s top head L1H0 at ``kang_rank``."""
    from vb_probe.metrics.intervals import wilson_interval
    from vb_probe.results import GroundingResult
    from vb_probe.results.scores import HeadScores, selected_head

    def scores(best: float) -> HeadScores:
        correct = np.array([[0, 0], [round(best * n), 0]])
        return HeadScores(correct, n, np.zeros((2, 2)), {"random": 0.1})

    main = scores(selected_acc)
    kang_acc = selected_acc if kang_acc is None else kang_acc
    low, high = wilson_interval(round(kang_acc * n), n)
    extras = {"localization": {"unsupervised_selection": {"heads": [
        {"layer": 1, "head": 0, "votes": 9, "accuracy": kang_acc, "ci95": [low, high], "gold_rank": kang_rank}]}}}
    return GroundingResult(main.n_correct, n, main.region_mass, main.baselines, split="test",
                           selected_head=selected_head(main, main, "val"), control=scores(control_acc),
                           permuted=scores(permuted_acc), extras=extras, provenance={"n_images": 10})


def test_the_verdicts_are_computed_from_the_numbers():
    """0.60 of 200 phrases has a 95% interval from 0.531: it clears controls at 0.30 and 0.40 (emerged) but not a
    control at 0.55 (did not). Kang et al.'s top head, rank 1 at 0.60, clears a control at 0.30 (found); at rank 7,
    or at 0.32 of 200 (interval from 0.258, under the control's 0.30), it did not find them."""
    from vb_probe.demo.report import emergence_verdict, selection_verdict

    emerged = _result(0.6, 200, 0.3, 0.4)
    assert emergence_verdict(emerged).startswith("grounding emerged: L1H0's interval (0.531 up)")
    assert emergence_verdict(_result(0.6, 200, 0.55, 0.4)).startswith("grounding did not emerge")
    assert "the random-init control's best head (0.550)" in emergence_verdict(_result(0.6, 200, 0.55, 0.4))
    assert selection_verdict(emerged).startswith("the selection without boxes found them: its most-voted head L1H0 "
                                                 "ranks 1")
    assert selection_verdict(_result(0.6, 200, 0.3, 0.4, kang_rank=7)).endswith("it ranks 7 by gold")
    missed = selection_verdict(_result(0.6, 200, 0.3, 0.4, kang_acc=0.32))
    assert missed.startswith("the selection without boxes did not find them") and "does not clear" in missed


def test_the_llava_demo_runs_end_to_end_and_its_numbers_repeat(tmp_path, capsys):
    args = ["demo", "--family", "llava", "--scenes", "30", "--quiet", *_sets(TOY)]
    assert probe_main(["--debug", *args, "--out", str(tmp_path / "a")]) == 0
    report = (tmp_path / "a" / "report.md").read_text()
    assert "**Verdict:" in report and "**Selection without boxes:" in report and "Boxes from heads" in report
    run = json.loads((tmp_path / "a" / "entity_grounding" / "run.json").read_text())
    assert run["rule"] == "pointing" and "sinks" in run and "localization" in run
    assert run["control_random_init"] is not None and run["control_permuted_geometry"] is not None
    assert (tmp_path / "a" / "ground" / "ground.csv").is_file() and (tmp_path / "a" / "explorer" / "index.html").is_file()
    assert any(p.name.startswith("fig1") for p in (tmp_path / "a" / "figures").iterdir())
    assert probe_main([*args, "--out", str(tmp_path / "b")]) == 0  # from scratch again: the same numbers
    for name in ("entity_grounding/entity_grounding.csv", "ground/ground.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()


def test_the_trainer_captions_on_the_token_sequence_the_probe_reads(world, tmp_path):
    """The captioning stages see the prompt and caption exactly as the probe tokenizes them from the model's own
    processor (the prompt expanded and tokenized as one string, no BOS), up to the caption's last token."""
    from PIL import Image

    from training.config import load_config
    from training.llava import captioning_batch, pretrain_llava, prompt_ids
    from vb_probe.families.decoder import DecoderFamily
    from vb_probe.queries import ProbeItem, Query

    done = pretrain_llava(load_config("llava", TOY), world, tmp_path / "run", progress=False, log=lambda *_: None)
    family = DecoderFamily()
    model = family.load(str(done["final"]))
    tokenizer = model.processor.tokenizer
    words = ("a", "red", "dog", "chases", "the", "ball")
    image = Image.open(next((world / "images").iterdir())).convert("RGB")
    item = ProbeItem("x_0", words, "x", [Query("entity", 5, np.array([[0, 0, 5, 5]], np.float32))])
    item.regions = family.image_tokens(model, type("One", (), {"image": lambda self, i: image})(), "x")
    probed = family.collate(model, [item], tokenizer, {}, 64).inputs["input_ids"][0].tolist()
    trained = captioning_batch(prompt_ids(model, tokenizer), tokenizer, [" ".join(words)],
                               torch.zeros(1, 3, 56, 56), 40)["input_ids"][0].tolist()
    assert trained[-1] == tokenizer.eos_token_id and tokenizer.bos_token_id not in trained
    assert probed[:len(trained) - 1] == trained[:-1]  # the probe's suffix follows the caption; training's </s>
