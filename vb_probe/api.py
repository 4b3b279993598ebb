"""The public verbs, for notebooks and scripts: load a model of any known family (VisualBERT today), probe it,
get typed results.

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
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vb_probe.data.features import RegionFeatures, Regions, open_features
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.data.grounding_sets import open_grounding_set
from vb_probe.devices import resolve_device
from vb_probe.errors import VbProbeError
from vb_probe.families import family_of, head_shape, open_inputs, pin, reads_pixels
from vb_probe.hub import folder_config, read_config_json, resolve
from vb_probe.pipeline import (
    ProbeConfig,
    ProbeResults,
    SingleImage,
    grounding_result,
    run_probes,
    syntactic_result,
    word_region_attention,
)
from vb_probe.results import AttributionResult, CausalResult, GroundingResult, SyntacticResult, top_heads_from_csv


def load_model_and_tokenizer(cfg: ProbeConfig):
    """The checkpoint ``cfg.ckpt`` (folder or hub id) and its tokenizer (``cfg.tokenizer``, the checkpoint's own,
    else bert-base-uncased), on ``cfg.device``."""
    device = resolve_device(cfg.device)
    model = load_model(cfg.ckpt, device=device)
    return model, load_tokenizer(cfg.tokenizer, model=model), device


class TokenizerFallback(UserWarning):
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

    Decoder models (LLaVA, Qwen2-VL, PaliGemma) load in bf16 with ``precision="bf16"`` and across devices with
    ``device_map`` (accelerate's, e.g. ``"auto"``: then ``device`` is where the inputs go).
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


def _probe(model, tokenizer, flickr30k: Flickr30kEntities | str | Path, features: RegionFeatures | str | Path,
           confidence: str | None, device: str | torch.device | None, progress: bool, **options) -> ProbeResults:
    """One probe pass over the model as it is, in eval mode, with the readers opened once."""
    encoder = _model(model)
    device = str(resolve_device(str(device))) if device is not None else next(encoder.parameters()).device.type
    flickr = open_grounding_set(flickr30k, relations=bool(options.get("relations")))
    family = family_of(encoder)
    features = open_inputs(family, features, features, confidence)  # pixel families: the images folder
    where = {"images" if reads_pixels(family) else "features": Path(features.source)}
    cfg = ProbeConfig(flickr30k=flickr.root, device=device, confidence=confidence, **where, **options)
    with _eval_mode(encoder):
        placed = encoder if getattr(encoder, "hf_device_map", None) else encoder.to(device)  # accelerate placed it
        return run_probes(cfg, placed, tokenizer, progress=progress, flickr30k=flickr, features=features)


def entity_grounding(
    model: torch.nn.Module,
    tokenizer,
    flickr30k: Flickr30kEntities | str | Path,
    features: RegionFeatures | str | Path,
    *,
    split: str = "test",
    mask: Literal["posthoc", "intervene"] = "posthoc",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    limit: int | None = None,
    select_on: str | None = None,
    control: bool = False,
    confidence: str | None = None,
    skip_unannotated: bool = False,
    skip_missing_features: bool = False,
    progress: bool = False,
) -> GroundingResult:
    """Score every head of ``model`` as it is (edits in memory included) against Flickr30K Entities gold boxes.

    ``flickr30k``: a :class:`Flickr30kEntities` or its root; ``features``: a feature store or its path (TSV, HDF5,
    folder of npz), or for a model that reads pixels (ViLT) the images folder or an
    :class:`~vb_probe.data.images.ImageFolder`. ``select_on``: also choose heads on that split (the unbiased
    number); ``control``: also probe a random-initialised model of the same shape. Returns a :class:`GroundingResult`.
    """
    return grounding_result(_probe(
        model, tokenizer, flickr30k, features, confidence, device, progress, split=split, mask=mask,
        batch_size=batch_size, precision=precision, limit=limit, select_on=select_on, control=control,
        skip_unannotated=skip_unannotated, skip_missing_features=skip_missing_features))


def syntactic_grounding(
    model: torch.nn.Module,
    tokenizer,
    flickr30k: Flickr30kEntities | str | Path,
    features: RegionFeatures | str | Path,
    *,
    relations: Sequence[str] = ("nsubj", "dobj", "pobj"),
    parses: str | Path | None = None,
    parser: Literal["spacy"] | None = None,
    spacy_model: str | None = None,
    split: str = "test",
    mask: Literal["posthoc", "intervene"] = "posthoc",
    batch_size: int = 32,
    device: str | torch.device | None = None,
    precision: Literal["fp32", "bf16"] = "fp32",
    limit: int | None = None,
    select_on: str | None = None,
    control: bool = False,
    confidence: str | None = None,
    progress: bool = False,
) -> SyntacticResult:
    """Per dependency relation and direction, every head's grounding of the arc's other word (Figure 4).

    ``parses``: a CoNLL-U file whose tokens are the captions' words; without it, ``parser="spacy"`` parses them
    (the default when neither is given). ``relations``: names as the parses spell them (one name or several), or
    ``"all"``.
    """
    return syntactic_result(_probe(
        model, tokenizer, flickr30k, features, confidence, device, progress, split=split, mask=mask,
        batch_size=batch_size, precision=precision, limit=limit, select_on=select_on, control=control, entity=False,
        relations=(relations,) if isinstance(relations, str) else tuple(relations), parses=Path(parses) if parses else None,
        parser=parser or (None if parses else "spacy"), spacy_model=spacy_model))


def region_attention(
    model: torch.nn.Module,
    tokenizer,
    words: Sequence[str],
    regions: Regions | np.ndarray,
    *,
    mask: Literal["posthoc", "intervene"] = "posthoc",
    visual_token_type: int | None = None,
) -> np.ndarray:
    """For one caption and one image: every head's attention from each word to each region.

    ``words``: the caption's words (a string is split on spaces, as the probe splits captions); ``regions``: a
    :class:`Regions` (e.g. ``open_features(p)[image_id]``) or a [R, visual_dim] feature array. Returns
    [layer, head, word, region] float32: the attention row of each word's last sub-word on the region columns,
    after the text-to-text mask (``posthoc``: text columns dropped after the pass, rows not renormalised;
    ``intervene``: text-to-text attention blocked inside every layer).
    A word cut by truncation gets a row of NaN.
    """
    encoder = _model(model)
    if isinstance(words, str):  # a caption as one string: its words, split on spaces as the probe splits them
        words = words.split()
    features = regions.features if isinstance(regions, Regions) else np.asarray(regions, dtype=np.float32)
    if features.ndim != 2 or not len(features):
        raise VbProbeError(f"region_attention: regions have shape {tuple(features.shape)}, expected [R, D] (R ≥ 1 "
                           "regions of D features each; one region is [1, D])")
    if not isinstance(regions, Regions):
        regions = Regions("example", np.zeros((len(features), 4), np.float32), features, None, None, None)
    facts = family_of(encoder).prepare(encoder, SingleImage(regions), {"visual_token_type": visual_token_type})
    with _eval_mode(encoder):
        return word_region_attention(encoder, tokenizer, tuple(words), regions, facts, max_text_len=10**9, mask=mask)


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


def _masked_phrases(model, tokenizer, flickr30k, features, split: str, limit: int | None, progress: bool):
    tools = _interventions(model)
    flickr30k = open_grounding_set(flickr30k)
    features = open_features(features) if isinstance(features, (str, Path)) else features
    items = tools.masked_phrases(flickr30k, features, tokenizer, split, limit, progress=progress)
    if not items:
        raise VbProbeError(f"no phrase with gold boxes in the first {limit} images of split {split!r}")
    return tools, items


def attribute(model: torch.nn.Module, tokenizer, flickr30k: Flickr30kEntities | str | Path,
              features: RegionFeatures | str | Path, *, split: str = "test", limit: int | None = 20, steps: int = 32,
              progress: bool = False) -> AttributionResult:
    """Integrated gradients (captum) of each masked entity word's prediction with respect to the regions and the
    words, against each head's attention: how often a head's most-attended region is the top-attributed one.
    ``model``: from :func:`load_masked_lm`. Returns an :class:`AttributionResult` (``save``, ``load``, ``plot``)."""
    tools, items = _masked_phrases(model, tokenizer, flickr30k, features, split, limit, progress)
    with _eval_mode(model):
        return tools.attribute(model, items, tokenizer.pad_token_id, steps=steps, progress=progress)


def causal_check(model: torch.nn.Module, tokenizer, flickr30k: Flickr30kEntities | str | Path,
                 features: RegionFeatures | str | Path, scores: str | Path, *, k: int = 12, draws: int = 20,
                 seed: int = 0, split: str = "test", limit: int | None = 20, progress: bool = False) -> CausalResult:
    """Ablate the ``k`` best grounding heads of ``scores`` (an entity-grounding folder or its CSV) and, per draw, k
    random others; the drop in masked entity-word accuracy with a bootstrap interval and an empirical p-value.
    ``model``: from :func:`load_masked_lm`. Returns a :class:`CausalResult` (``save``, ``load``, ``plot``)."""
    _interventions(model)  # a masked-LM model, before the scores are read against its shape
    heads = top_heads_from_csv(Path(scores), k, model_shape=head_shape(family_of(model).load(model)))
    tools, items = _masked_phrases(model, tokenizer, flickr30k, features, split, limit, progress)
    with _eval_mode(model):
        return tools.causal_check(model, items, heads, tokenizer.pad_token_id, random_draws=draws, seed=seed,
                                  progress=progress)
