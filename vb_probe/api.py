"""The public verbs, for notebooks and scripts, and the one door the CLI and the demo go through: load a model of
any known family (VisualBERT, LXMERT, ViLT, the decoder VLMs), probe it on any annotation set, get typed results.

    import vb_probe
    model = vb_probe.load_model("demo_out/models/<key>/final")   # a folder, a hub id, or a model object
    tokenizer = vb_probe.load_tokenizer(model=model)
    result = vb_probe.entity_grounding(model, tokenizer, "demo_out/world/flickr30k", "demo_out/world/features.tsv")
    result.plot()                                                 # Figure 3

The CLI, the demo and the notebooks stand on these functions; the probe itself is :mod:`vb_probe.pipeline`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vb_probe.caption_rows import SingleImage, word_region_attention
from vb_probe.data.annotations import GroundingSet
from vb_probe.data.features import RegionFeatures, Regions, open_features
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.devices import resolve_device
from vb_probe.errors import ProbeNote, VbProbeError, say
from vb_probe.families import family_of, head_shape, open_inputs, pin, reads_pixels
from vb_probe.grounding_harness import DEFAULT_CHOICES, DEFAULT_KS, DEFAULT_READOUTS
from vb_probe.hub import folder_config, read_config_json, resolve
from vb_probe.pipeline import ProbeResults, grounding_result, preflight, run_probes, syntactic_result
from vb_probe.probe_config import OPTIONS, ProbeConfig
from vb_probe.results import AttributionResult, CausalResult, GroundingResult, SyntacticResult, top_heads_from_csv

# what a probe verb takes by keyword: every configuration option but those the verb sets from its own arguments
PROBE_OPTIONS = set(OPTIONS) - {"ckpt", "annotations", "features", "images", "precision", "device", "device_map"}


class TokenizerFallback(ProbeNote):
    """The checkpoint has no tokenizer of its own; its family's default is used (bert-base-uncased for VisualBERT,
    as for every uclanlp checkpoint)."""


ModelSource = str | Path | torch.nn.Module


def load_model(src: ModelSource, *, device: str | torch.device | None = None, precision: str = "fp32",
               device_map: str | dict | None = None) -> torch.nn.Module:
    """A probe-ready model in eval mode, of the family its ``config.json`` (or class) names:

    - a checkpoint folder (for VisualBERT: transformers format, task models' checkpoints included);
    - a hub id such as ``uclanlp/visualbert-vqa-coco-pre`` or ``llava-hf/llava-1.5-7b-hf``, through the hub cache
      (``HF_HOME``, ``HF_HUB_OFFLINE``);
    - a model in memory: ours (returned as it is, edits included), our pre-training model (its encoder), or
      transformers' own models of a known family (VisualBERT converted by parameter name; task heads set aside).

    Decoder models (LLaVA, Qwen-VL, PaliGemma, Gemma 3, InternVL, …) load in bf16 with ``precision="bf16"`` and
    across devices with ``device_map`` (accelerate's, e.g. ``"auto"``: then ``device`` is where the inputs go).
    """
    device = resolve_device(str(device)) if device is not None else None  # before anything is loaded
    model = _model(src, precision=precision, device_map=device_map)
    if device is not None and device_map is None:
        model.to(device)
    return model.eval()


def _model(src: ModelSource, precision: str = "fp32", device_map: str | dict | None = None) -> torch.nn.Module:
    """The probe-ready model for ``src`` (its family's), its training mode untouched (the probes set and restore
    it)."""
    if isinstance(src, torch.nn.Module):
        return family_of(src).load(src)
    folder = resolve(src, "--ckpt")
    family = family_of(folder_config(folder), str(folder / "config.json"))
    if family.loads_across_devices:
        dtype = torch.bfloat16 if precision == "bf16" else None
        model = family.load(folder, dtype=dtype, device_map=device_map)
    elif device_map is not None:
        raise VbProbeError(f"--device-map: {family.name} models load on one device; leave --device-map out")
    else:
        model = family.load(folder)
    if str(src) != str(model.checkpoint_path):
        model.load_notes.append(f"{src} resolved to {model.checkpoint_path}")
    return model


def load_tokenizer(src: str | Path | None = None, model: torch.nn.Module | None = None):
    """The tokenizer for ``model``: ``src`` (a folder or hub id) when given; else the checkpoint's own when its
    folder has one; else its family's default (for VisualBERT ``bert-base-uncased``, the tokenizer every uclanlp
    checkpoint was trained with), saying so in one line (a :class:`TokenizerFallback` warning). Checked against
    the model's vocabulary size."""
    from vb_probe.tokenization import has_tokenizer_files
    from vb_probe.tokenization import load_tokenizer as load_folder

    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if src is None and model is not None and family_of(model).tokenizer_of(model) is not None:
        return family_of(model).tokenizer_of(model)  # a decoder's processor brings its tokenizer
    if model is not None:
        pin(model)
    if src is None and model is not None and model.tokenizer_path is not None:
        src = model.tokenizer_path  # the tokenizer a fine-tuned model was trained with
    if src is None:
        folder = model.checkpoint_path if model is not None else None
        if folder is not None and has_tokenizer_files(folder):
            return load_folder(folder, vocab_size=vocab_size)
        default = family_of(model).default_tokenizer if model is not None else None
        if default is None:
            raise VbProbeError(f"{folder or 'the model'} has no tokenizer files; pass --tokenizer (a folder or hub id)")
        warnings.warn(f"{folder or 'the model'} has no tokenizer files; using {default}, its family's tokenizer "
                      "(for VisualBERT, the one every uclanlp checkpoint was trained with; pass a tokenizer to use "
                      "another)", TokenizerFallback, stacklevel=2)
        src = default
    return load_folder(resolve(src, "--tokenizer"), vocab_size=vocab_size)


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Probe in eval mode (dropout would distort the weights read), then give the model back as it was."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


@dataclass
class Session:
    """What a verb works on: the probe-ready ``model`` and its ``tokenizer``, its ``family``, the annotation set
    (``dataset``) and the image ``store`` (region features, or an image folder for a pixel family), and
    ``images_dir``, where pictures are drawn from (a pixel family's images; the built-in world's renders)."""

    model: torch.nn.Module
    tokenizer: object
    family: object
    dataset: GroundingSet
    store: object
    images_dir: Path | None


def open_session(model, tokenizer=None, dataset=None, inputs=None, *, images=None, features=None, device=None,
                 precision: str = "fp32", device_map=None, dataset_format: str | None = None,
                 split_by: str | None = None, confidence: str | None = None, relations: bool = False,
                 prompt: str | None = None) -> Session:
    """The model (an object, or a folder / hub id loaded here with ``device``, ``precision`` and ``device_map``, its
    notes said), its tokenizer (None: its own; a folder or hub id), the annotation set and the image store, as every
    verb opens them. ``inputs``: the region features for a region family, the images for a pixel family (a path or
    an object); ``images``/``features``: the same, by name; ``prompt``: a decoder's prompt around the caption (a
    preset: chat, plain, kang, or a text with ``{image}`` and ``{caption}``; None: its chat template)."""
    if isinstance(model, (str, Path)):
        folder = resolve(model, "--ckpt")
        config = folder_config(folder)
        problem = family_of(config, str(folder / "config.json")).prompt_problem(str(config.get("model_type")), prompt)
        if problem:  # before the weights load
            raise VbProbeError(f"--prompt: {problem}")
        model = load_model(model, device=device, precision=precision, device_map=device_map)
        for note in model.load_notes:
            say(note)
    encoder = _model(model)
    family = family_of(encoder)
    family.use_prompt(encoder, prompt)
    if inputs is not None:
        images, features = (inputs, features) if reads_pixels(family) else (images, inputs)
    reader = open_grounding_set(dataset, dataset_format, split_by=split_by, relations=relations)
    store = open_inputs(family, features, images, confidence)
    store.add_names(reader.image_files())  # COCO's own file names (COCO_train2014_….jpg), as the probe finds them
    images_dir = images if isinstance(images, (str, Path)) else store.folder if reads_pixels(family) else None
    if images_dir is None and (reader.root.parent / "images").is_dir():
        images_dir = reader.root.parent / "images"  # the built-in world keeps its renders beside its data
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer, model=encoder)
    return Session(encoder, tokenizer, family, reader, store, Path(images_dir) if images_dir is not None else None)


def _probe(model, tokenizer, dataset, inputs, *, images=None, features=None, device=None, precision="fp32",
           device_map=None, out=None, resume=False, progress=False, runner=run_probes, **options) -> ProbeResults:
    """The one door of every probe verb: ``options`` (every :class:`ProbeConfig` option the CLI has) checked in one
    place, the data checked before a model given as a folder or hub id loads, then one probe pass per split (see
    :func:`open_session` for the arguments), or what ``runner`` (called as :func:`run_probes` is) runs instead."""
    unknown = set(options) - PROBE_OPTIONS
    if unknown:
        raise VbProbeError(f"unknown probe option {', '.join(sorted(unknown))}; the options are "
                           f"{', '.join(sorted(PROBE_OPTIONS))}")
    if options.get("save_maps"):  # heads as L8H6 or (8, 6); asking for maps asks for the per-query records
        from vb_probe.heads import parse_head_label

        options["save_maps"] = tuple(parse_head_label(h) if isinstance(h, str) else tuple(h)
                                     for h in options["save_maps"])
        options["per_query"] = True
    from_files = isinstance(model, (str, Path))
    if from_files and inputs is not None:  # told apart by the checkpoint's family before it loads
        pixels = reads_pixels(family_of(folder_config(resolve(model, "--ckpt")), str(model)))
        images, features = (inputs, features) if pixels else (images, inputs)
        inputs = None

    def as_path(value):
        return Path(value) if isinstance(value, (str, Path)) else None

    cfg = ProbeConfig(ckpt=model if from_files else None, annotations=as_path(dataset), features=as_path(features),
                      images=as_path(images), precision=precision, device=str(device) if device else "cpu",
                      device_map=device_map, **options).check()
    if from_files:
        preflight(cfg)  # the data's checks before the weights load (minutes for a 7B model)
    session = open_session(model, tokenizer if tokenizer is not None else cfg.tokenizer, dataset, inputs,
                           images=images, features=features, device=device, precision=precision,
                           device_map=device_map, dataset_format=cfg.dataset_format, split_by=cfg.split_by,
                           confidence=cfg.confidence, relations=bool(cfg.relations), prompt=cfg.prompt)
    if device is None and not from_files:
        cfg = replace(cfg, device=next(session.model.parameters()).device.type)
    if cfg.annotations is None:  # run.json records where a reader given as an object reads from
        cfg = replace(cfg, annotations=session.dataset.root)
    where = "images" if session.family.reads == "pixels" else "features"
    if getattr(cfg, where) is None and Path(session.store.source).exists():
        cfg = replace(cfg, **{where: Path(session.store.source)})
    encoder = session.model
    with _eval_mode(encoder):
        placed = encoder if getattr(encoder, "hf_device_map", None) else encoder.to(resolve_device(cfg.device))
        return runner(cfg, placed, session.tokenizer, out=Path(out) if out is not None else None,
                      progress=progress, resume=resume, dataset=session.dataset, store=session.store)


def entity_grounding(model, tokenizer=None, dataset=None, inputs=None, **options) -> GroundingResult:
    """Score every head of ``model`` as it is (edits in memory included) against an annotation set's gold boxes
    (Flickr30K Entities, RefCOCO/+/g, Visual Genome regions). Returns a :class:`GroundingResult`.

    ``model``: an object or a checkpoint folder / hub id; ``tokenizer``: None for the model's own; ``dataset``: a
    reader or its root; ``inputs``: region features (a path or a store) for a region family, the images folder for
    one that reads pixels (or ``features=`` / ``images=`` by name). Options, as the CLI's: ``split`` (default the
    set's own), ``dataset_format``, ``split_by``, ``query_word`` (default the set's own: Flickr30K ``last``,
    RefCOCO and Visual Genome ``head``), ``mask``, ``batch_size``, ``device``, ``precision``, ``device_map``,
    ``limit``, ``select_on`` (also choose heads on that split: the unbiased number), ``control`` (also probe a
    random-initialised twin), ``confidence``, ``skip_unannotated``, ``skip_missing_features``,
    ``localization_prompts`` and ``entropy`` (decoders: how Kang et al.'s heads are chosen, on ``select_on`` when
    given), ``parses``/``parser``/``spacy_model`` (for head words), ``visual_token_type``, ``max_text_len``, ``out``
    (progress for ``resume``), ``resume``, ``progress``."""
    return grounding_result(_probe(model, tokenizer, dataset, inputs, **options))


def syntactic_grounding(model, tokenizer=None, dataset=None, inputs=None, *, relations: Sequence[str] | str = (
        "nsubj", "dobj", "pobj"), parses: str | Path | None = None, parser: Literal["spacy"] | None = None,
                        **options) -> SyntacticResult:
    """Per dependency relation and direction, every head's grounding of the arc's other word (Figure 4).

    ``parses``: a CoNLL-U file whose tokens are the captions' words; without it, ``parser="spacy"`` parses them
    (the default when neither is given), or a set's own arcs (Visual Genome's relationships). ``relations``: names
    as the parses spell them (one name or several), or ``"all"``. Other options as :func:`entity_grounding`'s."""
    return syntactic_result(_probe(
        model, tokenizer, dataset, inputs, entity=False,
        relations=(relations,) if isinstance(relations, str) else tuple(relations),
        parses=Path(parses) if parses else None, parser=parser or (None if parses else "spacy"), **options))


def grounding_probes(model, tokenizer=None, dataset=None, inputs=None, *, relations: Sequence[str] = (
        "nsubj", "dobj", "pobj"), parses: str | Path | None = None, parser: Literal["spacy"] | None = None,
                     **options) -> tuple[GroundingResult, SyntacticResult]:
    """Entity grounding and syntactic grounding from one forward pass over each split (what the demo runs): the
    arguments of :func:`entity_grounding` and :func:`syntactic_grounding` together."""
    results = _probe(model, tokenizer, dataset, inputs, relations=tuple(relations),
                     parses=Path(parses) if parses else None, parser=parser or (None if parses else "spacy"),
                     **options)
    return grounding_result(results), syntactic_result(results)


def ground(model, tokenizer=None, dataset=None, inputs=None, *, select_on: str | None = None,
           ks: Sequence[int] = DEFAULT_KS, readouts: Sequence[str] = DEFAULT_READOUTS,
           choices: Sequence[str] = DEFAULT_CHOICES, sink_filter: str = "none", **options):
    """Boxes from heads (Kang et al. 2025 and every variant of it): heads chosen on ``select_on`` (default: the
    set's train split) by Kang et al.'s votes (``fixed``), by each expression's own entropies (``per-sample``), by
    accuracy against gold (``gold``) or at random (``random``); each expression's maps of the first k of them
    (each k of ``ks``) summed and read out as a box (``readouts``: ``paper``, the largest blob of the 7-tap-smoothed
    map above its mean; ``released``, the box around all foreground after scipy's 9-tap smoothing; ``peak``;
    ``centroid``), scored by Acc@0.5, mean IoU and pointing. Returns a
    :class:`~vb_probe.grounding_harness.GroundResult`. Kang et al.'s own setting: ``prompt="kang"`` (the query row is
    then the prompt's last token) and, for LLaVA-1.5, ``view="pad"``. Other options as :func:`entity_grounding`'s
    (``entropy``: the spatial entropy's variant; ``localization_prompts``: the selection's N; ``sinks``: the sink
    audit beside each pass, ``sink_dims`` its dimensions if known). ``sink_filter``: ``audit`` (heads that put half
    or more of their image attention on sinks, audited on the selection split, are not chosen), ``bottom-row`` (the
    authors' later rule: a bottom-row cell above 0.05) or ``none``."""
    from functools import partial

    from vb_probe.grounding_harness import run_ground

    runner = partial(run_ground, select_on=select_on, ks=tuple(int(k) for k in ks), readouts=tuple(readouts),
                     choices=tuple(choices), sink_filter=sink_filter)
    return _probe(model, tokenizer, dataset, inputs, runner=runner, **options)


@dataclass
class TokenAttention:
    """One caption's attention on one image, every head: ``rows`` [layer, head, word, R] (each word's last
    sub-word's row over the image tokens; NaN for a word cut by truncation), ``cells`` [R, 4] each image token's box
    in the image's pixels, ``unit`` what the tokens are (regions, patches, image tokens)."""

    rows: np.ndarray
    cells: np.ndarray
    unit: str


def image_attention(model, tokenizer, words: Sequence[str] | str, image, *, mask: Literal["posthoc", "intervene"] =
                    "posthoc", visual_token_type: int | None = None, prompt: str | None = None) -> TokenAttention:
    """For one caption and one image, any family: every head's attention from each word to each image token, with
    each token's cell. ``image``: for a model that reads pixels, a PIL image or an image file's path (through the
    model's own processor: its cells are the processor's); for a region model, a :class:`Regions` or a
    [R, visual_dim] feature array. ``tokenizer``: None for the model's own; ``prompt``: a decoder's (see
    :func:`open_session`)."""
    from PIL import Image

    from vb_probe.caption_rows import OneImage

    encoder = _model(model)
    family = family_of(encoder)
    family.use_prompt(encoder, prompt)
    if isinstance(words, str):  # a caption as one string: its words, split on spaces as the probe splits them
        words = words.split()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model=encoder)
    if reads_pixels(family):
        if isinstance(image, (str, Path)):
            from vb_probe.data.images import ImageFolder

            path = Path(image)
            image = ImageFolder(path.parent).image(path.stem) if path.is_file() else None
            if image is None:
                raise VbProbeError(f"{path}: no such image file; pass a PIL image or the path of a .jpg or .png")
        if not isinstance(image, Image.Image):
            raise VbProbeError(f"image_attention: a {family.name} model reads pixels; pass a PIL image or an image "
                               f"file's path, not {type(image).__name__}")
        regions = family.image_tokens(encoder, OneImage(image), "image")
    else:
        features = image.features if isinstance(image, Regions) else np.asarray(image, dtype=np.float32)
        if features.ndim != 2 or not len(features):
            raise VbProbeError(f"region_attention: regions have shape {tuple(features.shape)}, expected [R, D] (R ≥ 1 "
                               "regions of D features each; one region is [1, D])")
        regions = image if isinstance(image, Regions) else \
            Regions("example", np.zeros((len(features), 4), np.float32), features, None, None, None)
    facts = family.prepare(encoder, SingleImage(regions), {"visual_token_type": visual_token_type})
    with _eval_mode(encoder):
        rows = word_region_attention(encoder, tokenizer, tuple(words), regions, facts, max_text_len=10**9, mask=mask)
    return TokenAttention(rows, np.asarray(regions.boxes, np.float32), family.token_kind)


def region_attention(model, tokenizer, words: Sequence[str] | str, regions, *,
                     mask: Literal["posthoc", "intervene"] = "posthoc", visual_token_type: int | None = None
                     ) -> np.ndarray:
    """For one caption and one image: every head's attention from each word to each image token, [layer, head,
    word, R] float32 (the rows of :func:`image_attention`, whose ``cells`` give each token's box).

    ``words``: the caption's words (a string is split on spaces, as the probe splits captions); ``regions``: a
    :class:`Regions` (e.g. ``open_features(p)[image_id]``) or a [R, visual_dim] feature array for a region model,
    a PIL image or an image's path for one that reads pixels. The attention row of each word's last sub-word on the
    image tokens, after the text-to-text mask for a region model (``posthoc``: text columns dropped after the pass,
    rows not renormalised; ``intervene``: text-to-text attention blocked inside every layer). A word cut by
    truncation gets a row of NaN.
    """
    return image_attention(model, tokenizer, words, regions, mask=mask, visual_token_type=visual_token_type).rows


def load_masked_lm(src: ModelSource, *, device: str | torch.device | None = None) -> torch.nn.Module:
    """A model with its masked-LM head (a pre-training checkpoint: a folder, a hub id or an object), in eval mode:
    what :func:`attribute` and :func:`causal_check` need. A family without such a head is refused in one line."""
    device = resolve_device(str(device)) if device is not None else None
    if isinstance(src, torch.nn.Module):
        model = src
    else:
        folder = resolve(src, "--ckpt")
        family = family_of(read_config_json(folder), str(folder / "config.json"))
        model = family.load_masked_lm(folder)  # a family without one refuses in one line
    if device is not None:
        model.to(device)
    return model.eval()


def _interventions(model: torch.nn.Module):
    """The model's family's attribution and causal-check code (a family with a masked-LM head)."""
    family = family_of(model)
    tools = family.interventions  # a family without a masked-LM head refuses in one line
    tools.require_masked_lm(model)
    return tools


def _masked_phrases(model, tokenizer, dataset, features, split: str | None, limit: int | None, progress: bool):
    tools = _interventions(model)
    dataset = open_grounding_set(dataset)
    split = split or dataset.default_split
    features = open_features(features) if isinstance(features, (str, Path)) else features
    items = tools.masked_phrases(dataset, features, tokenizer, split, limit, progress=progress)
    if not items:
        raise VbProbeError(f"no phrase with gold boxes in the first {limit} images of split {split!r}")
    return tools, items


def attribute(model: torch.nn.Module, tokenizer, dataset: GroundingSet | str | Path,
              features: RegionFeatures | str | Path, *, split: str | None = None, limit: int | None = 20, steps: int = 32,
              progress: bool = False) -> AttributionResult:
    """Integrated gradients (captum) of each masked entity word's prediction with respect to the regions and the
    words, against each head's attention: how often a head's most-attended region is the top-attributed one.
    ``model``: from :func:`load_masked_lm`. Returns an :class:`AttributionResult` (``save``, ``load``, ``plot``)."""
    tools, items = _masked_phrases(model, tokenizer, dataset, features, split, limit, progress)
    with _eval_mode(model):
        return tools.attribute(model, items, tokenizer.pad_token_id, steps=steps, progress=progress)


def causal_check(model: ModelSource, tokenizer, dataset: GroundingSet | str | Path, inputs, scores: str | Path, *,
                 k: int = 12, draws: int = 20, seed: int = 0, split: str | None = None, limit: int | None = 20,
                 progress: bool = False, batch_size: int = 8, device: str | torch.device | None = None,
                 precision: str = "fp32", device_map: str | dict | None = None, prompt: str | None = None,
                 dataset_format: str | None = None, split_by: str | None = None) -> CausalResult:
    """Ablate the ``k`` best grounding heads of ``scores`` (an entity-grounding folder or its CSV) and, per draw, k
    random others; the drop in the family's measure with a bootstrap interval and an empirical p-value:

    - a model with a masked-LM head (VisualBERT; :func:`load_masked_lm`, or its checkpoint): masked entity-word
      accuracy on the phrases of the first ``limit`` images, ``inputs`` the region features;
    - a decoder (LLaVA, Qwen-VL, PaliGemma, Gemma 3 …; an object, a folder or a hub id, loaded with ``device``,
      ``precision``, ``device_map``): each caption's mean log-probability per token given its image, in ``prompt``,
      ``inputs`` the images.

    Returns a :class:`CausalResult` (``save``, ``load``, ``plot``)."""
    if isinstance(model, (str, Path)):
        folder = resolve(model, "--ckpt")
        config = folder_config(folder)
        family, model_type = family_of(config, str(folder / "config.json")), str(config.get("model_type"))
    else:
        family, model_type = family_of(model), str(model.config.model_type)
    problem = family.prompt_problem(model_type, prompt)
    if problem:
        raise VbProbeError(f"--prompt: {problem}")
    if family.has_masked_lm:
        for option, value, default in (("--precision", precision, "fp32"), ("--device-map", device_map, None)):
            if value != default:
                raise VbProbeError(f"{option} {value}: the masked-LM causal check runs in fp32 on one device; leave "
                                   f"{option} out")
        if isinstance(model, (str, Path)):
            model = load_masked_lm(folder, device=device)
            for note in family.load(model).load_notes:
                say(note)
        return _masked_lm_causal_check(model, tokenizer, dataset, inputs, scores, k=k, draws=draws, seed=seed,
                                       split=split, limit=limit, progress=progress)
    if not family.generates_text:
        raise VbProbeError(f"the {family.name} family has no masked-LM head and generates no text: no causal measure "
                           "is defined for it (its heads can still be ablated: vb_probe.ablate_heads)")
    return _decoder_causal_check(model, tokenizer, dataset, inputs, scores, k=k, draws=draws, seed=seed, split=split,
                                 limit=limit, progress=progress, batch_size=batch_size, device=device,
                                 precision=precision, device_map=device_map, prompt=prompt,
                                 dataset_format=dataset_format, split_by=split_by)


def _masked_lm_causal_check(model, tokenizer, dataset, features, scores, *, k, draws, seed, split, limit, progress):
    _interventions(model)  # a masked-LM model, before the scores are read against its shape
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer, model=family_of(model).load(model))
    heads = top_heads_from_csv(Path(scores), k, model_shape=head_shape(family_of(model).load(model)))
    tools, items = _masked_phrases(model, tokenizer, dataset, features, split, limit, progress)
    with _eval_mode(model):
        return tools.causal_check(model, items, heads, tokenizer.pad_token_id, random_draws=draws, seed=seed,
                                  progress=progress)


def _decoder_causal_check(model, tokenizer, dataset, images, scores, *, k, draws, seed, split, limit, progress,
                          batch_size, device, precision, device_map, prompt, dataset_format, split_by) -> CausalResult:
    """The captions of the first ``limit`` images of ``split``, their log-probabilities with heads ablated
    (:func:`vb_probe.causal.caption_log_prob_check`); every check of the data before the long work."""
    from vb_probe.causal import caption_log_prob_check
    from vb_probe.pipeline import check_images
    from vb_probe.queries import collect_items

    def image_ids(reader) -> list[str]:
        chosen = split or reader.default_split
        return reader.split(chosen)[:limit] if limit is not None else reader.split(chosen)

    if isinstance(model, (str, Path)):  # the scores, the annotations and the images checked before the weights load
        top_heads_from_csv(Path(scores), k)
        folder = resolve(model, "--ckpt")
        family = family_of(folder_config(folder), str(folder / "config.json"))
        dataset = open_grounding_set(dataset, dataset_format, split_by=split_by)
        images = open_inputs(family, None, images, None)
        images.add_names(dataset.image_files())
        check_images(family, None, dataset, images, image_ids(dataset))
    session = open_session(model, tokenizer, dataset, images, device=device, precision=precision,
                           device_map=device_map, dataset_format=dataset_format, split_by=split_by, prompt=prompt)
    decoder, family, reader = session.model, session.family, session.dataset
    heads = top_heads_from_csv(Path(scores), k, model_shape=head_shape(decoder))
    split = split or reader.default_split
    check_images(family, decoder, reader, session.store, image_ids(reader))
    items, _ = collect_items(reader, session.store, image_ids(reader))
    if not items:
        raise VbProbeError(f"no caption with gold boxes in the first {limit} images of split {split!r}")
    facts = family.prepare(decoder, session.store, {"prompt": prompt})
    where = resolve_device(str(device)) if device is not None else next(decoder.parameters()).device
    if not getattr(decoder, "hf_device_map", None):  # spread over devices, it stays; the inputs go to ``where``
        decoder.to(where)
    with _eval_mode(decoder):
        return caption_log_prob_check(family, decoder, session.tokenizer, items, session.store, facts, heads,
                                      draws=draws, seed=seed, batch_size=batch_size,
                                      max_text_len=min(128, family.text_limit(decoder)), precision=precision,
                                      device=where, progress=progress)


@contextmanager
def ablate_heads(model: torch.nn.Module, heads: Sequence[tuple[int, int] | str]):
    """While inside, the heads (``(layer, head)`` pairs or labels such as ``"L8H6"``) of the model's probed site add
    nothing to their layers' outputs, whatever the family: each head's output is zeroed before its layer's output
    projection (a decoder's inside its registered attention function), as zeroing its columns of that projection
    would. ``model``: a probe-ready model or the model it came from (a masked-LM or task model)."""
    from vb_probe.heads import parse_head_label

    pairs = [parse_head_label(h) if isinstance(h, str) else (int(h[0]), int(h[1])) for h in heads]
    with family_of(model).ablate_heads(model, pairs):
        yield
