"""The probe engine: collect queries → batch → attention rows → score. One forward pass serves every probe.

``run_probes`` is the single entry point behind ``vb-probe entity-grounding``, ``vb-probe syntactic`` and
the demo; it returns :class:`ProbeResults` (counts per group), which :func:`grounding_result` and
:func:`syntactic_result` turn into the typed results. Groups: ``entity`` for phrases,
``<relation>/<direction>`` for dependency arcs. The engine knows no model: everything model-specific is asked
of the model's family (:mod:`vb_probe.families`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vb_probe.atomic import atomic_files, file_sha256, remove_stale_temporaries, write_text
from vb_probe.batching import prefetched, to_device
from vb_probe.cache import user_cache_dir
from vb_probe.data.features import RegionFeatures, Regions
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.data.parses import Parse, SpacyParser, read_conllu, to_conllu
from vb_probe.devices import resolve_device
from vb_probe.errors import DataError, VbProbeError, say
from vb_probe.families import Family, family_of, family_rule, open_inputs, reads_pixels
from vb_probe.hub import resolve, weights_file
from vb_probe.metrics.grounding import HeadCounts, baseline_scores, chosen_hits, head_choices
from vb_probe.queries import DIRECTIONS, ENTITY, PROTOCOL_CHOICES, ProbeItem, Query, collect_items
from vb_probe.results import GroundingResult, HeadScores, SyntacticResult, _selected, versions

MaskMode = Literal["posthoc", "intervene"]
Precision = Literal["fp32", "bf16"]
__all__ = ["ProbeConfig", "ProbeResults", "run_probes", "probe_pass", "word_region_attention", "grounding_result",
           "syntactic_result", "DIRECTIONS", "ENTITY", "PROTOCOL_CHOICES", "resolve_device"]
@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe run depends on; recorded in run.json."""

    ckpt: Path | str | None = None  # a folder or hub id; None when the model is given in memory
    flickr30k: Path | None = None  # None when a Flickr30kEntities object is given
    features: Path | None = None  # None when a feature store is given
    images: Path | None = None  # an images folder, for families that read pixels (ViLT)
    split: str = "test"
    tokenizer: Path | None = None
    visual_token_type: int | None = None
    mask: MaskMode = "posthoc"
    # bf16: the forward under bf16 autocast (the probed rows themselves still in fp32); fast on GPUs, and
    # near-ties between regions may then break differently from fp32
    precision: Precision = "fp32"
    batch_size: int = 32
    device: str = "cpu"
    limit: int | None = None
    confidence: str | None = None
    skip_unannotated: bool = False
    skip_missing_features: bool = False
    max_text_len: int = 128
    select_on: str | None = None
    control: bool = False
    seed: int = 0
    entity: bool = True
    relations: tuple[str, ...] = ()
    parses: Path | None = None
    parser: Literal["spacy"] | None = None
    spacy_model: str | None = None
    parse_cache: Path | None = None
    # decoder families: how many entity queries of the probed split feed the unsupervised selection of localization
    # heads, and how the weights are spread over devices (accelerate's device_map, e.g. "auto")
    localization_prompts: int = 500
    device_map: str | None = None
    # the annotations' format (``flickr30k`` is the root of any of them): flickr30k, refcoco or visual_genome (None:
    # told by the files); RefCOCO's split_by (unc, umd, google; None: what the folder has); the entity query word:
    # "last" (the paper's, Flickr30K's default) or "head" (the phrase's head in its parse; RefCOCO's and Visual
    # Genome's default)
    dataset: str | None = None
    split_by: str | None = None
    query_word: Literal["last", "head"] | None = None


# options added after run.json's config was fixed: recorded only when they differ from these defaults
_LATER_OPTIONS = {"localization_prompts": 500, "device_map": None, "dataset": None, "split_by": None,
                  "query_word": None}


@dataclass
class SplitResult:
    """Counts of one pass over one split with one model."""

    counts: dict[str, HeadCounts]
    skipped: dict[str, Counter]  # group family ("entity" / relation/direction) → reason → count
    n_units: dict[str, int]  # "phrases" / "arcs" → how many were considered
    n_images: int = 0
    n_captions: int = 0


@dataclass
class ProbeResults:
    config: ProbeConfig
    main: SplitResult
    select: SplitResult | None = None
    control: SplitResult | None = None
    checkpoint: dict = field(default_factory=dict)
    parser: str | None = None
    parses_file: Path | None = None
    facts: dict = field(default_factory=dict)  # the family's facts of its inputs (e.g. visual_token_type)
    family: str = ""
    rule: str = "iou"  # the family's scoring rule
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    relations_in_parses: set[str] = field(default_factory=set)  # every relation the split's parses hold


def load_parses(cfg: ProbeConfig, flickr: Flickr30kEntities, image_ids: list[str], out: Path | None
                ) -> tuple[dict[str, Parse], str, Path | None]:
    """Parses of every caption: from --parses CoNLL-U, or spaCy (cached as CoNLL-U by caption-set hash)."""
    if cfg.parses is not None:
        return read_conllu(cfg.parses), f"conllu:{cfg.parses}", Path(cfg.parses)
    if cfg.parser != "spacy":
        raise VbProbeError("syntactic probing needs --parses FILE.conllu or --parser spacy")
    items = [(c.key, c.words) for i in image_ids for c in flickr.captions(i)]
    parser = SpacyParser(cfg.spacy_model)
    digest = hashlib.sha256(json.dumps([parser.version, items]).encode()).hexdigest()[:16]
    cache_root = cfg.parse_cache or user_cache_dir("parses")
    cached = Path(cache_root) / f"{digest}.conllu"
    if cached.is_file():
        parses = read_conllu(cached)
    else:
        parses_list = parser.parse(items)
        text = to_conllu(parses_list)
        try:
            remove_stale_temporaries(cached.parent)
            write_text(cached, text)
        except OSError:
            pass  # the cache is a convenience
        parses = {p.sent_id: p for p in parses_list}
    copy = None
    if out is not None:
        copy = out / parses_copy_name(cfg.split)
        with atomic_files(out) as staged:
            staged.text(copy.name, cached.read_text() if cached.is_file() else to_conllu(list(parses.values())))
    return parses, parser.version, copy


def parses_copy_name(split: str) -> str:
    """The copy of the spaCy parses a syntactic run keeps beside its results."""
    return f"parses.{split}.conllu"


# ----------------------------------------------------------------------------------------------- the pass

def check_finite_rows(region_rows: torch.Tensor, batch, source: str) -> None:
    """Non-finite attention is an error naming the image, never a pick (``argmax`` over NaN would still "choose"
    a region and every number downstream would look plausible). ``region_rows`` [layer, n, head, R]."""
    finite = torch.isfinite(region_rows)
    if bool(finite.all()):
        return
    bad_layer, query = (int(i) for i in (~finite).nonzero()[0][:2])
    row = int(batch.batch_index[query])
    image_id = batch.image_ids[row] if batch.image_ids else "?"
    largest = batch.feature_peak[row] if batch.feature_peak else 0.0
    cause = (f"its region features reach {largest:.3g}, beyond what the model's arithmetic holds; rescale or "
             "re-extract them" if largest > 1e4 or not math.isfinite(largest) else
             "the model's weights are not finite (a damaged or diverged checkpoint); use another checkpoint")
    raise DataError(f"{source}: image {image_id}: attention is not finite (NaN or infinite) from layer {bad_layer} "
                    f"on; {cause}")


def _batches(items: list[ProbeItem], batch_size: int) -> Iterator[list[ProbeItem]]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def score_batch(family: Family, model, batch, counts: dict[str, HeadCounts], mask: MaskMode = "posthoc",
                precision: Precision = "fp32", source: str = "the features", prompts: int = 0) -> None:
    """One forward over a collated batch (on the model's device); every head's pick for every query added to
    ``counts`` (group → :class:`HeadCounts`) under the family's rule, with the baselines through the same rule;
    the same picks under the other rule and against permuted geometry kept as the counts' alternatives. For a family
    that reports localization (decoders), also the picks per grid place and, for up to ``prompts`` entity queries,
    every head's image share and spatial entropy (:func:`add_localization`)."""
    if not len(batch.groups):
        return
    site = family.sites(model)[0]
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
        if family.localization and group == ENTITY:
            add_localization(group_counts, region_rows[:, sel], mass[:, sel], choice[:, sel], hits[sel],
                             batch.extras["grids"][batch.batch_index.cpu()][sel], prompts)


def add_localization(counts: HeadCounts, rows: torch.Tensor, mass: torch.Tensor, choice: torch.Tensor,
                     hits: torch.Tensor, grids: torch.Tensor, prompts: int) -> None:
    """A patch family's extras for one group's queries: picks and hits per place of the grid (the fixed-position
    baseline), and, for the first ``prompts`` queries, every head's image share and spatial entropy (the
    unsupervised selection). ``rows`` [layer, n, head, R], ``mass`` and ``choice`` [layer, n, head], ``hits`` [n, R],
    ``grids`` [n, 2]."""
    from vb_probe.metrics.localization import spatial_entropies
    from vb_probe.metrics.positions import BINS, cell_places, hits_per_place, picks_per_place

    places = cell_places(grids, rows.shape[-1])
    picks, place_hits = picks_per_place(choice.cpu(), places), hits_per_place(hits.cpu(), grids)
    counts.position_picks = picks if counts.position_picks is None else counts.position_picks + picks
    counts.position_hits = place_hits if counts.position_hits is None else counts.position_hits + place_hits
    assert counts.position_picks.shape == (BINS,)
    have = 0 if counts.prompt_share is None else counts.prompt_share.shape[0]
    take = max(0, min(prompts - have, rows.shape[1]))
    if not take:
        return
    layers, _, heads, _ = rows.shape
    entropy = torch.empty(take, layers, heads, dtype=torch.float32)
    for shape in {tuple(g) for g in grids[:take].tolist()}:
        which = torch.from_numpy(np.flatnonzero([tuple(g) == shape for g in grids[:take].tolist()]))
        cells = shape[0] * shape[1]
        maps = rows[:, which, :, :cells].permute(1, 0, 2, 3).reshape(-1, *shape)  # [m · layer · head, h, w]
        entropy[which] = spatial_entropies(maps).reshape(len(which), layers, heads).float()
    share = mass[:, :take].permute(1, 0, 2).float().cpu()
    counts.prompt_share = share if counts.prompt_share is None else torch.cat([counts.prompt_share, share])
    counts.prompt_entropy = entropy if counts.prompt_entropy is None else torch.cat([counts.prompt_entropy, entropy])


PASSES = ("main", "select", "control")  # one progress file each: .<pass>.progress.json in --out


def progress_path(out: Path, name: str) -> Path:
    return out / f".{name}.progress.json"


def rank_progress_path(path: Path, where) -> Path:
    """Under torchrun, each process's own progress file (``.main.rank1.progress.json``): its batches only."""
    return path.with_name(path.name.replace(".progress", f".rank{where.rank}.progress"))


def _is_progress_file(path: Path) -> bool:
    """A progress file of :func:`probe_pass` (its keys), not a user's file of the same name."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(state, dict) and {"run", "done", "counts", "truncated"} <= set(state)


def progress_files(out: Path) -> list[Path]:
    """Every file in ``out`` named as a run's progress file: one process's (``.main.progress.json``) or one of several
    processes' (``.main.rank1.progress.json``)."""
    import re

    pattern = re.compile(r"\.(%s)(\.rank\d+)?\.progress\.json" % "|".join(PASSES))
    return sorted(p for p in out.glob(".*.progress.json") if pattern.fullmatch(p.name))


def check_progress_files(out: Path, resume: bool, processes: int = 1) -> None:
    """Before a probe runs: a file named like a progress file (of one process or of several under torchrun) that
    vb-probe did not write is never overwritten or deleted (with ``--resume`` a damaged one is reported when it is
    read); and ``--resume`` with another number of processes than the interrupted run had is refused, naming it
    (its progress would be ignored)."""
    found = progress_files(out)
    for path in found:
        if not (resume or _is_progress_file(path)):
            raise VbProbeError(f"--out {out}: holds {path.name}, which is not vb-probe's progress file; move it "
                               "away or choose another --out (nothing was changed)")
    if not resume:
        return
    sharded = sorted({int(p.name.split(".rank")[1].split(".")[0]) for p in found if ".rank" in p.name})
    single = [p for p in found if ".rank" not in p.name]
    if processes == 1 and sharded and not single:
        raise VbProbeError(f"--out {out}: holds the progress of a run over {max(sharded) + 1} processes (torchrun); "
                           f"resume it with torchrun --nproc_per_node {max(sharded) + 1}, or run again without "
                           "--resume")
    if processes > 1 and single and not sharded:
        raise VbProbeError(f"--out {out}: holds the progress of a run in one process; resume it without torchrun, or "
                           "run again without --resume")


def _load_progress(path: Path, run: dict
                   ) -> tuple[int, dict[str, HeadCounts], dict[str, Counter], list[tuple[int, dict]]]:
    """Finished batches, counts, late skips (truncated, outside_view) and, for a process of several, the counts of
    each of its batches, saved by an interrupted :func:`probe_pass` of the same ``run``."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        saved_run, done = state["run"], int(state["done"])
        counts = {g: HeadCounts.from_state(s) for g, s in state["counts"].items()}
        late_skips = {str(group): Counter({str(k): int(v) for k, v in reasons.items()})
                      for group, reasons in state["truncated"].items()}
        deltas = [(int(number), {str(g): dict(sub) for g, sub in batch.items()})
                  for number, batch in state.get("deltas", [])]
        for _, batch in deltas:  # readable now, not when the shards are folded
            for sub in batch.values():
                HeadCounts.from_state(sub)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, RecursionError) as exc:
        raise VbProbeError(f"{path}: the saved progress is damaged ({type(exc).__name__}); run again without "
                           "--resume to start over") from None
    differs = sorted(k for k in set(run) | set(saved_run) if run.get(k) != saved_run.get(k))
    if differs:
        shown = ", ".join(f"{k} {saved_run.get(k)!r} → {run.get(k)!r}" for k in differs[:3])
        raise VbProbeError(f"{path}: saved progress is for another run ({shown}); resume with the same options, "
                           "or run again without --resume")
    return done, counts, late_skips, deltas


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
    save_every: int = 10,
    fingerprint: dict | None = None,
    features: RegionFeatures | None = None,
    prompts: int = 0,
) -> tuple[dict[str, HeadCounts], dict[str, Counter]]:
    """Score every query of ``items``: the counts per group, and per group the queries skipped when their batch was
    built (``truncated``, ``outside_view``). Only the probed attention rows are computed and reduced per batch.
    ``facts``: what the model's family prepared for its inputs (:meth:`Family.prepare`).

    Batches are read from ``features`` and collated in a background thread while the model runs on the batch
    before (in order, so results do not depend on timing); on CUDA they travel through pinned memory.

    With ``state_path``, counts and the number of finished batches are saved atomically every
    ``save_every`` batches; ``resume`` continues from there without counting anything twice, and only when
    the saved run's ``fingerprint`` (everything that changes the counts) equals this one's.

    Under ``torchrun`` the batches are dealt among the processes (:mod:`vb_probe.distributed`); every process
    returns the same counts, folded in batch order as one process folds them. ``prompts``: how many entity queries
    keep every head's image share and spatial entropy (families that report localization).
    """
    from tqdm.auto import tqdm

    from vb_probe.atomic import write_json
    from vb_probe.distributed import gather, world

    device = torch.device(device)
    where = world(device.type)
    counts: dict[str, HeadCounts] = {}
    late_skips: dict[str, Counter] = {}  # group → reason → count: skips found only when the batch is built
    done = 0
    run = {**(fingerprint or {}), "n_items": len(items), "batch_size": batch_size, "precision": precision}
    deltas: list[tuple[int, dict]] = []  # (batch number, its counts): merged in batch order across processes
    if where.size > 1:
        run["processes"] = where.size
        state_path = None if state_path is None else rank_progress_path(state_path, where)
    if resume and state_path is not None and state_path.is_file():
        done, counts, late_skips, deltas = _load_progress(state_path, run)
    model.eval()  # attention dropout would distort the weights being read
    family = family_of(model)
    mine = [(number, chunk) for number, chunk in enumerate(_batches(items, batch_size)) if where.mine(number)]
    bar = tqdm(total=len(mine), initial=done, desc=description, unit="batch", disable=not progress or not where.main,
               leave=False)
    collated = prefetched((lambda chunk=chunk: family.collate(model, chunk, tokenizer, facts, max_text_len, features))
                          for _, chunk in mine[done:])
    for finished, (cpu_batch, (number, _)) in enumerate(zip(collated, mine[done:]), start=done + 1):
        batch = to_device(cpu_batch, device, pin=device.type == "cuda")
        for reason, queries in (("truncated", batch.truncated), ("outside_view", batch.outside_view)):
            for query in queries:
                late_skips.setdefault(query.group, Counter())[reason] += 1
        batch_counts: dict[str, HeadCounts] = {}
        kept = counts.get(ENTITY).prompt_share if ENTITY in counts else None
        score_batch(family, model, batch, batch_counts, mask, precision,
                    source=features.source if features is not None else "",
                    prompts=prompts - (0 if kept is None else kept.shape[0]))
        if where.size > 1:
            deltas.append((number, {g: c.to_state() for g, c in batch_counts.items()}))
        for group, delta in batch_counts.items():
            counts.setdefault(group, HeadCounts(delta.layers, delta.heads)).merge(delta)
        bar.update(1)
        if state_path is not None and (finished % save_every == 0):
            write_json(state_path, {"run": run, "done": finished,
                                    "counts": {g: c.to_state() for g, c in counts.items()},
                                    "truncated": {g: dict(c) for g, c in late_skips.items()},
                                    **({"deltas": deltas} if where.size > 1 else {})})
    bar.close()
    if where.size > 1:
        counts, late_skips = _fold(gather((deltas, {g: dict(c) for g, c in late_skips.items()}), where), prompts)
    return counts, late_skips


def _fold(shards: list[tuple[list[tuple[int, dict]], dict]], prompts: int
          ) -> tuple[dict[str, HeadCounts], dict[str, Counter]]:
    """Every process's per-batch counts folded in batch order (as one process adds them), the prompts kept for
    localization cut to the first ``prompts`` as one process keeps them, and the late skips summed. (A process keeps
    a prefix of each batch's prompts until it holds ``prompts`` of its own, never fewer than the processes together
    need there, so the first ``prompts`` in batch order are one process's.)"""
    counts: dict[str, HeadCounts] = {}
    late_skips: dict[str, Counter] = {}
    ordered = sorted((number, state) for deltas, _ in shards for number, state in deltas)
    for _, state in ordered:
        for group, sub in state.items():
            delta = HeadCounts.from_state(sub)
            counts.setdefault(group, HeadCounts(delta.layers, delta.heads)).merge(delta)
    for total in counts.values():
        if total.prompt_share is not None:
            total.prompt_share, total.prompt_entropy = total.prompt_share[:prompts], total.prompt_entropy[:prompts]
    for _, skips in shards:
        for group, reasons in skips.items():
            late_skips.setdefault(group, Counter()).update(reasons)
    return counts, late_skips


# ----------------------------------------------------------------------------------------------- entry point

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


def probe_image_ids(cfg: ProbeConfig, dataset) -> dict[str, list[str]]:
    """The images each split of the run reads: the probed split and the selection split, each cut to ``limit``."""
    splits = dict.fromkeys([cfg.split] + ([cfg.select_on] if cfg.select_on else []))
    return {split: dataset.split(split)[: cfg.limit] if cfg.limit is not None else dataset.split(split)
            for split in splits}


def check_images(family: Family, model, dataset, store, image_ids: list[str]) -> None:
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


def preflight(cfg: ProbeConfig) -> None:
    """The checks that need no weights, run before a checkpoint loads (a 7B model takes minutes): the annotation
    set opens, its splits exist, and a pixel family's images are those the annotations were made on."""
    from vb_probe.hub import folder_config

    if cfg.ckpt is None or cfg.flickr30k is None:
        return
    folder = resolve(cfg.ckpt, "--ckpt")
    family = family_of(folder_config(folder), str(folder / "config.json"))
    dataset = open_grounding_set(cfg.flickr30k, cfg.dataset, split_by=cfg.split_by, relations=bool(cfg.relations))
    ids = probe_image_ids(cfg, dataset)
    if reads_pixels(family):
        store = open_inputs(family, cfg.features, cfg.images, cfg.confidence)
        if hasattr(store, "add_names") and hasattr(dataset, "image_files"):
            store.add_names(dataset.image_files())
        check_images(family, None, dataset, store, [i for split in ids.values() for i in split])


def run_probes(cfg: ProbeConfig, model, tokenizer, *, out: Path | None = None, progress: bool = True,
               resume: bool = False, flickr30k: Flickr30kEntities | None = None,
               features: RegionFeatures | None = None) -> ProbeResults:
    """Run the probes ``cfg`` asks for (entity grounding and/or syntactic) in one pass per split/model.

    ``model`` and ``tokenizer`` as :mod:`vb_probe.api` loads them; ``flickr30k`` and ``features`` may be given as
    objects (else opened from ``cfg.flickr30k`` / ``cfg.features``). ``out``: where progress is kept for
    ``resume`` (and a copy of the parses); the results themselves are written by :mod:`vb_probe.results`.
    """
    started = time.time()
    if cfg.batch_size < 1:
        raise VbProbeError(f"--batch-size {cfg.batch_size}: must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise VbProbeError(f"--limit {cfg.limit}: must be at least 1 image (leave it out to use the whole split)")
    if cfg.mask not in ("posthoc", "intervene"):
        raise VbProbeError(f"--mask {cfg.mask}: use posthoc or intervene")
    device = resolve_device(cfg.device)
    family = family_of(model)
    flickr = open_grounding_set(flickr30k if flickr30k is not None else cfg.flickr30k, cfg.dataset,
                                split_by=cfg.split_by, relations=bool(cfg.relations))
    query_word = cfg.query_word or getattr(flickr, "query_word", "last")
    if query_word not in ("last", "head"):
        raise VbProbeError(f"--query-word {query_word}: use last or head")
    if features is None:
        features = open_inputs(family, cfg.features, cfg.images, cfg.confidence)
    if hasattr(features, "add_names") and hasattr(flickr, "image_files"):
        features.add_names(flickr.image_files())  # COCO's own file names (COCO_train2014_….jpg)
    notes_before = len(model.load_notes)
    if reads_pixels(family):
        check_images(family, model, flickr, features, [i for ids in probe_image_ids(cfg, flickr).values()
                                                       for i in ids])
    facts = family.prepare(model, features, config_dict(cfg))  # the model's checks, before any work
    for note in model.load_notes[notes_before:]:  # what the checks decided: said now, not only in run.json
        say(note)
    checkpoint = checkpoint_info(cfg.ckpt, model)
    if out is not None:
        from vb_probe.distributed import world

        check_progress_files(out, resume, world(device.type).size)
    # resumed counts must come from the same data: keyed on content (of the images each pass reads), not on paths
    wants_parses = bool(cfg.relations)
    parser_used: dict[str, str] = {}
    relations_seen: set[str] = set()

    def one_split(split: str, run_model, label: str, state_name: str) -> SplitResult:
        image_ids = flickr.split(split)
        if cfg.limit is not None:
            image_ids = image_ids[: cfg.limit]
        parses, parse_source = None, ""
        own_arcs = hasattr(flickr, "parses") and cfg.parses is None  # Visual Genome's relations: no parser needed
        if wants_parses and own_arcs:
            parses, parse_source = flickr.parses(image_ids), f"{flickr.name}:relationships"
            parser_used["name"] = parse_source
            if split == cfg.split:
                relations_seen.update(r for p in parses.values() for _, _, r in p.arcs())
        elif wants_parses:
            parses, parse_source, _ = load_parses(cfg_for(split), flickr, image_ids, out if split == cfg.split else None)
            parser_used["name"] = parse_source
            if split == cfg.split:
                keys = {c.key for i in image_ids for c in flickr.captions(i)}
                relations_seen.update(r for k, p in parses.items() if k in keys for _, _, r in p.arcs())
        heads, heads_source = None, ""
        if cfg.entity and query_word == "head":  # the phrase's head word: from the parses (spaCy's by default)
            if parses is not None and not own_arcs:
                heads, heads_source = parses, parse_source
            else:
                from dataclasses import replace

                heads, heads_source, _ = load_parses(replace(cfg, split=split, parser=cfg.parser or "spacy"), flickr,
                                                     image_ids, None)
        items, seen = collect_items(flickr, features, image_ids, entity=cfg.entity, relations=cfg.relations,
                                    parses=parses, parse_source=parse_source, skip_unannotated=cfg.skip_unannotated,
                                    skip_missing_features=cfg.skip_missing_features, heads=heads,
                                    heads_source=heads_source)
        counts, late_skips = probe_pass(
            run_model, tokenizer, items, batch_size=cfg.batch_size, facts=facts,
            max_text_len=min(cfg.max_text_len, family.text_limit(model)), mask=cfg.mask,
            precision=cfg.precision, device=device, progress=progress, description=label,
            state_path=progress_path(out, state_name) if out is not None else None, resume=resume,
            fingerprint={**config_dict(cfg), "pass": state_name, "pass_split": split, "model": checkpoint,
                         "features": features.content_key(image_ids) if out is not None else None,
                         "items": items_digest(items)},
            features=features, prompts=cfg.localization_prompts if state_name == "main" else 0,
        )
        for group, reasons in late_skips.items():
            seen.skipped.setdefault(group, Counter()).update(reasons)
        return SplitResult(counts, seen.skipped, dict(seen.n_units), len(image_ids), seen.n_captions)

    def cfg_for(split: str) -> ProbeConfig:
        from dataclasses import replace

        return replace(cfg, split=split)

    main = one_split(cfg.split, model, f"probing {cfg.split}", "main")
    select = one_split(cfg.select_on, model, f"selecting on {cfg.select_on}", "select") if cfg.select_on else None
    control = None
    if cfg.control:
        control = one_split(cfg.split, family.twin(model, cfg.seed), "random-init control", "control")
    if query_word == "head" or getattr(flickr, "name", "flickr30k") != "flickr30k":
        facts = {**facts, "dataset": getattr(flickr, "name", "flickr30k"), "query_word": query_word}
    results = ProbeResults(
        config=cfg, main=main, select=select, control=control, checkpoint=checkpoint,
        parser=parser_used.get("name"), facts=facts, family=family.name, rule=family_rule(family),
        wall_time_s=time.time() - started,
        notes=list(model.load_notes), relations_in_parses=relations_seen,
    )
    if out is not None:
        from vb_probe.distributed import world

        where = world(device.type)
        for name in PASSES:  # only the progress files this run (this process) wrote
            path = progress_path(out, name)
            path = rank_progress_path(path, where) if where.size > 1 else path
            if _is_progress_file(path):
                path.unlink()
    return results


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


def config_dict(cfg: ProbeConfig) -> dict:
    return {k: (str(Path(v).resolve()) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(cfg).items() if k not in _LATER_OPTIONS or v != _LATER_OPTIONS[k]}


class SingleImage:
    """One image's regions as a feature store (what a family prepares for one caption's rows)."""

    def __init__(self, regions: Regions):
        self.regions = regions
        self.source = f"image {regions.image_id}"

    def __contains__(self, image_id: str) -> bool:
        return image_id == self.regions.image_id

    def __getitem__(self, image_id: str) -> Regions:
        return self.regions

    def ids(self) -> list[str]:
        return [self.regions.image_id]

    @property
    def dim(self) -> int:
        return int(self.regions.features.shape[1])


@torch.no_grad()
def word_region_attention(
    model, tokenizer, words: tuple[str, ...], regions: Regions, facts: dict | None = None, max_text_len: int = 128,
    mask: MaskMode = "posthoc",
) -> np.ndarray:
    """For one caption: each word's last sub-word's attention on the image's tokens (regions), in every head of
    the model's first site. ``facts``: the family's (default: prepared for these regions).

    Returns [layer, head, n_words, R] float32 (NaN rows for words cut by truncation: a caption longer than the
    model takes is cut, never an error).
    """
    family = family_of(model)
    facts = facts if facts is not None else family.prepare(model, SingleImage(regions), {})
    site = family.sites(model)[0]
    item = ProbeItem("view", tuple(words), regions.image_id, [Query("view", w, None) for w in range(len(words))],
                     regions=regions)
    max_text_len = min(max_text_len, family.text_limit(model))
    batch = to_device(family.collate(model, [item], tokenizer, facts, max_text_len), next(model.parameters()).device)
    out = np.full((site.layers, site.heads, len(words), len(regions)), np.nan, dtype=np.float32)
    if len(batch.groups):
        rows = family.rows(model, batch, site, mask)  # [layer, n, head, R]
        check_finite_rows(rows, batch, "the features")
        cut = {id(q) for q in batch.truncated}
        kept = [q.word_index for q in item.queries if id(q) not in cut]
        out[:, :, kept] = rows.permute(0, 2, 1, 3).numpy()
    return out


def word_region_choices(
    model, tokenizer, words: tuple[str, ...], regions: Regions, facts: dict | None = None, max_text_len: int = 128,
    mask: MaskMode = "posthoc",
) -> np.ndarray:
    """For one caption: the region each word's last sub-word attends to most, in every head.

    Returns [layer, head, n_words] region indices (-1 for a word cut by truncation); ties: the lowest index.
    """
    rows = word_region_attention(model, tokenizer, words, regions, facts, max_text_len, mask)
    cut = np.isnan(rows).any(-1)
    return np.where(cut, -1, np.nan_to_num(rows, nan=-np.inf).argmax(-1)).astype(np.int64)


# ----------------------------------------------------------------------------------------------- typed results

def grounding_result(results: ProbeResults) -> GroundingResult:
    """The entity-grounding result of a :class:`vb_probe.pipeline.ProbeResults`."""
    main = results.main
    counts = main.counts.get(ENTITY)
    skipped = dict(sorted(main.skipped.get(ENTITY, {}).items()))
    n_phrases = main.n_units.get("phrases", 0)
    if counts is None or counts.n == 0:
        raise VbProbeError(f"no phrase of split {results.config.split!r} could be scored ({n_phrases} phrases, "
                           f"skipped: {skipped or 'none'}); check the split, the annotations and the features")
    assert n_phrases == counts.n + sum(skipped.values()), "every phrase is scored or skipped"
    scores = HeadScores.from_counts(counts)
    select = results.select.counts.get(ENTITY) if results.select else None
    control = results.control.counts.get(ENTITY) if results.control else None
    return GroundingResult(
        scores.n_correct, scores.n, scores.region_mass, scores.baselines, split=results.config.split,
        n_phrases=n_phrases, skipped={k: int(v) for k, v in skipped.items()},
        selected_head=_selected(scores, HeadScores.from_counts(select) if select else None, results.config.select_on),
        control=_control_scores(control), provenance=provenance(results),
        other_rule=_other_rule_scores(counts, results.rule),
        permuted=_control_scores(counts.alternatives.get("permuted")),
        localization=localization_block(counts, select, results.config))


def localization_block(counts: HeadCounts, select: HeadCounts | None, cfg: ProbeConfig) -> dict | None:
    """A decoder family's extras for run.json: the fixed-position baseline (the grid place the heads pick most
    often on the selection split, and how often a pointer fixed there hits gold here), and the heads Kang et al.'s
    criterion selects without boxes, each with its accuracy against gold here. None for other families."""
    from vb_probe.metrics.intervals import wilson_interval
    from vb_probe.metrics.localization import select_from_entropies
    from vb_probe.metrics.positions import place_label

    if counts.position_picks is None:
        return None
    source, chosen_on = (select, cfg.select_on) if select is not None and select.position_picks is not None else (
        counts, cfg.split)
    place = int(source.position_picks.argmax())
    picks = int(source.position_picks.sum())
    block = {"fixed_position": {"chosen_on": chosen_on, "place": [round(v, 6) for v in place_label(place)],
                                "share_of_picks": round(int(source.position_picks[place]) / max(picks, 1), 6),
                                "accuracy": round(int(counts.position_hits[place]) / max(counts.n, 1), 6)}}
    top_k, skip_layers, count = 10, 2, 3
    heads = []
    if counts.prompt_share is not None:
        selected = select_from_entropies(counts.prompt_share.numpy(), counts.prompt_entropy.numpy(), top_k=top_k,
                                         skip_layers=skip_layers, count=count)
        for layer, head, votes in selected:
            correct = int(counts.n_correct[layer, head])
            low, high = wilson_interval(correct, counts.n)
            heads.append({"layer": layer, "head": head, "votes": votes, "accuracy": round(correct / counts.n, 6),
                          "ci95": [round(low, 6), round(high, 6)]})
    block["unsupervised_selection"] = {
        "method": "Kang et al. 2025: image share above the elbow, lowest spatial entropy, first layers left out",
        "prompts": 0 if counts.prompt_share is None else int(counts.prompt_share.shape[0]), "split": cfg.split,
        "top_k": top_k, "skip_layers": skip_layers, "heads": heads}
    return block


def syntactic_result(results: ProbeResults) -> SyntacticResult:
    """The syntactic-grounding result of a :class:`vb_probe.pipeline.ProbeResults` (one per relation/direction)."""
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
            chosen = _selected(scores[key], HeadScores.from_counts(select) if select else None, cfg.select_on)
            if chosen is not None:
                selected[key] = chosen
            if results.control is not None and group in results.control.counts:
                control[key] = _control_scores(results.control.counts[group])
    return SyntacticResult(wanted, scores, skipped, cfg.split, main.n_units.get("arcs", 0), results.parser,
                           selected, control, provenance(results))


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
    return {"n_images": results.main.n_images, "n_captions": results.main.n_captions,
            "checkpoint": results.checkpoint, "mask": cfg.mask, "precision": cfg.precision,
            **results.facts, "family": results.family, "rule": results.rule, "protocol": PROTOCOL_CHOICES, "versions": versions(),
            "wall_time_s": round(results.wall_time_s, 2), "notes": results.notes, "config": config_dict(cfg)}
