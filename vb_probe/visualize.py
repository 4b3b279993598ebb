"""``vb-probe visualize``: Figure 1/5 for one caption — for six layers, that layer's best grounding head,
showing the region each entity word attends to most on the image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vb_probe.errors import DataError


def heads_from_scores(per_layer_best: list[dict], count: int = 6) -> list[dict]:
    """The ``count`` layers whose best head grounds best, in layer order."""
    ranked = sorted(per_layer_best, key=lambda p: (-p["accuracy"], p["layer"]))[:count]
    return sorted(ranked, key=lambda p: p["layer"])


def render_attention_figure(model, tokenizer, flickr_root: Path, features_path: Path, image_id: str,
                            caption_index: int, out_path: Path, *, images_dir: Path | None = None,
                            per_layer_best: list[dict] | None = None, visual_token_type: int = 1) -> Path:
    from vb_probe.atomic import atomic_open
    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.pipeline import word_region_choices
    from vb_probe.viz.attention import plot_attention_on_image

    flickr = Flickr30kEntities(flickr_root)
    captions = flickr.captions(str(image_id))
    if not 0 <= caption_index < len(captions):
        raise DataError(f"image {image_id} has captions 0..{len(captions) - 1}; --caption-index {caption_index} "
                        "is out of range")
    caption = captions[caption_index]
    regions = open_features(features_path)[str(image_id)]
    annotation = flickr.annotation(str(image_id))
    choices = word_region_choices(model, tokenizer, caption.words, regions, visual_token_type)  # [L, H, n]
    if per_layer_best is None:  # no scores given: the head whose choices hit gold boxes most on this caption
        per_layer_best = [{"layer": l, "head": 0, "accuracy": None} for l in range(choices.shape[0])]
    groups: list[int | None] = [None] * len(caption.words)
    for phrase in caption.phrases:
        if phrase.entity_id in annotation.boxes:  # words of one boxed entity share a colour
            for w in range(phrase.first_word_index, phrase.last_word_index + 1):
                groups[w] = phrase.entity_id
    panels = []
    for entry in heads_from_scores(per_layer_best):
        layer, head = entry["layer"], entry["head"]
        panels.append({"layer": layer, "head": head, "accuracy": entry.get("accuracy"),
                       "choices": choices[layer, head]})
    image = None
    if images_dir is not None and (Path(images_dir) / f"{image_id}.png").is_file():
        from PIL import Image

        image = np.asarray(Image.open(Path(images_dir) / f"{image_id}.png").convert("RGB"))
    size = (regions.image_w or annotation.width, regions.image_h or annotation.height)
    fig = plot_attention_on_image(image, size, regions.boxes, list(caption.words), groups, panels,
                                  title=f"image {image_id}, caption {caption_index}: each entity word's most-attended region")
    out_path = Path(out_path)
    with atomic_open(out_path, "wb") as handle:
        fig.savefig(handle, format="png")
    return out_path
