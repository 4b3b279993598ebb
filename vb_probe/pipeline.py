"""The probe engine: collect queries → batch → attention rows → score. One forward pass serves every probe.

:func:`run_probes` is the single entry point behind the API verbs (``vb_probe.entity_grounding``, …), which the
CLI and the demo call; it returns :class:`ProbeResults` (counts per group, and the family's tally per pass), which
:func:`grounding_result` and :func:`syntactic_result` turn into the typed results. Groups: ``entity`` for phrases,
``<relation>/<direction>`` for dependency arcs. The engine knows no model and no dataset: everything
model-specific is asked of the model's family (:mod:`vb_probe.families`), everything format-specific of the
annotation set's reader (:mod:`vb_probe.data.annotations`); the configuration is checked in
:mod:`vb_probe.probe_config`, progress files are :mod:`vb_probe.progress`'s, the parse choice :mod:`vb_probe.queries`'.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vb_probe.atomic import file_sha256
from vb_probe.batching import check_finite_rows, prefetched, to_device
from vb_probe.data.annotations import GroundingSet
from vb_probe.data.features import RegionFeatures
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.devices import resolve_device
from vb_probe.errors import DataError, VbProbeError, say
from vb_probe.families import Family, family_of, family_rule, open_inputs, reads_pixels
from vb_probe.families.base import Tally, model_type_of
from vb_probe.hub import resolve, weights_file
from vb_probe.metrics.grounding import HeadCounts, baseline_scores, chosen_hits, head_choices
from vb_probe.probe_config import MaskMode, Precision, ProbeConfig, config_dict
from vb_probe.progress import (
    SAVE_EVERY,
    PassProgress,
    check_progress_files,
    fold,
    progress_path,
    rank_progress_path,
    remove_own_progress,
)
from vb_probe.queries import DIRECTIONS, ENTITY, PROTOCOL_CHOICES, ProbeItem, collect_items, pass_parses
from vb_probe.records import QueryRecords, maps_arrays
from vb_probe.results import GroundingResult, HeadScores, SyntacticResult, selected_head, versions
from vb_probe.results.records import records_frame

__all__ = ["ProbeConfig", "ProbeResults", "run_probes", "probe_pass", "grounding_result", "syntactic_result",
           "preflight", "DIRECTIONS", "ENTITY", "PROTOCOL_CHOICES", "resolve_device"]

# the protocol's statement of the query token where the entity query word is the phrase's head
QUERY_TOKEN_HEAD = "last sub-word of the phrase's head word (the word whose parse head lies outside the phrase)"


@dataclass
class SplitResult:
    """Counts of one pass over one split with one model, and what was tallied beside them (key → tally: the
    family's own measure, the per-query records)."""

    counts: dict[str, HeadCounts]
    skipped: dict[str, Counter]  # group family ("entity" / relation/direction) → reason → count
    n_units: dict[str, int]  # "phrases" / "arcs" → how many were considered
    n_images: int = 0
    n_captions: int = 0
    tallies: dict[str, Tally] = field(default_factory=dict)
    skipped_units: list[list] = field(default_factory=list)  # the per-query records of units skipped when collected


@dataclass
class ProbeResults:
    config: ProbeConfig
    main: SplitResult
    select: SplitResult | None = None
    control: SplitResult | None = None
    checkpoint: dict = field(default_factory=dict)
    parser: str | None = None
    facts: dict = field(default_factory=dict)  # the family's facts of its inputs (e.g. visual_token_type)
    family: str = ""
    rule: str = "iou"  # the family's scoring rule
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    relations_in_parses: set[str] = field(default_factory=set)  # every relation the split's parses hold


# ----------------------------------------------------------------------------------------------- one batch

def score_batch(family: Family, model, batch, counts: dict[str, HeadCounts], mask: MaskMode = "posthoc",
                precision: Precision = "fp32", source: str = "the features", tallies: dict | None = None) -> None:
    """One forward over a collated batch (on the model's device); every head's pick for every query added to
    ``counts`` (group → :class:`HeadCounts`) under the family's rule, with the baselines through the same rule;
    the same picks under the other rule and against permuted geometry kept as the counts' alternatives; and the
    batch handed to each of the ``tallies`` (the family's own measure, the per-query records)."""
    if not len(batch.groups):
        return
    site = family.sites(model)[0]
    with ExitStack() as watched:  # tallies that read hidden states hook the forward (and unhook after)
        for tally in (tallies or {}).values():
            watched.enter_context(tally.watching(model, batch))
        region_rows = family.rows(model, batch, site, mask, precision)  # [layer, n, head, R]
    check_finite_rows(region_rows, batch, source)
    mass = region_rows.sum(-1)  # [layer, n, head]
    choice = head_choices(region_rows, batch.region_valid)  # [layer, n, head]: one argmax for every rule
    rule = family_rule(family)
    hits = batch.targets[rule]  # the grid: the family's own rule
    scored = {"main": (hits, baseline_scores(hits, batch.region_valid, batch.confidences))}
    for other, targets in batch.targets.items():
        if other != rule:
            scored[other] = (targets, baseline_scores(targets, batch.region_valid, batch.confidences))
    if batch.permutation is not None:
        scored["permuted"] = (hits.gather(-1, batch.permutation), {})
    groups = np.array(batch.groups)
    for group in dict.fromkeys(batch.groups):
        sel = torch.from_numpy(np.flatnonzero(groups == group))
        group_counts = counts.setdefault(group, HeadCounts(site.layers, site.heads))
        for name, (targets, base) in scored.items():
            correct = chosen_hits(choice[:, sel], targets[sel])
            picked = {k: v[sel] for k, v in base.items()}
            if name == "main":
                group_counts.add(correct, mass[:, sel], picked)
            else:
                group_counts.add_alternative(name, correct, picked)
    for tally in (tallies or {}).values():
        tally.add(batch, region_rows, mass, choice, hits)


# ----------------------------------------------------------------------------------------------- one pass

def _batches(items: list[ProbeItem], batch_size: int) -> Iterator[list[ProbeItem]]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


@torch.no_grad()
def probe_pass(
    model,
    tokenizer,
    items: list[ProbeItem],
    *,
    batch_size: int,
    facts: dict,
    max_text_len: int,
    mask: MaskMode = "posthoc",
    precision: Precision = "fp32",
    device: torch.device | str = "cpu",
    progress: bool = True,
    description: str = "probing",
    state_path: Path | None = None,
    resume: bool = False,
    save_every: int = SAVE_EVERY,
    fingerprint: dict | None = None,
    features: RegionFeatures | None = None,
    tallies: dict | None = None,
) -> PassProgress:
    """Score every query of ``items``: the counts per group, the queries skipped when their batch was built
    (``truncated``, ``outside_view``) per group, and the ``tallies`` (fresh ones: key → tally). Only the probed
    attention rows are computed and reduced per batch. ``facts``: what the model's family prepared for its inputs.

    Batches are read from ``features`` (the image store) and collated in a background thread while the model runs on
    the batch before (in order, so results do not depend on timing); on CUDA they travel through pinned memory.

    With ``state_path``, the progress is saved atomically every ``save_every`` batches; ``resume`` continues from
    there without counting anything twice, and only when the saved run's ``fingerprint`` (everything that changes
    the counts) equals this one's. Under ``torchrun`` the batches are dealt among the processes
    (:mod:`vb_probe.distributed`); every process returns the same counts, folded in batch order as one process folds
    them.
    """
    from tqdm.auto import tqdm

    from vb_probe.distributed import gather, world

    device = torch.device(device)
    where = world(device.type)
    run = {**(fingerprint or {}), "n_items": len(items), "batch_size": batch_size, "precision": precision}
    sharded = where.size > 1
    if sharded:
        run["processes"] = where.size
        state_path = None if state_path is None else rank_progress_path(state_path, where.rank)
    tallies = dict(tallies or {})
    pristine = {key: tally.empty() for key, tally in tallies.items()}  # what the fold of several processes starts from
    state = PassProgress(tallies=tallies)
    if resume and state_path is not None and state_path.is_file():
        state = PassProgress.load(state_path, run, tallies)
    model.eval()  # attention dropout would distort the weights being read
    family = family_of(model)
    mine = [(number, chunk) for number, chunk in enumerate(_batches(items, batch_size)) if where.mine(number)]
    bar = tqdm(total=len(mine), initial=state.done, desc=description, unit="batch",
               disable=not progress or not where.main, leave=False)
    collated = prefetched((lambda chunk=chunk: family.collate(model, chunk, tokenizer, facts, max_text_len, features))
                          for _, chunk in mine[state.done:])
    for finished, (cpu_batch, (number, _)) in enumerate(zip(collated, mine[state.done:]), start=state.done + 1):
        batch = to_device(cpu_batch, device, pin=device.type == "cuda")
        for reason, queries in (("truncated", batch.truncated), ("outside_view", batch.outside_view)):
            for query in queries:
                state.late_skips.setdefault(query.group, Counter())[reason] += 1
        batch_counts: dict[str, HeadCounts] = {}
        batch_tallies = {key: tally.empty() for key, tally in state.tallies.items()}
        score_batch(family, model, batch, batch_counts, mask, precision,
                    source=features.source if features is not None else "", tallies=batch_tallies)
        if sharded:
            state.deltas.append((number, {"counts": {g: c.to_state() for g, c in batch_counts.items()},
                                          "tallies": {key: t.state() for key, t in batch_tallies.items()}}))
        for group, delta in batch_counts.items():
            state.counts.setdefault(group, HeadCounts(delta.layers, delta.heads)).merge(delta)
        for key, tally in batch_tallies.items():
            state.tallies[key].merge(tally)
        state.done = finished
        bar.update(1)
        if state_path is not None and finished % save_every == 0:
            state.save(state_path, run, sharded)
    bar.close()
    if sharded:
        shards = gather((state.deltas, {g: dict(c) for g, c in state.late_skips.items()}), where)
        return fold(shards, pristine)
    for tally in state.tallies.values():
        tally.finish()
    return state


# ----------------------------------------------------------------------------------------------- before the work

def probe_image_ids(cfg: ProbeConfig, dataset: GroundingSet) -> dict[str, list[str]]:
    """The images each split of the run reads: the probed split and the selection split, each cut to ``limit``."""
    splits = dict.fromkeys([cfg.split] + ([cfg.select_on] if cfg.select_on else []))
    return {split: dataset.split(split)[: cfg.limit] if cfg.limit is not None else dataset.split(split)
            for split in splits}


def check_images(family: Family, model, dataset: GroundingSet, store, image_ids: list[str]) -> None:
    """Before any forward: every image a pixel family reads has its annotation's size (upright), and, with a
    ``model``, its processor can take each size and the sequences it makes fit the model (one line naming the
    image, or a note on their length). ``store``: an :class:`~vb_probe.data.images.ImageFolder`."""
    from vb_probe.data.images import check_sizes

    annotated = {}
    for image_id in dict.fromkeys(image_ids):
        if image_id in store:
            annotation = dataset.annotation(image_id)
            if annotation.width > 0 and annotation.height > 0:
                annotated[image_id] = (annotation.width, annotation.height)
    check_sizes(store, annotated)
    if model is None:
        return
    first_of: dict[tuple[int, int], str] = {}
    for image_id in annotated:
        first_of.setdefault(store.size(image_id), image_id)
    for size, image_id in first_of.items():
        problem = family.image_size_problem(model, *size)
        if problem:
            raise DataError(f"{store.path(image_id)}: {size[0]} × {size[1]} pixels: {problem}")
    note = family.sequence_note(model, list(first_of))
    if note and note not in model.load_notes:
        model.load_notes.append(note)


def open_probe_data(cfg: ProbeConfig, family: Family, dataset: GroundingSet | None = None,
                    store=None) -> tuple[GroundingSet, object, ProbeConfig]:
    """The annotation set and the image store (region features, or the images for a pixel family) of a run, given
    or opened from ``cfg``, the config with the set's own default split filled in, and the split lists read: every
    refusal here comes before a model loads or a forward runs."""
    dataset = open_grounding_set(dataset if dataset is not None else cfg.annotations, cfg.dataset_format,
                                 split_by=cfg.split_by, relations=bool(cfg.relations))
    if cfg.split is None:
        cfg = replace(cfg, split=dataset.default_split)
    if store is None:
        store = open_inputs(family, cfg.features, cfg.images, cfg.confidence)
    store.add_names(dataset.image_files())  # COCO's own file names (COCO_train2014_….jpg)
    probe_image_ids(cfg, dataset)  # a split the set lacks: said now
    return dataset, store, cfg


def preflight(cfg: ProbeConfig) -> None:
    """The checks that need no weights, run before a checkpoint loads (a 7B model takes minutes): the options, the
    annotation set and its splits, and a pixel family's images against their annotations' sizes."""
    from vb_probe.hub import folder_config

    cfg.check()
    if cfg.ckpt is None or cfg.annotations is None:
        return
    folder = resolve(cfg.ckpt, "--ckpt")
    config = folder_config(folder)
    family = family_of(config, str(folder / "config.json"))
    problem = family.prompt_problem(model_type_of(config) or family.model_type, cfg.prompt)
    if problem:
        raise VbProbeError(f"--prompt: {problem}")
    dataset, store, cfg = open_probe_data(cfg, family)
    if reads_pixels(family):
        check_images(family, None, dataset, store, [i for ids in probe_image_ids(cfg, dataset).values() for i in ids])


def checkpoint_info(ckpt: Path | str | None, model=None) -> dict:
    """Provenance of the weights: the file's hash when they were read from a checkpoint here, else what is known
    of the in-memory model (it may have been edited, so no file hash stands for it)."""
    if ckpt is None:
        loaded_from = model.checkpoint_path
        return {"source": "in-memory model", "loaded_from": str(loaded_from) if loaded_from else None,
                "sha256": None}
    folder = resolve(ckpt, "--ckpt")
    weights = weights_file(folder)
    info = {"path": str(folder.resolve()), "weights": weights.name, "sha256": file_sha256(weights)}
    if weights.name.endswith(".index.json"):
        from vb_probe.hub import shard_sha256

        info["shards"] = shard_sha256(weights)
    if str(ckpt) != str(folder):
        info["hub_id"] = str(ckpt)
    return info


def items_digest(items: list[ProbeItem]) -> str:
    """A digest of what was read from the annotations for ``items``: captions, images, queries and gold boxes."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps([item.key, item.words, item.image_id]).encode())
        for query in item.queries:
            digest.update(f"{query.group}|{query.word_index}|{query.unit}".encode())
            if query.gold is not None:
                digest.update(np.ascontiguousarray(query.gold, dtype=np.float32).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- the run

def run_probes(cfg: ProbeConfig, model, tokenizer, *, out: Path | None = None, progress: bool = True,
               resume: bool = False, dataset: GroundingSet | None = None, store=None,
               tallies: dict[str, Tally] | None = None) -> ProbeResults:
    """Run the probes ``cfg`` asks for (entity grounding and/or syntactic) in one pass per split and model.

    ``model`` and ``tokenizer`` as :mod:`vb_probe.api` loads them; ``dataset`` (a reader) and ``store`` (region
    features, or the images for a pixel family) may be given as objects, else they are opened from ``cfg``.
    ``out``: where progress is kept for ``resume`` (and a copy of spaCy's parses); the results themselves are
    written by :mod:`vb_probe.results`. ``tallies``: fresh tallies of a caller's own (key → tally) that the probed
    split's pass feeds beside the family's (the grounding harness's boxes).
    """
    started = time.time()
    cfg.check()
    device = resolve_device(cfg.device)
    family = family_of(model)
    dataset, store, cfg = open_probe_data(cfg, family, dataset, store)
    query_word = cfg.query_word or dataset.query_word
    family.use_prompt(model, cfg.prompt)  # before any image is read: the prompt's prefix holds the image
    family.use_view(model, cfg.view)
    if cfg.sinks and family.sink_tally(model, cfg.sink_dims) is None:
        raise VbProbeError(f"--sinks: a {family.name} model's image tokens are not in a residual stream vb-probe can "
                           "read (decoder VLMs with the image in the prompt have one); leave --sinks out")
    if cfg.query_row is not None and cfg.query_row not in family.query_rows:
        raise VbProbeError(f"--query-row {cfg.query_row}: a {family.name} model is probed on the entity's word; "
                           "leave --query-row out")
    notes_before = len(model.load_notes)
    if reads_pixels(family):
        check_images(family, model, dataset, store, [i for ids in probe_image_ids(cfg, dataset).values() for i in ids])
    facts = family.prepare(model, store, config_dict(cfg))  # the model's checks, before any work
    for note in model.load_notes[notes_before:]:  # what the checks decided: said now, not only in run.json
        say(note)
    checkpoint = checkpoint_info(cfg.ckpt, model)
    if out is not None:
        from vb_probe.distributed import world

        check_progress_files(out, resume, world(device.type).size)
    relations_seen: set[str] = set()
    parser_used: list[str] = []
    head_parsers: list[str] = []  # where the entities' head words came from

    def one_split(split: str, run_model, label: str, pass_name: str) -> SplitResult:
        image_ids = probe_image_ids(cfg, dataset)[split]
        parses = pass_parses(cfg, dataset, image_ids, query_word, split, out if split == cfg.split else None)
        if parses.arcs is not None:
            parser_used.append(parses.arcs_source)
            if split == cfg.split:
                keys = {c.key for i in image_ids for c in dataset.captions(i)}
                relations_seen.update(r for k, p in parses.arcs.items() if k in keys for _, _, r in p.arcs())
        items, seen = collect_items(dataset, store, image_ids, entity=cfg.entity, relations=cfg.relations,
                                    parses=parses.arcs, parse_source=parses.arcs_source,
                                    skip_unannotated=cfg.skip_unannotated,
                                    skip_missing_features=cfg.skip_missing_features, heads=parses.heads,
                                    heads_source=parses.heads_source, keep_units=cfg.per_query and pass_name == "main")
        if parses.heads is not None:
            head_parsers.append(parses.heads_source)
        # resumed counts must come from the same data: keyed on content (of the images this pass reads)
        fingerprint = {**config_dict(cfg), "pass": pass_name, "pass_split": split, "model": checkpoint,
                       "features": store.content_key(image_ids) if out is not None else None,
                       "items": items_digest(items)}
        state = probe_pass(run_model, tokenizer, items, batch_size=cfg.batch_size, facts=facts,
                           max_text_len=min(cfg.max_text_len, family.text_limit(model)), mask=cfg.mask,
                           precision=cfg.precision, device=device, progress=progress, description=label,
                           state_path=progress_path(out, pass_name) if out is not None else None, resume=resume,
                           fingerprint=fingerprint, features=store,
                           tallies={**pass_tallies(family, model, cfg, pass_name),
                                    **(tallies or {} if pass_name == "main" else {})})
        for group, reasons in state.late_skips.items():
            seen.skipped.setdefault(group, Counter()).update(reasons)
        return SplitResult(state.counts, seen.skipped, dict(seen.n_units), len(image_ids), seen.n_captions,
                           state.tallies, seen.skipped_units)

    main = one_split(cfg.split, model, f"probing {cfg.split}", "main")
    select = one_split(cfg.select_on, model, f"selecting on {cfg.select_on}", "select") if cfg.select_on else None
    control = None
    if cfg.control:
        control = one_split(cfg.split, family.twin(model, cfg.seed), "random-init control", "control")
    facts = {**facts, "dataset": dataset.name, "query_word": query_word, "token_kind": family.token_kind,
             **({"head_word_parser": head_parsers[0]} if head_parsers else {})}
    results = ProbeResults(config=cfg, main=main, select=select, control=control, checkpoint=checkpoint,
                           parser=parser_used[0] if parser_used else None, facts=facts, family=family.name,
                           rule=family_rule(family), wall_time_s=time.time() - started, notes=list(model.load_notes),
                           relations_in_parses=relations_seen)
    if out is not None:
        from vb_probe.distributed import world

        where = world(device.type)
        remove_own_progress(out, where.rank if where.size > 1 else None)
    return results


def pass_tallies(family: Family, model, cfg: ProbeConfig, pass_name: str) -> dict[str, Tally]:
    """What a pass tallies beside its counts: the family's own measure (when it brings one), and on the probed
    split, with ``per_query``, the per-query records (:mod:`vb_probe.records`)."""
    tallies = {}
    own = family.tally(model, config_dict(cfg), pass_name)
    if own is not None:
        tallies[own.key] = own
    if cfg.per_query and pass_name == "main":
        tallies[QueryRecords.key] = QueryRecords(cfg.save_maps)
    if cfg.sinks:
        sinks = family.sink_tally(model, cfg.sink_dims)
        tallies[sinks.key] = sinks
    return tallies


# ----------------------------------------------------------------------------------------------- typed results

def grounding_result(results: ProbeResults) -> GroundingResult:
    """The entity-grounding result of a :class:`ProbeResults`."""
    main, cfg = results.main, results.config
    counts = main.counts.get(ENTITY)
    skipped = dict(sorted(main.skipped.get(ENTITY, {}).items()))
    n_phrases = main.n_units.get("phrases", 0)
    if counts is None or counts.n == 0:
        raise VbProbeError(f"no phrase of split {cfg.split!r} could be scored ({n_phrases} phrases, "
                           f"skipped: {skipped or 'none'}); check the split, the annotations and the features")
    assert n_phrases == counts.n + sum(skipped.values()), "every phrase is scored or skipped"
    scores = HeadScores.from_counts(counts)
    select = results.select.counts.get(ENTITY) if results.select else None
    control = results.control.counts.get(ENTITY) if results.control else None
    extras = {}
    for key, tally in main.tallies.items():
        if key != QueryRecords.key:  # the per-query records are a table of their own, not a block of run.json
            select_tally = results.select.tallies.get(key) if results.select else None
            extras[key] = tally.report(counts, select_tally, cfg.split, cfg.select_on)
    return GroundingResult(
        scores.n_correct, scores.n, scores.region_mass, scores.baselines, split=cfg.split,
        n_phrases=n_phrases, skipped={k: int(v) for k, v in skipped.items()},
        selected_head=selected_head(scores, HeadScores.from_counts(select) if select else None, cfg.select_on),
        control=_control_scores(control), provenance=provenance(results),
        other_rule=_other_rule_scores(counts, results.rule),
        permuted=_control_scores(counts.alternatives.get("permuted")), extras=extras,
        **_records(results, {ENTITY}))


def _records(results: ProbeResults, groups: set[str] | None) -> dict:
    """The per-query table and the maps of a run that kept them (``per_query``), for these ``groups``."""
    if not results.config.per_query:
        return {}
    records = results.main.tallies.get(QueryRecords.key)
    return {"queries": records_frame(records, results.main.skipped_units, groups), "maps": maps_arrays(records, groups)}


def syntactic_result(results: ProbeResults) -> SyntacticResult:
    """The syntactic-grounding result of a :class:`ProbeResults` (one per relation/direction)."""
    main, cfg = results.main, results.config
    present = sorted({g.split("/")[0] for g in list(main.counts) + list(main.skipped) if g != ENTITY})
    wanted = present if "all" in cfg.relations else list(cfg.relations)
    unknown = [r for r in wanted if r not in present]
    if unknown:
        available = sorted(results.relations_in_parses) or present
        raise VbProbeError(f"relation {', '.join(unknown)} does not occur in the parses of split {cfg.split!r}; "
                           f"relations present: {', '.join(available) or 'none'}")
    scores, selected, control, skipped = {}, {}, {}, {}
    for relation in wanted:
        for direction in DIRECTIONS:
            group, key = f"{relation}/{direction}", (relation, direction)
            skipped[group] = {k: int(v) for k, v in sorted(main.skipped.get(group, {}).items())}
            if group not in main.counts:
                continue
            scores[key] = HeadScores.from_counts(main.counts[group], with_mass=False)
            select = results.select.counts.get(group) if results.select else None
            chosen = selected_head(scores[key], HeadScores.from_counts(select) if select else None, cfg.select_on)
            if chosen is not None:
                selected[key] = chosen
            if results.control is not None and group in results.control.counts:
                control[key] = _control_scores(results.control.counts[group])
    arcs = {f"{relation}/{direction}" for relation in wanted for direction in DIRECTIONS}
    return SyntacticResult(wanted, scores, skipped, cfg.split, main.n_units.get("arcs", 0), results.parser,
                           selected, control, provenance(results), **_records(results, arcs))


def _other_rule_scores(counts: HeadCounts, rule: str) -> HeadScores | None:
    """The same picks under the rule that is not the grid's, with that rule's own baselines."""
    other = counts.alternatives.get("pointing" if rule == "iou" else "iou")
    return None if other is None else HeadScores.from_counts(other, with_mass=False)


def _control_scores(counts: HeadCounts | None) -> HeadScores | None:
    """The random-init control as run.json keeps it: correct counts only (its baselines are the main run's)."""
    return None if counts is None else HeadScores(counts.n_correct.numpy().astype(np.int64), counts.n)


def provenance(results: ProbeResults) -> dict:
    """How the numbers were made: what run.json records beside them."""
    cfg = results.config
    protocol = dict(PROTOCOL_CHOICES)
    if results.facts.get("query_word") == "head":
        protocol["query_token"] = QUERY_TOKEN_HEAD
    return {"n_images": results.main.n_images, "n_captions": results.main.n_captions,
            "checkpoint": results.checkpoint, "mask": cfg.mask, "precision": cfg.precision,
            **results.facts, "family": results.family, "rule": results.rule, "protocol": protocol,
            "versions": versions(), "wall_time_s": round(results.wall_time_s, 2), "notes": results.notes,
            "config": config_dict(cfg)}
