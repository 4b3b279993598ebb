"""The demo's run: build the world → pre-train the demo model (cached by config hash) → entity and syntactic
grounding on held-out images in one pass (heads chosen on val, scored on test; a random-initialised control) →
Figures 1/3/4/5, the explorer → ``report.md`` (written by :mod:`.report`). The one place that joins the two halves
(training is imported lazily); every probe goes through the API verbs, as the CLI's do."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vb_probe.atomic import atomic_files, check_outputs, check_replaceable
from vb_probe.demo.report import patch_report, report
from vb_probe.results import GroundingResult, SyntacticResult

DEMO_RELATIONS = ("nsubj", "dobj", "pobj", "amod")


def run_demo(out: Path, *, scenes: int = 1000, seed: int = 0, config_path: str | Path | None = None,
             overrides: list[str] | None = None, progress: bool = True, log=print, family: str = "visualbert") -> dict:
    """The demo for ``family``: ``visualbert`` (regions, the paper's model) or ``vilt`` (image patches, the
    pointing rule; a small ViLT pre-trained on the world's images). Runs on its config's ``train.threads`` torch
    threads from start to end (its numbers depend on the count), the caller's count given back after."""
    from training.config import load_config
    from vb_probe.devices import torch_threads

    config = load_config(config_path or (family if family in ("vilt", "llava") else "demo"), overrides)
    if config.model.family != family:
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"--config {config_path}: trains a {config.model.family} model, but --family is {family}; "
                           "pass a config of that family (model.family)")
    with torch_threads(config.train.threads):
        return _run(Path(out), config, scenes, seed, progress, log, family)


def _run(out: Path, config, scenes: int, seed: int, progress: bool, log, family: str) -> dict:
    from training.loop import pretrain
    from training.world import build_world
    from vb_probe.api import open_session
    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities

    started = time.time()
    world = out / "world"
    reuse_world = _world_matches(world, scenes, seed)
    check_demo_folder(out, reuse_world)
    out.mkdir(parents=True, exist_ok=True)
    if reuse_world:
        log(f"[1/4] world: reusing {world}")
    else:
        log(f"[1/4] world: generating {scenes} scenes into {world}")
        stats = build_world(world, images=scenes, seed=seed, progress=progress)
        for line in stats.lines():
            log("      " + line)

    # the cache key covers the training config and the world it trains on
    import hashlib

    key = hashlib.sha256(f"{config.digest()}:{scenes}:{seed}".encode()).hexdigest()[:12]
    model_dir = out / "models" / key
    final = model_dir / "final"
    if final.is_dir():
        log(f"[2/4] model: reusing {final} (config and world {key})")
    else:
        from training.loop import latest_checkpoint

        done = latest_checkpoint(model_dir) if model_dir.is_dir() else None
        shape = ((config.llava.text_layers, config.llava.text_heads, config.llava.text_hidden) if family == "llava"
                 else (config.model.num_hidden_layers, config.model.num_attention_heads, config.model.hidden_size))
        steps = ("stages lm, clip, align, caption" if family == "llava" else f"{config.train.steps} steps")
        log(f"[2/4] model: pre-training {shape[0]}×{shape[1]} heads, hidden {shape[2]}, {steps} (cached as {key}), "
            f"{config.train.threads or 'default'} torch threads (fixed: the numbers depend on it); "
            + (f"going on from its checkpoint of step {done['step']}" if done is not None else
               f"a checkpoint every {config.train.save_every_s:.0f} s, from which an interrupted demo goes on"))
        pretrain(config, world, model_dir, resume=True, progress=progress)
    history = _read_log(model_dir / "log.csv")
    if family == "vilt":
        return _patch_demo(out, world, final, config, history, key, started, progress, log)
    if family == "llava":
        return _llava_demo(out, world, final, config, history, key, started, progress, log)

    log("[3/4] probing held-out images: entity grounding + syntactic grounding in one pass "
        "(heads chosen on val, scored on test; random-init control)")
    dataset, store = Flickr30kEntities(world / "flickr30k"), open_features(world / "features.tsv")  # opened once
    entity, syntactic = _probe_world(out, world, final, dataset, store, progress, log)
    session = open_session(final, None, dataset, store)
    model, tokenizer, dataset, features = session.model, session.tokenizer, session.dataset, session.store

    log("[4/4] figures and report")
    from vb_probe.data.parses import read_conllu
    from vb_probe.explorer import explorer_data, write_explorer
    from vb_probe.figures import write_figures

    examples = [name for name in write_figures(entity, syntactic, model, tokenizer, dataset, features,
                                               out / "figures", world / "images")
                if name.startswith(("fig1", "fig5"))]
    write_explorer(explorer_data(model, tokenizer, dataset, features, split="test", limit=20, scores=entity,
                                 parses=read_conllu(world / "parses.conllu"), images_dir=world / "images",
                                 progress=progress),
                   out / "explorer")
    log(f"      the interactive explorer: {out / 'explorer' / 'index.html'}")
    log("      attribution (integrated gradients) and the causal check on the first test images")
    extras = _attribution_and_causal(final, dataset, features, out, entity.shape, log, progress=progress)
    log("      the same model on the world's RefCOCO and Visual Genome layouts")
    extras["other_sets"] = _other_sets(world, model, tokenizer, features, progress, log)
    text = report(entity, syntactic, history, config, time.time() - started, examples, key, extras)
    with atomic_files(out) as staged:
        staged.text("report.md", text)
    log(f"report: {out / 'report.md'}")
    return {"entity": entity, "syntactic": syntactic, "report": out / "report.md"}


def _probe_world(out: Path, world: Path, final: Path, dataset, store, progress: bool, log
                 ) -> tuple[GroundingResult, SyntacticResult]:
    """Step 3 for either family: entity and syntactic grounding of the test split in one pass (heads chosen on
    val, the random-init control) through the API's one door, saved and summarised: the checkpoint ``final`` on the
    world's Flickr30K layout (``dataset``) with its features or images (``store``), each opened once."""
    from vb_probe.api import grounding_probes
    from vb_probe.families import family_of
    from vb_probe.hub import folder_config
    from vb_probe.tables import format_entity_summary, format_syntactic_summary

    entity, syntactic = grounding_probes(final, None, dataset, store,
                                         split="test", select_on="val", control=True, relations=DEMO_RELATIONS,
                                         parses=world / "parses.conllu", batch_size=32, out=out / "syntactic",
                                         progress=progress)
    entity.save(out / "entity_grounding")
    syntactic.save(out / "syntactic")
    log(format_entity_summary(entity, family_of(folder_config(final)).summary_lines(entity)))
    log(format_syntactic_summary(syntactic))
    return entity, syntactic


def _patch_demo(out: Path, world: Path, final: Path, config, history: list[dict], key: str, started: float,
                progress: bool, log) -> dict:
    """Steps 3 and 4 for a model that reads pixels (ViLT): the same probes on the world's images, scored by the
    pointing rule, with the IoU rule, the permuted-geometry control and the random-init control beside them."""
    from vb_probe.api import open_session
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.data.images import ImageFolder
    from vb_probe.data.parses import read_conllu
    from vb_probe.explorer import explorer_data, write_explorer

    log("[3/4] probing held-out images (patches, pointing rule): entity grounding + syntactic grounding in one pass "
        "(heads chosen on val, scored on test; random-init and permuted-geometry controls)")
    dataset, store = Flickr30kEntities(world / "flickr30k"), ImageFolder(world / "images")  # opened once
    entity, syntactic = _probe_world(out, world, final, dataset, store, progress, log)
    session = open_session(final, None, dataset, store)
    log("[4/4] explorer and report")
    write_explorer(explorer_data(session.model, session.tokenizer, session.dataset, session.store, split="test",
                                 limit=20, scores=entity, parses=read_conllu(world / "parses.conllu"),
                                 images_dir=world / "images", progress=progress), out / "explorer")
    text = patch_report(entity, syntactic, history, config, time.time() - started, key)
    with atomic_files(out) as staged:
        staged.text("report.md", text)
    log(f"report: {out / 'report.md'}")
    return {"entity": entity, "syntactic": syntactic, "report": out / "report.md"}


def _llava_demo(out: Path, world: Path, final: Path, config, history: list[dict], key: str, started: float,
                progress: bool, log) -> dict:
    """Steps 3 and 4 for the LLaVA grown on the world: entity grounding on Flickr30K's layout by the pointing rule
    (heads chosen on val, scored on test; the random-init and permuted-geometry controls; the fixed-position
    baseline, Kang et al.'s heads scored against gold, the sink audit), the world's RefCOCO layout, the grounding
    harness's boxes on RefCOCO, Figures 1/3/5, the explorer with the boxes, and ``report.md`` with the verdicts."""
    from vb_probe.api import entity_grounding, ground, open_session
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.data.images import ImageFolder
    from vb_probe.data.refcoco import RefCoco
    from vb_probe.demo.report import llava_report
    from vb_probe.explorer import explorer_data, write_explorer
    from vb_probe.families import family_of
    from vb_probe.figures import write_figures
    from vb_probe.hub import folder_config
    from vb_probe.tables import format_entity_summary

    log("[3/4] probing held-out images (image tokens, pointing rule): heads chosen on val, scored on test; "
        "random-init and permuted-geometry controls, Kang et al.'s selection, the sink audit")
    dataset, store = Flickr30kEntities(world / "flickr30k"), ImageFolder(world / "images")
    entity = entity_grounding(final, None, dataset, store, split="test", select_on="val", control=True, sinks=True,
                              batch_size=32, progress=progress)
    entity.save(out / "entity_grounding")
    log(format_entity_summary(entity, family_of(folder_config(final)).summary_lines(entity)))
    refcoco = RefCoco(world / "refcoco")
    other = {}
    for split in (s for s in ("testA", "testB") if s in refcoco.split_of.values()):
        other[f"refcoco {split}"] = entity_grounding(final, None, refcoco, store, split=split, select_on="val",
                                                     progress=progress)
        log("      RefCOCO " + format_entity_summary(other[f"refcoco {split}"]).splitlines()[0])
    log("      boxes from heads on RefCOCO val (heads chosen on train; every readout)")
    boxes = ground(final, None, refcoco, store, split="val", localization_prompts=300, sinks=True, progress=progress)
    boxes.save(out / "ground")
    session = open_session(final, None, dataset, store)
    log("[4/4] figures, explorer and report")
    examples = [name for name in write_figures(entity, None, session.model, session.tokenizer, dataset, store,
                                               out / "figures", world / "images")
                if name.startswith(("fig1", "fig5"))]
    write_explorer(explorer_data(session.model, session.tokenizer, refcoco, store, split="val", limit=20,
                                 images_dir=world / "images", progress=progress,
                                 ground=boxes.rows), out / "explorer")
    text = llava_report(entity, other, boxes, history, config, time.time() - started, key, examples)
    with atomic_files(out) as staged:
        staged.text("report.md", text)
    log(f"report: {out / 'report.md'}")
    return {"entity": entity, "ground": boxes, "other": other, "report": out / "report.md"}


def _world_matches(world: Path, images: int, seed: int) -> bool:
    """The world already in ``world`` is the one asked for, with every layout this version writes (so it is
    reused, not rebuilt)."""
    try:
        meta = json.loads((world / "world.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    layouts = all((world / name).is_dir() for name in ("flickr30k", "refcoco", "visual_genome"))
    return isinstance(meta, dict) and meta.get("images") == images and meta.get("seed") == seed and layouts


def _other_sets(world: Path, model, tokenizer, features, progress: bool, log) -> dict:
    """Entity grounding on the world's RefCOCO layout (testA and testB, the query word each expression's head, the
    head chosen on val) and relation grounding on its Visual Genome relationships (test, chosen on val)."""
    from vb_probe.api import entity_grounding, syntactic_grounding
    from vb_probe.data.refcoco import RefCoco
    from vb_probe.tables import format_entity_summary

    refcoco = RefCoco(world / "refcoco")
    out = {}
    for split in (s for s in ("testA", "testB") if s in refcoco.split_of.values()):  # a tiny world: one half
        out[f"refcoco {split}"] = entity_grounding(model, tokenizer, refcoco, features, split=split, select_on="val",
                                                   progress=progress)  # the query word: RefCOCO's own, the head
        log("      RefCOCO " + format_entity_summary(out[f"refcoco {split}"]).splitlines()[0])
    out["visual_genome relations"] = syntactic_grounding(model, tokenizer, world / "visual_genome", features,
                                                         split="test", select_on="val", relations=("all",),
                                                         progress=progress)
    return out


def check_demo_folder(out: Path, reuse_world: bool) -> None:
    """Before any work: every file and folder the demo writes under ``out`` is absent or vb-probe's own, unchanged,
    and of its kind (the world, the pre-training runs, the result folders); a user's file is never replaced."""
    from vb_probe.progress import check_progress_files
    from vb_probe.queries import parses_copy_name
    from vb_probe.results import AttributionResult

    check_outputs(out, ["report.md", "causal.json"])
    if not reuse_world:
        check_replaceable(out / "world", "--out's world/", kind="world")
    check_outputs(out / "entity_grounding", GroundingResult.FILES, what="--out's entity_grounding/")
    check_outputs(out / "ground", ("ground.csv", "ground.png", "run.json"), what="--out's ground/")
    check_outputs(out / "syntactic", (*SyntacticResult.FILES, parses_copy_name("test")), what="--out's syntactic/")
    check_progress_files(out / "syntactic", resume=False)
    check_outputs(out / "figures", None, what="--out's figures/")
    check_outputs(out / "explorer", ["index.html"], what="--out's explorer/")
    check_outputs(out / "attribution", AttributionResult.FILES, what="--out's attribution/")
    models = out / "models"
    if models.is_dir():
        from training.loop import claim_run_folder

        for run in sorted(p for p in models.iterdir() if p.is_dir()):
            claim_run_folder(run, resume=True)  # each is a pre-training run (resumed when interrupted)


def _attribution_and_causal(final: Path, dataset, features, out: Path, shape: tuple[int, int], log, images: int = 3,
                            ig_steps: int = 16, progress: bool = True) -> dict:
    """Integrated gradients on a few test images' masked phrases, and the top-12 vs random-12 head ablation."""
    from vb_probe.api import attribute, causal_check, load_masked_lm, load_tokenizer
    from vb_probe.families import family_of

    model = load_masked_lm(final)
    tokenizer = load_tokenizer(model=family_of(model).load(model))
    result = attribute(model, tokenizer, dataset, features, split="test", limit=images, steps=ig_steps,
                       progress=progress)
    result.save(out / "attribution")
    causal = causal_check(model, tokenizer, dataset, features, out / "entity_grounding",
                          k=min(12, shape[0] * shape[1] // 2), split="test", limit=None, progress=progress)
    causal.save(out)
    log(f"      IG top region hits gold {result['ig_top_region_grounding_accuracy']:.3f} ({result['n']} phrases); "
        f"ablating the top-{causal['k']} grounding heads drops masked entity-word accuracy {causal['drop_top_k']:.3f} "
        f"vs {causal['drop_random_k']:.3f} for {causal['k']} random heads; {causal['verdict']}")
    return {"attribution": result, "causal": causal}


def _read_log(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))
