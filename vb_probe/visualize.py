"""Figure 1/5 for one caption: for six layers, that layer's best grounding head, showing the region each
entity word attends to most on the image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from vb_probe.data.images import IMAGE_SUFFIXES
from vb_probe.errors import DataError, ProbeNote
from vb_probe.results import GroundingResult, Head


def heads_from_scores(per_layer_best: list[Head], count: int = 6) -> list[Head]:
    """The ``count`` layers whose best head grounds best, in layer order."""
    ranked = sorted(per_layer_best, key=lambda h: (-h.accuracy, h.layer))[:count]
    return sorted(ranked, key=lambda h: h.layer)


def heads_for_caption(choices: np.ndarray, hits: list[np.ndarray | None]) -> list[Head]:
    """Without probe scores: per layer, the head whose choices hit gold for most of this caption's boxed words.

    ``choices`` [layer, head, n_words] region indices; ``hits[w]`` [R] bool for a word in a boxed phrase, else None.
    Accuracy is that head's share of the caption's boxed words (ties: the lowest head).
    """
    scored = [w for w, h in enumerate(hits) if h is not None and choices[0, 0, w] >= 0]
    out = []
    for layer in range(choices.shape[0]):
        right = np.array([sum(bool(hits[w][choices[layer, head, w]]) for w in scored)
                          for head in range(choices.shape[1])])
        head = int(np.argmax(right))
        out.append(Head(layer, head, right[head] / len(scored) if scored else 0.0))
    return out


def find_image(images_dir: Path | None, image_id: str, warn: bool = True, file_name: str | None = None
               ) -> Path | None:
    """``<image_id>.jpg`` (Flickr30K's own), ``.jpeg`` or ``.png`` in ``images_dir``, else the annotation's own
    ``file_name`` there (COCO's ``COCO_train2014_….jpg``); warns (``warn``) when none is there."""
    if images_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        if (Path(images_dir) / f"{image_id}{suffix}").is_file():
            return Path(images_dir) / f"{image_id}{suffix}"
    if file_name and (Path(images_dir) / file_name).is_file():
        return Path(images_dir) / file_name
    if warn:
        warnings.warn(f"{images_dir}: no {image_id}.jpg, .jpeg or .png; the boxes are drawn on a plain background",
                      ProbeNote, stacklevel=2)
    return None


def attention_figure(model, tokenizer=None, dataset=None, inputs=None, image_id: str = "", caption_index: int = 0, *,
                     images_dir: Path | None = None, scores: GroundingResult | None = None, facts: dict | None = None,
                     query_word: str | None = None, parser: str | None = None, **session_options):
    """Figure 1/5 for caption ``caption_index`` of ``image_id``: ``model`` an object or a folder / hub id,
    ``dataset`` a reader or its root, ``inputs`` region features or (a pixel family) the images; ``session_options``
    as :func:`vb_probe.api.open_session`'s (``images``, ``features``, ``device``, ``precision``, ``device_map``,
    ``dataset_format``, ``split_by``). Each entity word is the probe's query word (the set's default, the run's of
    ``scores``, or ``query_word``), and which tokens hit it the probe's (:func:`~vb_probe.metrics.boxes.query_targets`
    with the part of the image the model sees). Returns the figure."""
    from vb_probe.api import open_session
    from vb_probe.caption_rows import word_region_choices
    from vb_probe.families import check_scores_fit, family_rule
    from vb_probe.viz.attention import plot_attention_on_image
    from vb_probe.viz.head_grid import singular

    if images_dir is not None and inputs is None and "images" not in session_options:
        session_options["images"] = images_dir  # a model that reads pixels reads the images drawn on
    session = open_session(model, tokenizer, dataset, inputs, **session_options)
    model, family, dataset = session.model, session.family, session.dataset
    if scores is not None:
        check_scores_fit(scores, model, "scores")
    images_dir = images_dir or session.images_dir
    query_word = query_word or (scores.provenance.get("query_word") if scores is not None else None) or \
        dataset.query_word
    caption, regions, groups, entity_hits = caption_queries(model, dataset, session.store, str(image_id),
                                                           caption_index, query_word, parser)
    annotation = dataset.annotation(str(image_id))
    rule = family_rule(family)
    choices = word_region_choices(model, session.tokenizer, caption.words, regions, facts)  # [L, H, n]
    word_hits = [entity_hits.get(g) for g in groups]
    layer_heads = scores.per_layer_best() if scores is not None else heads_for_caption(choices, word_hits)
    panels = [{"layer": h.layer, "head": h.head, "accuracy": h.accuracy, "choices": choices[h.layer, h.head]}
              for h in heads_from_scores(layer_heads)]
    image = None
    image_path = find_image(images_dir, str(image_id), file_name=dataset.image_files().get(str(image_id)))
    if image_path is not None:
        from vb_probe.data.images import ImageFolder

        image = np.asarray(ImageFolder(image_path.parent).image(image_path.stem))  # upright, as annotated
    size = (regions.image_w or annotation.width, regions.image_h or annotation.height)
    source = "its grounding accuracy" if scores is not None else "its hits on this caption"
    return plot_attention_on_image(image, size, regions.boxes, list(caption.words), groups, panels,
                                   gold={g: annotation.boxes[g] for g in entity_hits}, hits=entity_hits,
                                   title=f"image {image_id}, caption {caption_index}: each entity word's most-attended "
                                         f"{singular(family.token_kind)}, in the {len(panels)} layers "
                                         f"whose best head grounds best ({source} in brackets)", rule=rule,
                                   token_kind=family.token_kind)


def caption_queries(model, dataset, store, image_id: str, caption_index: int, query_word: str | None = None,
                    parser: str | None = None):
    """What Figure 1/5 scores for one caption, exactly as the probe does: the caption, its image tokens, each word's
    entity (``groups[w]``, None outside a boxed phrase, and for an entity whose gold the model cannot see), and per
    entity which tokens hit its gold under the family's rule (:func:`~vb_probe.metrics.boxes.query_targets`, with
    the part of the image the model sees). The entity's query word: the set's own, or ``query_word``."""
    from vb_probe.families import family_of, family_rule, image_tokens
    from vb_probe.metrics.boxes import query_targets
    from vb_probe.probe_config import ProbeConfig
    from vb_probe.queries import Collection, entity_queries, pass_parses

    family = family_of(model)
    captions = dataset.captions(image_id)
    if not 0 <= caption_index < len(captions):
        raise DataError(f"image {image_id} has captions 0..{len(captions) - 1}; --caption-index {caption_index} "
                        "is out of range")
    caption = captions[caption_index]
    heads = pass_parses(ProbeConfig(parser=parser), dataset, [image_id], query_word or dataset.query_word, "").heads
    head_parse = heads.get(caption.key) if heads is not None else None
    regions = image_tokens(family, model, store, image_id)  # regions, or a pixel family's cells
    groups: list[int | None] = [None] * len(caption.words)
    entity_hits = {}
    for query in entity_queries(dataset, caption, True, Collection(), head_parse=head_parse):
        targets = query_targets(regions.boxes, query.gold, regions.seen)
        if targets is None:  # outside what the model sees: not scored, not drawn as a miss
            continue
        groups[query.first_word_index:query.phrase_last + 1] = \
            [query.entity_id] * (query.phrase_last + 1 - query.first_word_index)  # an entity's words share a colour
        entity_hits[query.entity_id] = targets[family_rule(family)]
    return caption, regions, groups, entity_hits


def figure_queries(model, dataset, store, image_id: str, caption_index: int, **options) -> dict[int, np.ndarray]:
    """Entity → [R] bool, which image tokens hit its gold in Figure 1/5 (:func:`caption_queries`)."""
    return caption_queries(model, dataset, store, str(image_id), caption_index, **options)[3]


def render_attention_figure(model, tokenizer, dataset, inputs, image_id: str, caption_index: int, out_path: Path, *,
                            images_dir: Path | None = None, scores: GroundingResult | None = None,
                            facts: dict | None = None, **options) -> Path:
    """Draw Figure 1/5 into ``out_path`` (.png, .svg or .pdf: the format its extension names); arguments as
    :func:`attention_figure`'s."""
    from vb_probe.atomic import atomic_files

    fig = attention_figure(model, tokenizer, dataset, inputs, image_id, caption_index, images_dir=images_dir,
                           scores=scores, facts=facts, **options)
    out_path = Path(out_path)
    with atomic_files(out_path.parent if str(out_path.parent) else Path(".")) as staged:
        staged.figure(out_path.name, fig)
    return out_path
