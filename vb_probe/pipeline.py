"""load → collect queries → batch → capture attention rows → score. One forward pass serves every probe.

``run_probes`` is the single entry point behind ``vb-probe entity-grounding``, ``vb-probe syntactic`` and
the demo; it returns :class:`ProbeResults` (counts per group) that :mod:`vb_probe.tables` writes out.
Groups: ``entity`` for phrases, ``<relation>/<direction>`` for dependency arcs.
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

from vb_probe.atomic import atomic_files, remove_stale_temporaries, write_text
from vb_probe.batching import ProbeItem, Query, collate, prefetched, to_device
from vb_probe.cache import user_cache_dir
from vb_probe.checkpoints import file_sha256, weights_file
from vb_probe.data.features import RegionFeatures, open_features
from vb_probe.data.flickr30k import NOTVISUAL_ID, Caption, Flickr30kEntities
from vb_probe.data.parses import Parse, SpacyParser, check_parse_matches, read_conllu, to_conllu
from vb_probe.errors import DataError, VbProbeError
from vb_probe.hooks import capture_attention_rows, mask_text_to_text
from vb_probe.hub import resolve
from vb_probe.metrics.grounding import HeadCounts, baseline_scores, head_correct

MaskMode = Literal["posthoc", "intervene"]
Precision = Literal["fp32", "bf16"]
DIRECTIONS = ("head_to_dependent", "dependent_to_head")
ENTITY = "entity"
# recorded in every run.json; docs/PROTOCOL.md states each of these verbatim (a test holds them in step)
PROTOCOL_CHOICES = {
    "document": "docs/PROTOCOL.md",
    "query_token": "last sub-word of the phrase's last word (syntactic: of the query word)",
    "correct_if": "IoU(argmax region, any gold box of the entity) >= 0.5, no union box",
    "iou_area": "continuous (x2-x1)*(y2-y1), gold boxes = XML pixels minus one",
    "argmax_ties": "lowest region index wins; padding regions never win",
    "region_columns": "text-to-text attention masked out post hoc (posthoc) or inside every layer (intervene)",
    "baselines": "highest_confidence, random (expected), oracle: through the same IoU rule",
    "skip_reasons": "notvisual, scene, nobox, not_in_annotation, missing_features, truncated; "
                    "n_phrases = n_scored + sum(skipped)",
    "selection": "selected_head: best on another split, scored here; control_random_init: same probe, random weights",
}


@dataclass(frozen=True)
class ProbeConfig:
    """Everything a probe run depends on; recorded in run.json."""

    ckpt: Path | str | None = None  # a folder or hub id; None when the model is given in memory
    flickr30k: Path | None = None  # None when a Flickr30kEntities object is given
    features: Path | None = None  # None when a feature store is given
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
    visual_token_type: int = 1
    wall_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    relations_in_parses: set[str] = field(default_factory=set)  # every relation the split's parses hold


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VbProbeError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise VbProbeError(f"--device {name}: unknown device; use cpu or cuda")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------- collection

def _phrase_of_word(caption: Caption, word: int):
    for phrase in caption.phrases:
        if phrase.first_word_index <= word <= phrase.last_word_index:
            return phrase
    return None


def _entity_status(flickr: Flickr30kEntities, image_id: str, entity_id: int, skip_unannotated: bool) -> str | None:
    """None when the entity has gold boxes, else the skip reason."""
    if entity_id == NOTVISUAL_ID:
        return "notvisual"
    annotation = flickr.annotation(image_id)
    if entity_id in annotation.boxes:
        return None
    if entity_id in annotation.scene:
        return "scene"
    if entity_id in annotation.nobox:
        return "nobox"
    if skip_unannotated:
        return "not_in_annotation"
    flickr.check_entities(image_id)  # raises the one-line error naming the phrase
    return "not_in_annotation"


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


@dataclass
class _Collection:
    """What collecting the queries of a split counts: units considered, and skips by group and reason."""

    skipped: dict[str, Counter] = field(default_factory=dict)
    n_units: Counter = field(default_factory=Counter)

    def skip(self, group: str, reason: str) -> None:
        self.skipped.setdefault(group, Counter())[reason] += 1


@dataclass
class _Image:
    """What collecting needs of one image: its annotation, and whether the features hold it."""

    annotation: object
    has_features: bool


def _entity_queries(cfg: ProbeConfig, flickr: Flickr30kEntities, caption: Caption, image: _Image,
                    seen: _Collection) -> list[Query]:
    """One query per phrase with gold boxes; every other phrase counted as skipped with its reason."""
    queries = []
    for phrase in caption.phrases:
        seen.n_units["phrases"] += 1
        reason = _entity_status(flickr, caption.image_id, phrase.entity_id, cfg.skip_unannotated)
        if reason is None and not image.has_features:
            reason = "missing_features"
        if reason:
            seen.skip(ENTITY, reason)
            continue
        queries.append(Query(ENTITY, phrase.last_word_index, image.annotation.boxes[phrase.entity_id],
                             f"{caption.key}:EN#{phrase.entity_id}@{phrase.first_word_index}"))
    return queries


def _arc_queries(relations: set[str], flickr: Flickr30kEntities, caption: Caption, parse: Parse,
                 image: _Image, seen: _Collection) -> list[Query]:
    """Per arc of a chosen relation, a query in each direction whose target word lies in a phrase with boxes."""
    queries = []
    for head, dep, relation in parse.arcs():
        if "all" not in relations and relation not in relations:
            continue
        seen.n_units["arcs"] += 1
        for direction, query_word, target_word in (("head_to_dependent", head, dep), ("dependent_to_head", dep, head)):
            group = f"{relation}/{direction}"
            phrase = _phrase_of_word(caption, target_word)
            reason = "not_in_phrase" if phrase is None else \
                _entity_status(flickr, caption.image_id, phrase.entity_id, True)
            if reason is None and not image.has_features:
                reason = "missing_features"
            if reason:
                seen.skip(group, f"target_{reason}")
                continue
            queries.append(Query(group, query_word, image.annotation.boxes[phrase.entity_id],
                                 f"{caption.key}:{head}->{dep}"))
    return queries


def collect_items(
    cfg: ProbeConfig,
    flickr: Flickr30kEntities,
    features: RegionFeatures,
    image_ids: list[str],
    parses: dict[str, Parse] | None,
    parse_source: str,
) -> tuple[list[ProbeItem], dict[str, Counter], dict[str, int], int]:
    """Every phrase (and arc direction) of the split is turned into a query or counted as skipped. Items hold
    image ids, not features: the features are read batch by batch (:func:`collate`)."""
    seen = _Collection()
    items: list[ProbeItem] = []
    n_captions = 0
    for image_id in image_ids:
        has_features = image_id in features
        if not has_features and not cfg.skip_missing_features:
            features[image_id]  # raises the one-line error naming the image
        image = _Image(flickr.annotation(image_id), has_features)
        for caption in flickr.captions(image_id):
            n_captions += 1
            queries = _entity_queries(cfg, flickr, caption, image, seen) if cfg.entity else []
            if parses is not None:
                parse = check_parse_matches(parses.get(caption.key), caption.key, caption.words, parse_source)
                queries += _arc_queries(set(cfg.relations), flickr, caption, parse, image, seen)
            if queries:
                items.append(ProbeItem(caption.key, caption.words, image_id, queries))
    return items, seen.skipped, dict(seen.n_units), n_captions


# ----------------------------------------------------------------------------------------------- the pass

def region_attention_rows(model, batch, mask: MaskMode = "posthoc", precision: Precision = "fp32") -> torch.Tensor:
    """One forward; the attention of every probed query on the region columns: [layer, n, head, R] (cpu).

    ``posthoc`` drops the text columns after the pass; ``intervene`` blocks text-to-text attention inside it.
    ``precision="bf16"`` runs the forward under bf16 autocast.
    """
    device_type = batch.inputs["input_ids"].device.type
    dtype = next(model.parameters()).dtype  # a half-precision model reads its features in its own precision
    inputs = batch.inputs if dtype == torch.float32 else \
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()}
    with capture_attention_rows(model, batch.batch_index, batch.query_index, len(batch.inputs["input_ids"])) as cache, \
            torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        if mask == "intervene":
            with mask_text_to_text(model):
                model(**inputs)
        else:
            model(**inputs)
    return cache.stack("attn.pattern_rows")[..., batch.text_len:].float().cpu()


def check_finite_rows(region_rows: torch.Tensor, batch, source: str) -> None:
    """Non-finite attention is an error naming the image, never a pick (``argmax`` over NaN would still "choose"
    a region and every number downstream would look plausible). ``region_rows`` [layer, n, head, R]."""
    finite = torch.isfinite(region_rows)
    if bool(finite.all()):
        return
    bad_layer, query = (int(i) for i in (~finite).nonzero()[0][:2])
    row = int(batch.batch_index[query])
    image_id = batch.image_ids[row] if batch.image_ids else "?"
    largest = float(batch.inputs["visual_embeds"][row].abs().max()) if "visual_embeds" in batch.inputs else 0.0
    cause = (f"its region features reach {largest:.3g}, beyond what the model's arithmetic holds; rescale or "
             "re-extract them" if largest > 1e4 or not math.isfinite(largest) else
             "the model's weights are not finite (a damaged or diverged checkpoint); use another checkpoint")
    raise DataError(f"{source}: image {image_id}: attention is not finite (NaN or infinite) from layer {bad_layer} "
                    f"on; {cause}")


def _batches(items: list[ProbeItem], batch_size: int) -> Iterator[list[ProbeItem]]:
    for start in range(0, len(items), batch_size):
        yield items[start:start + batch_size]


def score_batch(model, batch, counts: dict[str, HeadCounts], mask: MaskMode = "posthoc",
                precision: Precision = "fp32", source: str = "the features") -> None:
    """One forward over a collated batch (on the model's device); every head's pick for every query added to
    ``counts`` (group → :class:`HeadCounts`), with the baselines through the same rule."""
    if not len(batch.groups):
        return
    region_rows = region_attention_rows(model, batch, mask, precision)
    check_finite_rows(region_rows, batch, source)
    mass = region_rows.sum(-1)  # [layer, n, head]
    correct = head_correct(region_rows, batch.region_valid, batch.hits)
    base = baseline_scores(batch.hits, batch.region_valid, batch.confidences)
    groups = np.array(batch.groups)
    for group in dict.fromkeys(batch.groups):
        sel = torch.from_numpy(np.flatnonzero(groups == group))
        counts.setdefault(group, HeadCounts(len(model.blocks), model.config.num_attention_heads)).add(
            correct[:, sel], mass[:, sel], {k: v[sel] for k, v in base.items()})


PASSES = ("main", "select", "control")  # one progress file each: .<pass>.progress.json in --out


def progress_path(out: Path, name: str) -> Path:
    return out / f".{name}.progress.json"


def _is_progress_file(path: Path) -> bool:
    """A progress file of :func:`probe_pass` (its keys), not a user's file of the same name."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(state, dict) and {"run", "done", "counts", "truncated"} <= set(state)


def check_progress_files(out: Path, resume: bool) -> None:
    """Before a probe runs: a file named like a progress file that vb-probe did not write is never overwritten
    or deleted (with ``--resume`` a damaged one is reported when it is read)."""
    for name in PASSES:
        path = progress_path(out, name)
        if path.exists() and not (resume or _is_progress_file(path)):
            raise VbProbeError(f"--out {out}: holds {path.name}, which is not vb-probe's progress file; move it "
                               "away or choose another --out (nothing was changed)")


def _load_progress(path: Path, run: dict) -> tuple[int, dict[str, HeadCounts], Counter]:
    """Finished batches, counts and truncations saved by an interrupted :func:`probe_pass` of the same ``run``."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        saved_run, done = state["run"], int(state["done"])
        counts = {g: HeadCounts.from_state(s) for g, s in state["counts"].items()}
        truncated = Counter({str(k): int(v) for k, v in state["truncated"].items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, RecursionError) as exc:
        raise VbProbeError(f"{path}: the saved progress is damaged ({type(exc).__name__}); run again without "
                           "--resume to start over") from None
    differs = sorted(k for k in set(run) | set(saved_run) if run.get(k) != saved_run.get(k))
    if differs:
        shown = ", ".join(f"{k} {saved_run.get(k)!r} → {run.get(k)!r}" for k in differs[:3])
        raise VbProbeError(f"{path}: saved progress is for another run ({shown}); resume with the same options, "
                           "or run again without --resume")
    return done, counts, truncated


@torch.no_grad()
def probe_pass(
    model,
    tokenizer,
    items: list[ProbeItem],
    *,
    batch_size: int,
    visual_token_type: int,
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
) -> tuple[dict[str, HeadCounts], Counter]:
    """Score every query of ``items``; only the probed attention rows are computed and reduced per batch.

    Batches are read from ``features`` and collated in a background thread while the model runs on the batch
    before (in order, so results do not depend on timing); on CUDA they travel through pinned memory.

    With ``state_path``, counts and the number of finished batches are saved atomically every
    ``save_every`` batches; ``resume`` continues from there without counting anything twice, and only when
    the saved run's ``fingerprint`` (everything that changes the counts) equals this one's.
    """
    from tqdm.auto import tqdm

    from vb_probe.atomic import write_json

    counts: dict[str, HeadCounts] = {}
    truncated: Counter = Counter()
    done = 0
    n_batches = (len(items) + batch_size - 1) // batch_size
    run = {**(fingerprint or {}), "n_items": len(items), "batch_size": batch_size, "precision": precision}
    if resume and state_path is not None and state_path.is_file():
        done, counts, truncated = _load_progress(state_path, run)
    model.eval()  # attention dropout would distort the weights being read
    bar = tqdm(total=n_batches, initial=done, desc=description, unit="batch", disable=not progress, leave=False)
    device = torch.device(device)
    chunks = list(_batches(items, batch_size))[done:]
    collated = prefetched((lambda chunk=chunk: collate(chunk, tokenizer, visual_token_type, max_text_len, features))
                          for chunk in chunks)
    for number, cpu_batch in enumerate(collated, start=done):
        batch = to_device(cpu_batch, device, pin=device.type == "cuda")
        for query in batch.truncated:
            truncated[query.group] += 1
        score_batch(model, batch, counts, mask, precision, source=features.source if features is not None else "")
        bar.update(1)
        if state_path is not None and ((number + 1) % save_every == 0):
            write_json(state_path, {"run": run, "done": number + 1,
                                    "counts": {g: c.to_state() for g, c in counts.items()},
                                    "truncated": dict(truncated)})
    bar.close()
    return counts, truncated


# ----------------------------------------------------------------------------------------------- entry point

def checkpoint_info(ckpt: Path | str | None, model=None) -> dict:
    """Provenance of the weights: the file's hash when they were read from a checkpoint here, else what is known
    of the in-memory model (it may have been edited, so no file hash stands for it)."""
    if ckpt is None:
        loaded_from = getattr(model, "checkpoint_path", None)
        return {"source": "in-memory model", "loaded_from": str(loaded_from) if loaded_from else None,
                "sha256": None}
    folder = resolve(ckpt, "--ckpt")
    weights = weights_file(folder)
    info = {"path": str(folder.resolve()), "weights": weights.name, "sha256": file_sha256(weights)}
    if str(ckpt) != str(folder):
        info["hub_id"] = str(ckpt)
    return info


def run_probes(cfg: ProbeConfig, model, tokenizer, *, out: Path | None = None, progress: bool = True,
               resume: bool = False, flickr: Flickr30kEntities | None = None,
               features: RegionFeatures | None = None) -> ProbeResults:
    """Run the probes ``cfg`` asks for (entity grounding and/or syntactic) in one pass per split/model.

    ``model`` and ``tokenizer`` as :mod:`vb_probe.api` loads them; ``flickr`` and ``features`` may be given as
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
    if model.config.bypass_transformer:
        raise VbProbeError(f"{cfg.ckpt or 'the model'}: a model without early fusion has regions in its last layer only; "
                           "probe an early-fusion checkpoint (bypass_transformer false)")
    flickr = flickr if flickr is not None else Flickr30kEntities(cfg.flickr30k)
    features = features if features is not None else open_features(cfg.features, cfg.confidence)
    if features.dim != model.config.visual_embedding_dim:
        raise DataError(f"{cfg.features}: region features are {features.dim}-d but the checkpoint's "
                        f"visual_embedding_dim is {model.config.visual_embedding_dim}; pass the features the "
                        "checkpoint was trained on")
    visual_token_type = cfg.visual_token_type
    if visual_token_type is None:
        visual_token_type = getattr(model.config, "visual_token_type_id", 1)
    if not 0 <= visual_token_type < model.config.type_vocab_size:
        raise VbProbeError(f"--visual-token-type {visual_token_type}: the checkpoint has "
                           f"{model.config.type_vocab_size} token types; use 0..{model.config.type_vocab_size - 1}")
    checkpoint = checkpoint_info(cfg.ckpt, model)
    if out is not None:
        check_progress_files(out, resume)
    # resumed counts must come from the same data: keyed on content, not on paths or times
    features_key = features.content_key() if out is not None else None
    wants_parses = bool(cfg.relations)
    parser_used: dict[str, str] = {}
    relations_seen: set[str] = set()

    def one_split(split: str, run_model, label: str, state_name: str) -> SplitResult:
        image_ids = flickr.split(split)
        if cfg.limit is not None:
            image_ids = image_ids[: cfg.limit]
        parses, parse_source = None, ""
        if wants_parses:
            parses, parse_source, _ = load_parses(cfg_for(split), flickr, image_ids, out if split == cfg.split else None)
            parser_used["name"] = parse_source
            if split == cfg.split:
                keys = {c.key for i in image_ids for c in flickr.captions(i)}
                relations_seen.update(r for k, p in parses.items() if k in keys for _, _, r in p.arcs())
        items, skipped, n_units, n_captions = collect_items(cfg, flickr, features, image_ids, parses, parse_source)
        counts, truncated = probe_pass(
            run_model, tokenizer, items, batch_size=cfg.batch_size, visual_token_type=visual_token_type,
            max_text_len=min(cfg.max_text_len, model.config.max_position_embeddings), mask=cfg.mask,
            precision=cfg.precision, device=device, progress=progress, description=label,
            state_path=progress_path(out, state_name) if out is not None else None, resume=resume,
            fingerprint={**config_dict(cfg), "pass": state_name, "pass_split": split, "model": checkpoint,
                         "features": features_key, "items": items_digest(items)},
            features=features,
        )
        for group, count in truncated.items():
            skipped.setdefault(group, Counter())["truncated"] += count
        return SplitResult(counts, skipped, n_units, len(image_ids), n_captions)

    def cfg_for(split: str) -> ProbeConfig:
        from dataclasses import replace

        return replace(cfg, split=split)

    main = one_split(cfg.split, model, f"probing {cfg.split}", "main")
    select = one_split(cfg.select_on, model, f"selecting on {cfg.select_on}", "select") if cfg.select_on else None
    control = None
    if cfg.control:
        from vb_probe.model import VisualBertModel

        torch.manual_seed(cfg.seed)
        random_model = VisualBertModel(model.config).to(device).eval()
        control = one_split(cfg.split, random_model, "random-init control", "control")
    results = ProbeResults(
        config=cfg, main=main, select=select, control=control, checkpoint=checkpoint,
        parser=parser_used.get("name"), visual_token_type=visual_token_type, wall_time_s=time.time() - started,
        notes=list(getattr(model, "load_notes", [])), relations_in_parses=relations_seen,
    )
    if out is not None:
        for name in PASSES:  # only the progress files this run wrote
            if _is_progress_file(progress_path(out, name)):
                progress_path(out, name).unlink()
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
            for k, v in asdict(cfg).items()}


@torch.no_grad()
def word_region_attention(
    model, tokenizer, words: tuple[str, ...], regions, visual_token_type: int = 1, max_text_len: int = 128,
    mask: MaskMode = "posthoc",
) -> np.ndarray:
    """For one caption: each word's last sub-word's attention on the image's regions, in every head.

    Returns [layer, head, n_words, R] float32 (NaN rows for words cut by truncation).
    """
    item = ProbeItem("view", tuple(words), regions.image_id, [Query("view", w, None) for w in range(len(words))],
                     regions=regions)
    max_text_len = min(max_text_len, model.config.max_position_embeddings)  # longer captions: words cut, counted
    batch = to_device(collate([item], tokenizer, visual_token_type, max_text_len), next(model.parameters()).device)
    out = np.full((len(model.blocks), model.config.num_attention_heads, len(words), len(regions)), np.nan,
                  dtype=np.float32)
    if len(batch.groups):
        rows = region_attention_rows(model, batch, mask)  # [layer, n, head, R]
        check_finite_rows(rows, batch, "the features")
        cut = {id(q) for q in batch.truncated}
        kept = [q.word_index for q in item.queries if id(q) not in cut]
        out[:, :, kept] = rows.permute(0, 2, 1, 3).numpy()
    return out


def word_region_choices(
    model, tokenizer, words: tuple[str, ...], regions, visual_token_type: int = 1, max_text_len: int = 128,
    mask: MaskMode = "posthoc",
) -> np.ndarray:
    """For one caption: the region each word's last sub-word attends to most, in every head.

    Returns [layer, head, n_words] region indices (-1 for a word cut by truncation); ties: the lowest index.
    """
    rows = word_region_attention(model, tokenizer, words, regions, visual_token_type, max_text_len, mask)
    cut = np.isnan(rows).any(-1)
    return np.where(cut, -1, np.nan_to_num(rows, nan=-np.inf).argmax(-1)).astype(np.int64)
