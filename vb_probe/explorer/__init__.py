"""``vb-probe explore``: one self-contained, offline HTML page for looking at head attention on the image.

The Python side (:func:`explorer_data`) runs the probe's own rows for every query word of the chosen captions
and packs them compactly (8-bit attention per head and region, rows re-normalised on load; the probe's own
argmax region and hits stored beside them, so the page marks exactly what the probe scored). The page's script
and style are plain files in this package (``page.js``, ``page.css``), inlined into one ``index.html`` with the
data: no network request of any kind, no RequireJS, no CDN. :class:`Explorer` shows the same page in a notebook.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from vb_probe.data.annotations import GroundingSet
from vb_probe.data.features import RegionFeatures
from vb_probe.data.parses import Parse, check_parse_matches
from vb_probe.errors import VbProbeError
from vb_probe.families import check_scores_fit, family_of, family_rule, image_tokens
from vb_probe.metrics.boxes import query_targets
from vb_probe.metrics.grounding import HeadCounts, baseline_scores, head_correct
from vb_probe.queries import Collection, arc_queries, entity_queries, has_features
from vb_probe.results import GroundingResult, HeadScores
from vb_probe.viz.head_grid import singular

__all__ = ["explorer_data", "write_explorer", "Explorer", "explore", "PAGE", "stored_heads"]

PAGE = "index.html"  # what `vb-probe explore --out DIR` writes into DIR
ALL_HEADS_UP_TO = 256  # beyond this many heads the page keeps the maps of the best heads only
TOP_HEADS = 16


def _image_uri(images_dir: Path | None, image_id: str, file_name: str | None = None, max_side: int = 480
               ) -> str | None:
    """The image (``<image_id>.jpg``/``.png``, else the annotation's ``file_name``) as a small JPEG data URI (the
    page carries it inline), or None when there is none."""
    from vb_probe.data.images import ImageFolder
    from vb_probe.visualize import find_image

    path = find_image(images_dir, image_id, warn=False, file_name=file_name)  # none: the boxes drawn on grey
    if path is None:
        return None
    image = ImageFolder(path.parent).image(path.stem)  # upright (EXIF) and 16-bit scaled, as the boxes are
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _quantised(rows: np.ndarray) -> str:
    """[layer, head, R] attention on regions → base64 of uint8 (each row scaled to its own maximum)."""
    peak = np.maximum(rows.max(-1, keepdims=True), 1e-12)
    return base64.b64encode(np.round(rows / peak * 255).astype(np.uint8).tobytes()).decode("ascii")


def explorer_data(model, tokenizer, dataset: GroundingSet, store: RegionFeatures, *, split: str | None = None,
                  limit: int | None = 20, scores: GroundingResult | None = None, parses: dict[str, Parse] | None = None,
                  relations: tuple[str, ...] = ("nsubj", "dobj", "pobj", "amod"), images_dir: Path | None = None,
                  skip_missing_features: bool = False, progress: bool = False, all_heads_up_to: int = ALL_HEADS_UP_TO,
                  query_word: str | None = None, parser: str | None = None, ground: list[dict] | None = None) -> dict:
    """Everything the page shows, as plain JSON-able data: the head grid (``scores``, else computed here on the
    same captions), and per caption its words, phrases, regions, gold boxes, arcs, and for every query word the
    attention of every head on every region (quantised), the probe's argmax region and which regions hit gold.

    The queries are the probe's own: each entity on its query word (the set's default, or ``query_word``: the
    phrase's last word or its head in the parse), its hits by :func:`~vb_probe.metrics.boxes.query_targets` with the
    part of the image the model sees (a phrase it cannot see is counted as outside the view, never drawn as a miss).

    A model of more than ``all_heads_up_to`` heads (a 7B decoder has 1,024, over 576 image tokens) keeps the
    attention maps of each layer's best head and the top heads only (``stored_heads``); every head's pick and
    hits are still kept.

    ``ground``: the rows of a ``vb-probe ground`` run's ``ground.csv`` (:func:`ground_boxes`): each phrase then
    carries the boxes read from heads under every setting, drawn beside its gold boxes."""
    from vb_probe.api import entity_grounding
    from vb_probe.caption_rows import word_region_attention
    from vb_probe.probe_config import ProbeConfig
    from vb_probe.queries import pass_parses

    split = split or dataset.default_split
    query_word = query_word or (scores.provenance.get("query_word") if scores is not None else None) or \
        dataset.query_word
    image_ids = dataset.split(split)[:limit] if limit else dataset.split(split)
    if scores is None:
        scores = entity_grounding(model, tokenizer, dataset, store, split=split, limit=limit, query_word=query_word,
                                  skip_missing_features=skip_missing_features, parser=parser)
    heads_of = pass_parses(ProbeConfig(split=split, parser=parser), dataset, image_ids, query_word, split).heads
    check_scores_fit(scores, model, "scores")
    family = family_of(model)
    rule = family_rule(family)
    layers, heads = scores.shape
    stored = None if layers * heads <= all_heads_up_to else stored_heads(scores)
    file_names = dataset.image_files()  # COCO's own names, where the set has them
    captions = []
    skipped = {"images_without_features": 0, "query_words_cut_by_truncation": 0, "phrases_outside_view": 0}
    seen = Collection()
    modes: dict[str, HeadCounts] = {}
    settings, boxes = ground_boxes(ground) if ground else ([], {})
    from tqdm.auto import tqdm

    for image_id in tqdm(image_ids, desc="explorer: attention of every head", unit="image", disable=not progress,
                         leave=False):
        if not has_features(store, image_id, skip_missing_features):  # the probe's policy: an error, or counted
            skipped["images_without_features"] += 1
            continue
        regions = image_tokens(family, model, store, image_id)  # detector regions, or a pixel family's cells
        annotation = dataset.annotation(image_id)
        picture = _image_uri(images_dir, image_id, file_names.get(image_id))
        for caption in dataset.captions(image_id):  # the probe's own queries, skips counted the same way
            head_parse = None if heads_of is None else check_parse_matches(heads_of.get(caption.key), caption.key,
                                                                           caption.words, "the parses")
            phrases = []
            for q in entity_queries(dataset, caption, True, seen, head_parse=head_parse):
                if query_targets(regions.boxes, q.gold, regions.seen) is None:  # the model cannot see it: skipped
                    skipped["phrases_outside_view"] += 1
                    continue
                phrases.append({"entity": q.entity_id, "first": q.first_word_index, "last": q.phrase_last,
                                "query": q.word_index, "gold": q.gold.round(1).tolist(),
                                **({"boxes": boxes[(image_id, q.unit)]} if (image_id, q.unit) in boxes else {})})
            arcs = []
            if parses is not None:
                parse = check_parse_matches(parses.get(caption.key), caption.key, caption.words, "the parses")
                for q in arc_queries(set(relations), dataset, caption, parse, True, seen):
                    if query_targets(regions.boxes, q.gold, regions.seen) is None:
                        continue
                    relation, direction = q.group.split("/")
                    phrase = next(i for i, p in enumerate(phrases) if p["first"] <= q.target_word <= p["last"])
                    arcs.append({"relation": relation, "direction": direction, "head": q.arc[0],
                                 "dependent": q.arc[1], "query": q.word_index, "phrase": phrase})
            queries = sorted({p["query"] for p in phrases} | {a["query"] for a in arcs})
            rows = word_region_attention(model, tokenizer, caption.words, regions)  # [L, H, words, R]
            entries = {}
            for word in queries:
                if np.isnan(rows[0, 0, word]).any():  # cut by truncation: counted, shown in the summary
                    skipped["query_words_cut_by_truncation"] += 1
                    continue
                targets = {f"{a['relation']}/{a['direction']}": a["phrase"] for a in arcs if a["query"] == word}
                own = next((i for i, p in enumerate(phrases) if p["query"] == word), None)
                if own is not None:
                    targets["entity"] = own
                argmax = rows[:, :, word].argmax(-1)  # [L, H]: ties to the lowest region, as the probe
                hits = {view: query_targets(regions.boxes, np.asarray(phrases[phrase]["gold"], np.float32),
                                            regions.seen)[rule] for view, phrase in targets.items()}
                for view, hit in hits.items():  # each relation view's own grid, counted on the captions shown
                    if view != "entity":
                        _tally(modes.setdefault(view, HeadCounts(layers, heads)), rows[:, :, word], hit,
                               regions.confidences)
                kept = rows[:, :, word] if stored is None else rows[[l for l, _ in stored], [h for _, h in stored], word][None]
                entries[str(word)] = {"rows": _quantised(kept), "argmax": argmax.tolist(),
                                      "hits": {view: [int(i) for i in np.flatnonzero(hit)]
                                               for view, hit in hits.items()}}
            width = float(regions.image_w or annotation.width)
            height = float(regions.image_h or annotation.height)
            captions.append({"key": caption.key, "image": image_id, "words": list(caption.words),
                             "phrases": phrases, "arcs": arcs, "queries": entries, "width": width, "height": height,
                             "regions": regions.boxes.round(1).tolist(), "picture": picture,
                             "seen": _seen(regions.seen, width, height)})
    return {"split": split, "layers": layers, "heads": heads, "n": scores.n, "family": family.name, "rule": rule,
            "units": family.token_kind, "unit": singular(family.token_kind),
            "accuracy": [[f"{a:.6f}" for a in row] for row in scores.accuracy],
            "baselines": {k: v for k, v in scores.baselines.items() if v is not None},
            "per_layer_best": [h.head for h in scores.per_layer_best()],
            "views": sorted({f"{a['relation']}/{a['direction']}" for c in captions for a in c["arcs"]}),
            "modes": {view: _mode_json(counts) for view, counts in sorted(modes.items())},
            "skipped": skipped, "captions": captions, "best_head": list(scores.best_head()[:2]),
            "marks": family.page_marks(scores) if isinstance(scores, GroundingResult) else {},
            **({"ground_settings": settings} if settings else {}),
            **({"stored_heads": [list(pair) for pair in stored]} if stored is not None else {})}


def ground_boxes(rows: list[dict]) -> tuple[list[str], dict[tuple[str, str], dict]]:
    """A ground run's ``ground.csv`` rows → the settings in the run's order, and per (image, unit) each setting's
    box [x1, y1, x2, y2], IoU, whether it hits (IoU ≥ 0.5) and the heads it was read from."""
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    boxes: dict[tuple[str, str], dict] = {}
    for row in rows:
        boxes.setdefault((row["image_id"], row["unit"]), {})[row["setting"]] = {
            "box": [round(float(row[k]), 1) for k in ("x1", "y1", "x2", "y2")], "iou": round(float(row["iou"]), 3),
            "hit": str(row["hit_iou50"]) == "1", "heads": row["heads"]}
    return settings, boxes


def _seen(view: np.ndarray | None, width: float, height: float) -> list[float] | None:
    """The part of the image the model sees, [x1, y1, x2, y2] in its pixels, where it is not the whole image (a
    centre crop's bands are drawn as not seen); None: it sees all of it."""
    if view is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in view)
    if x1 <= 0.5 and y1 <= 0.5 and x2 >= width - 0.5 and y2 >= height - 0.5:
        return None
    return [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)]


def stored_heads(scores: HeadScores, top: int = TOP_HEADS) -> list[tuple[int, int]]:
    """The heads whose maps a large model's page keeps: each layer's best and the ``top`` best overall (ties: the
    lower layer, then head), in (layer, head) order."""
    accuracy = scores.accuracy
    order = sorted(((-accuracy[l, h], l, h) for l in range(accuracy.shape[0]) for h in range(accuracy.shape[1])))
    chosen = {(h.layer, h.head) for h in scores.per_layer_best()} | {(l, h) for _, l, h in order[:top]}
    return sorted(chosen)


def _tally(counts: HeadCounts, row: np.ndarray, hit: np.ndarray, confidences: np.ndarray | None) -> None:
    """Add one query of a relation view to its counts with the probe's own rule and baselines (:mod:`metrics`):
    ``row`` [L, H, R] the query's attention on the regions, ``hit`` [R] bool, ``confidences`` [R] or None."""
    rows = torch.from_numpy(np.ascontiguousarray(row, dtype=np.float32))[:, None]  # [L, 1, H, R]
    hits = torch.from_numpy(hit)[None]
    valid = torch.ones_like(hits)
    conf = None if confidences is None else torch.tensor(confidences, dtype=torch.float32)[None]  # a copy: read-only
    counts.add(head_correct(rows, valid, hits), rows.sum(-1), baseline_scores(hits, valid, conf))


def _mode_json(counts: HeadCounts) -> dict:
    """A relation view's grid as the page reads it (accuracies printed as the CSVs print them)."""
    scores = HeadScores.from_counts(counts, with_mass=False)
    return {"n": scores.n, "accuracy": [[f"{a:.6f}" for a in row] for row in scores.accuracy],
            "baselines": {k: v for k, v in counts.baseline_accuracy().items() if k != "oracle" and v is not None},
            "per_layer_best": [h.head for h in scores.per_layer_best()]}


# In the page's JSON every character that could end the <script> element or open a comment (<, >, &) and the
# two line separators that older scripts treat as line ends are written as \u escapes: still the same JSON.
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def page_json(data: dict) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element whatever its strings hold; non-finite numbers
    (which JSON cannot carry, and which would blank the page) are refused."""
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise VbProbeError(f"the explorer's data holds a number that is not finite ({exc}); check the features' "
                           "image sizes and boxes") from None
    return "".join(_JSON_ESCAPES.get(c, c) for c in text) if any(c in text for c in _JSON_ESCAPES) else text


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


def page_html(data: dict, title: str = "vb-probe explorer") -> str:
    """One self-contained HTML page: style, data and script inline. Its Content-Security-Policy lets only this
    page's own script and style run (by hash: no inline event handler, no other script) and allows no request
    at all (images come as data: URIs)."""
    package = files("vb_probe.explorer")
    script, style = (package / "page.js").read_text(), (package / "page.css").read_text()
    policy = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
              "img-src data: blob:; base-uri 'none'; form-action 'none'")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body>{(package / 'page.html').read_text()}"
            f"<script id=\"vb-data\" type=\"application/json\">{page_json(data)}</script>"
            f"<script>{script}</script></body></html>\n")


def write_explorer(data: dict, out: str | Path) -> Path:
    """``out/index.html``, written atomically and recorded as vb-probe's (a user's file there is refused)."""
    from vb_probe.atomic import atomic_files

    with atomic_files(out) as staged:
        staged.text(PAGE, page_html(data))
    return Path(out) / PAGE


class Explorer:
    """The explorer in a notebook: displays itself (an isolated frame, no RequireJS); ``.save(dir)`` writes it."""

    def __init__(self, data: dict):
        self.data = data

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(page_html(self.data), quote=True)}" '
                'style="width:100%;height:820px;border:0" sandbox="allow-scripts allow-downloads"></iframe>')

    def save(self, out: str | Path) -> Path:
        return write_explorer(self.data, out)


def explore(model, tokenizer=None, dataset=None, inputs=None, *, progress: bool = True, **options) -> Explorer:
    """The explorer for ``model`` (an object, or a folder / hub id loaded with ``device``, ``precision`` and
    ``device_map``) on ``dataset`` (a reader or its root; ``dataset_format``, ``split_by``) and ``inputs`` (region
    features, or the images for a pixel family; ``images`` / ``features`` by name); other options as
    :func:`explorer_data`'s (``parses`` may also be a CoNLL-U file's path)."""
    from vb_probe.api import _eval_mode, open_session

    session_options = {k: options.pop(k) for k in ("images", "features", "device", "precision", "device_map",
                                                   "dataset_format", "split_by", "confidence", "prompt") if k in options}
    session = open_session(model, tokenizer, dataset, inputs, **session_options)
    if isinstance(options.get("parses"), (str, Path)):  # a CoNLL-U file, as the CLI's --parses
        from vb_probe.data.parses import read_conllu

        options["parses"] = read_conllu(options["parses"])
    images = options.pop("images_dir", None) or session.images_dir
    with _eval_mode(session.model) as encoder:  # the model is given back in the mode it came in
        return Explorer(explorer_data(encoder, session.tokenizer, session.dataset, session.store, progress=progress,
                                      images_dir=images, **options))
