"""Figure 1/5 for one caption: for six layers, that layer's best grounding head, showing the region each
entity word attends to most on the image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from vb_probe.data.features import RegionFeatures
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.data.images import IMAGE_SUFFIXES
from vb_probe.errors import DataError
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


def find_image(images_dir: Path | None, image_id: str, warn: bool = True) -> Path | None:
    """``<image_id>.jpg`` (Flickr30K's own), ``.jpeg`` or ``.png`` in ``images_dir``; warns (``warn``) when none
    is there."""
    if images_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        if (Path(images_dir) / f"{image_id}{suffix}").is_file():
            return Path(images_dir) / f"{image_id}{suffix}"
    if warn:
        warnings.warn(f"{images_dir}: no {image_id}.jpg, .jpeg or .png; the boxes are drawn on a plain background",
                      stacklevel=2)
    return None


def attention_figure(model, tokenizer, flickr30k: Flickr30kEntities | Path, features: RegionFeatures | Path, image_id: str,
                     caption_index: int, *,
                     images_dir: Path | None = None, scores: GroundingResult | None = None,
                     facts: dict | None = None):
    """Figure 1/5 for caption ``caption_index`` of ``image_id`` (``flickr30k`` and ``features``: readers or their
    paths); returns the figure."""
    from vb_probe.families import check_scores_fit, family_of, family_rule, image_tokens, open_inputs, reads_pixels
    from vb_probe.metrics.boxes import rule_hits
    from vb_probe.pipeline import word_region_choices
    from vb_probe.queries import Collection, entity_queries
    from vb_probe.viz.attention import plot_attention_on_image

    if scores is not None:
        check_scores_fit(scores, model, "scores")
    flickr = open_grounding_set(flickr30k)
    family = family_of(model)
    if reads_pixels(family) and features is None:
        features = images_dir  # a model that reads pixels reads the images drawn on
    store = open_inputs(family, features, features)
    captions = flickr.captions(str(image_id))
    if not 0 <= caption_index < len(captions):
        raise DataError(f"image {image_id} has captions 0..{len(captions) - 1}; --caption-index {caption_index} "
                        "is out of range")
    caption = captions[caption_index]
    regions = image_tokens(family, model, store, str(image_id))  # regions, or a pixel family's patch cells
    annotation = flickr.annotation(str(image_id))
    choices = word_region_choices(model, tokenizer, caption.words, regions, facts)  # [L, H, n]
    groups: list[int | None] = [None] * len(caption.words)
    entity_hits = {}
    for query in entity_queries(flickr, caption, True, Collection()):  # the probe's queries: phrases with boxes
        groups[query.first_word_index:query.word_index + 1] = \
            [query.entity_id] * (query.word_index + 1 - query.first_word_index)  # an entity's words share a colour
        entity_hits[query.entity_id] = rule_hits(family_rule(family), regions.boxes, query.gold)
    word_hits = [entity_hits.get(g) for g in groups]
    layer_heads = scores.per_layer_best() if scores is not None else heads_for_caption(choices, word_hits)
    panels = [{"layer": h.layer, "head": h.head, "accuracy": h.accuracy, "choices": choices[h.layer, h.head]}
              for h in heads_from_scores(layer_heads)]
    image = None
    image_path = find_image(images_dir, str(image_id))
    if image_path is not None:
        from PIL import Image

        image = np.asarray(Image.open(image_path).convert("RGB"))
    size = (regions.image_w or annotation.width, regions.image_h or annotation.height)
    source = "its grounding accuracy" if scores is not None else "its hits on this caption"
    rule = family_rule(family)
    return plot_attention_on_image(image, size, regions.boxes, list(caption.words), groups, panels,
                                   gold={g: annotation.boxes[g] for g in entity_hits}, hits=entity_hits,
                                   title=f"image {image_id}, caption {caption_index}: each entity word's most-attended "
                                         f"{'patch' if rule == 'pointing' else 'region'}, in the {len(panels)} layers "
                                         f"whose best head grounds best ({source} in brackets)", rule=rule)


def render_attention_figure(model, tokenizer, flickr30k: Flickr30kEntities | Path, features: RegionFeatures | Path,
                            image_id: str,
                            caption_index: int, out_path: Path, *, images_dir: Path | None = None,
                            scores: GroundingResult | None = None, facts: dict | None = None) -> Path:
    """Draw Figure 1/5 into ``out_path`` (.png, .svg or .pdf: the format its extension names)."""
    from vb_probe.atomic import atomic_files

    fig = attention_figure(model, tokenizer, flickr30k, features, image_id, caption_index,
                           images_dir=images_dir, scores=scores, facts=facts)
    out_path = Path(out_path)
    with atomic_files(out_path.parent if str(out_path.parent) else Path(".")) as staged:
        staged.figure(out_path.name, fig)
    return out_path
