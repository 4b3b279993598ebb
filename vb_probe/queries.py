"""Captions → queries: the one place that decides what is probed (the probe, the explorer, ``visualize`` and the
interventions all ask it) and counts what is skipped, with its reason.

A :class:`Query` is one attention row to score: the last sub-word of a word, and the gold boxes its attention
should land on. Groups: ``entity`` for phrases, ``<relation>/<direction>`` for dependency arcs. No model and no
torch here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vb_probe.data.annotations import NOTVISUAL_ID, Caption, GroundingSet
from vb_probe.data.features import RegionFeatures, Regions
from vb_probe.data.parses import Parse, check_parse_matches

DIRECTIONS = ("head_to_dependent", "dependent_to_head")
ENTITY = "entity"
# recorded in every run.json; docs/PROTOCOL.md states each of these verbatim (a test holds them in step)
PROTOCOL_CHOICES = {
    "document": "docs/PROTOCOL.md",
    "query_token": "last sub-word of the phrase's last word (syntactic: of the query word)",
    "correct_if": "IoU(argmax region, any gold box of the entity) >= 0.5, no union box",
    "correct_if_pointing": "centre of the argmax image token's box inside any gold box of the entity (edges count)",
    "rules": "the grid uses the family's rule (regions: IoU, patches: pointing); other_rule holds the other",
    "iou_area": "continuous (x2-x1)*(y2-y1), gold boxes = XML pixels minus one",
    "argmax_ties": "lowest region index wins; padding regions never win",
    "region_columns": "text-to-text attention masked out post hoc (posthoc) or inside every layer (intervene)",
    "baselines": "highest_confidence, random (expected), oracle: through the same IoU rule",
    "skip_reasons": "notvisual, scene, nobox, not_in_annotation, missing_features, truncated, outside_view; "
                    "n_phrases = n_scored + sum(skipped)",
    "selection": "selected_head: best on another split, scored here; control_random_init: same probe, random weights",
    "permuted_geometry": "control_permuted_geometry: the same picks scored after each image's token cells are "
                         "shuffled (seeded by the image id)",
    "fixed_position": "decoders: a pointer fixed at the grid place the heads pick most on the selection split",
    "localization_selection": "decoders: Kang et al. 2025 heads chosen without boxes (image share above the elbow, "
                              "lowest spatial entropy, layers 0-1 left out), scored against gold",
}


@dataclass(eq=False)  # identity, not field-wise equality (fields hold arrays)
class Query:
    """One attention row to score: the last sub-word of ``word_index``; ``gold`` [n, 4] the boxes it should
    land on (None: nothing to score, e.g. a row read for display). Which image tokens hit them is worked out
    when the image is read, batch by batch."""

    group: str
    word_index: int
    gold: np.ndarray | None
    unit: str = ""  # what it counts (phrase id, arc) — for messages and resumable bookkeeping
    first_word_index: int | None = None  # an entity phrase's first word (its words: first..word_index)
    entity_id: int | None = None  # the entity whose gold boxes these are
    arc: tuple[int, int] | None = None  # a dependency arc's (head word, dependent word)
    phrase_last: int | None = None  # an entity phrase's last word (the query word is it, or the phrase's head)

    @property
    def target_word(self) -> int | None:
        """An arc query's other word (the one inside the phrase whose boxes are the target)."""
        if self.arc is None:
            return None
        head, dependent = self.arc
        return dependent if self.group.endswith("/head_to_dependent") else head


@dataclass
class ProbeItem:
    """A caption, its image and the queries to score on it. ``regions`` is read from the feature store when
    the item's batch is collated (so a split never sits in memory), unless given here."""

    key: str  # <image_id>_<caption_index>
    words: tuple[str, ...]
    image_id: str
    queries: list[Query]
    regions: Regions | None = None


@dataclass
class Collection:
    """What collecting the queries of a split counts: units considered, and skips by group and reason."""

    skipped: dict[str, Counter] = field(default_factory=dict)
    n_units: Counter = field(default_factory=Counter)
    n_captions: int = 0
    keep_units: bool = False  # also keep each skipped unit (the per-query records)
    skipped_units: list[list] = field(default_factory=list)  # [group, unit, image_id, caption, word, word text, None, reason]

    def skip(self, group: str, reason: str, caption: Caption | None = None, word: int | None = None,
             unit: str = "") -> None:
        self.skipped.setdefault(group, Counter())[reason] += 1
        if self.keep_units and caption is not None:
            self.skipped_units.append([group, unit, caption.image_id, caption.key, word,
                                       caption.words[word] if word is not None else "", None, reason])


def phrase_of_word(caption: Caption, word: int):
    """The phrase of ``caption`` that holds word ``word`` (None outside every phrase)."""
    for phrase in caption.phrases:
        if phrase.first_word_index <= word <= phrase.last_word_index:
            return phrase
    return None


def entity_status(dataset: GroundingSet, image_id: str, entity_id: int, skip_unannotated: bool) -> str | None:
    """None when the entity has gold boxes, else the skip reason."""
    if entity_id == NOTVISUAL_ID:
        return "notvisual"
    annotation = dataset.annotation(image_id)
    if entity_id in annotation.boxes:
        return None
    if entity_id in annotation.scene:
        return "scene"
    if entity_id in annotation.nobox:
        return "nobox"
    if skip_unannotated:
        return "not_in_annotation"
    dataset.check_entities(image_id)  # raises the one-line error naming the phrase
    return "not_in_annotation"


def has_features(store: RegionFeatures, image_id: str, skip_missing: bool) -> bool:
    """The one policy for an image the store (its region features, or its picture) lacks: an error naming it, unless
    ``skip_missing`` (then its queries are counted as skipped, ``missing_features``)."""
    if image_id in store:
        return True
    if not skip_missing:
        store[image_id]  # raises the one-line error naming the image
    return False


def entity_queries(dataset: GroundingSet, caption: Caption, features_present: bool, seen: Collection,
                   skip_unannotated: bool = False, head_parse: Parse | None = None) -> list[Query]:
    """One query per phrase with gold boxes; every other phrase counted as skipped with its reason. The query word
    is the phrase's last word, or with ``head_parse`` (the caption's parse) its head word (:func:`head_word`)."""
    from vb_probe.data.annotations import head_word

    annotation = dataset.annotation(caption.image_id)
    queries = []
    for phrase in caption.phrases:
        seen.n_units["phrases"] += 1
        reason = entity_status(dataset, caption.image_id, phrase.entity_id, skip_unannotated)
        if reason is None and not features_present:
            reason = "missing_features"
        if reason:
            seen.skip(ENTITY, reason, caption, phrase.last_word_index,
                      f"{caption.key}:EN#{phrase.entity_id}@{phrase.first_word_index}")
            continue
        word = phrase.last_word_index if head_parse is None else \
            head_word(head_parse.heads, phrase.first_word_index, phrase.last_word_index)
        queries.append(Query(ENTITY, word, annotation.boxes[phrase.entity_id],
                             f"{caption.key}:EN#{phrase.entity_id}@{phrase.first_word_index}", phrase.first_word_index,
                             phrase.entity_id, phrase_last=phrase.last_word_index))
    return queries


def arc_queries(relations: set[str], dataset: GroundingSet, caption: Caption, parse: Parse,
                features_present: bool, seen: Collection) -> list[Query]:
    """Per arc of a chosen relation (``"all"``: every one), a query in each direction whose target word lies in a
    phrase with boxes."""
    annotation = dataset.annotation(caption.image_id)
    queries = []
    for head, dep, relation in parse.arcs():
        if "all" not in relations and relation not in relations:
            continue
        seen.n_units["arcs"] += 1
        for direction, query_word, target_word in (("head_to_dependent", head, dep), ("dependent_to_head", dep, head)):
            group = f"{relation}/{direction}"
            phrase = phrase_of_word(caption, target_word)
            reason = "not_in_phrase" if phrase is None else \
                entity_status(dataset, caption.image_id, phrase.entity_id, True)
            if reason is None and not features_present:
                reason = "missing_features"
            if reason:
                seen.skip(group, f"target_{reason}", caption, query_word, f"{caption.key}:{head}->{dep}")
                continue
            queries.append(Query(group, query_word, annotation.boxes[phrase.entity_id], f"{caption.key}:{head}->{dep}",
                                 entity_id=phrase.entity_id, arc=(head, dep)))
    return queries


def collect_items(dataset: GroundingSet, store: RegionFeatures, image_ids: list[str], *, entity: bool = True,
                  relations: tuple[str, ...] = (), parses: dict[str, Parse] | None = None, parse_source: str = "",
                  skip_unannotated: bool = False, skip_missing_features: bool = False,
                  heads: dict[str, Parse] | None = None, heads_source: str = "", keep_units: bool = False
                  ) -> tuple[list[ProbeItem], Collection]:
    """Every phrase (and arc direction) of ``image_ids`` is turned into a query or counted as skipped. Items hold
    image ids, not features: the features are read batch by batch. With ``heads`` (parses of the captions) an
    entity query sits on its phrase's head word instead of its last word. ``keep_units``: the skipped units are kept
    too (the per-query records)."""
    seen = Collection(keep_units=keep_units)
    items: list[ProbeItem] = []
    for image_id in image_ids:
        present = has_features(store, image_id, skip_missing_features)
        for caption in dataset.captions(image_id):
            seen.n_captions += 1
            head_parse = None if heads is None else check_parse_matches(heads.get(caption.key), caption.key,
                                                                        caption.words, heads_source)
            queries = entity_queries(dataset, caption, present, seen, skip_unannotated, head_parse) if entity else []
            if parses is not None:
                parse = check_parse_matches(parses.get(caption.key), caption.key, caption.words, parse_source)
                queries += arc_queries(set(relations), dataset, caption, parse, present, seen)
            if queries:
                items.append(ProbeItem(caption.key, caption.words, image_id, queries))
    return items, seen


# ----------------------------------------------------------------------------------------------- which parses

@dataclass
class PassParses:
    """The parses one pass reads: ``arcs`` for the relation probes (None: no relation asked) and ``heads`` for the
    entity query word when it is the phrase's head (None: the last word), each with where it came from."""

    arcs: dict[str, Parse] | None = None
    arcs_source: str = ""
    heads: dict[str, Parse] | None = None
    heads_source: str = ""
    copy: Path | None = None  # the copy of spaCy's parses kept beside the results, when one was written


def pass_parses(cfg, dataset: GroundingSet, image_ids: list[str], query_word: str, split: str,
                out: Path | None = None) -> PassParses:
    """The one choice of parses: arcs from the set itself where it has its own (Visual Genome's relationships) and no
    ``--parses`` is given, else from ``--parses`` or spaCy; an entity's head word from the same parses, or from
    spaCy's when the arcs are the set's own (a relationship is no parse of its words). ``cfg``: the
    :class:`~vb_probe.probe_config.ProbeConfig`; ``out``: where a copy of spaCy's parses is kept."""
    from dataclasses import replace

    chosen = PassParses()
    own = dataset.has_own_arcs and cfg.parses is None
    if cfg.relations and own:
        chosen.arcs, chosen.arcs_source = dataset.parses(image_ids), f"{dataset.name}:relationships"
    elif cfg.relations:
        chosen.arcs, chosen.arcs_source, chosen.copy = load_parses(replace(cfg, split=split), dataset, image_ids, out)
    if cfg.entity and query_word == "head":
        if chosen.arcs is not None and not own:
            chosen.heads, chosen.heads_source = chosen.arcs, chosen.arcs_source
        else:
            chosen.heads, chosen.heads_source, _ = load_parses(replace(cfg, split=split, parser=cfg.parser or "spacy"),
                                                               dataset, image_ids, None)
    return chosen


def load_parses(cfg, dataset: GroundingSet, image_ids: list[str], out: Path | None
                ) -> tuple[dict[str, Parse], str, Path | None]:
    """Parses of every caption: from ``--parses`` (CoNLL-U), or spaCy's (cached as CoNLL-U by the caption set's hash,
    in the user's cache); with ``out``, a copy of spaCy's beside the results."""
    import hashlib
    import json

    from vb_probe.atomic import atomic_files, remove_stale_temporaries, write_text
    from vb_probe.cache import user_cache_dir
    from vb_probe.data.parses import SpacyParser, read_conllu, to_conllu
    from vb_probe.errors import VbProbeError

    if cfg.parses is not None:
        return read_conllu(cfg.parses), f"conllu:{cfg.parses}", Path(cfg.parses)
    if cfg.parser != "spacy":
        raise VbProbeError("syntactic probing needs --parses FILE.conllu or --parser spacy")
    items = [(c.key, c.words) for i in image_ids for c in dataset.captions(i)]
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
