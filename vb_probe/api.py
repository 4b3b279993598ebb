"""The public verbs, for notebooks and scripts: load any VisualBERT, probe it, get typed results.

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
from vb_probe.errors import CheckpointError, VbProbeError
from vb_probe.hub import DEFAULT_TOKENIZER, resolve
from vb_probe.model import VisualBertModel
from vb_probe.pipeline import ProbeConfig, ProbeResults, resolve_device, run_probes, word_region_attention
from vb_probe.results import GroundingResult, SyntacticResult, grounding_result, syntactic_result


def load_model_and_tokenizer(cfg: ProbeConfig):
    """The checkpoint ``cfg.ckpt`` (folder or hub id) and its tokenizer (``cfg.tokenizer``, the checkpoint's own,
    else bert-base-uncased), on ``cfg.device``."""
    device = resolve_device(cfg.device)
    model = load_model(cfg.ckpt, device=device)
    return model, load_tokenizer(cfg.tokenizer, model=model), device


class TokenizerFallback(UserWarning):
    """The checkpoint has no tokenizer of its own; bert-base-uncased is used (as for every uclanlp checkpoint)."""


ModelSource = str | Path | torch.nn.Module


def load_model(src: ModelSource, *, device: str | torch.device | None = None) -> VisualBertModel:
    """A :class:`VisualBertModel` in eval mode from any VisualBERT:

    - a checkpoint folder (transformers format, with or without the ``visual_bert.`` prefix of task models);
    - a hub id such as ``uclanlp/visualbert-vqa-coco-pre``, through the hub cache (``HF_HOME``,
      ``HF_HUB_OFFLINE``);
    - a model in memory: ours (returned as it is, edits included), our pre-training model (its encoder), or
      transformers' ``VisualBertModel`` / ``VisualBertFor*`` (converted by parameter name; task heads set aside).
    """
    model = _encoder(src)
    if device is not None:
        model.to(resolve_device(str(device)))
    return model.eval()


def _encoder(src: ModelSource) -> VisualBertModel:
    """Our encoder for ``src``, its training mode untouched (the probes set and restore it)."""
    from vb_probe.checkpoints import load_model as load_folder

    if isinstance(src, VisualBertModel):
        return src
    if isinstance(src, torch.nn.Module):
        return _from_module(src)
    model = load_folder(resolve(src, "--ckpt"))
    if str(src) != str(model.checkpoint_path):
        model.load_notes.append(f"{src} resolved to {model.checkpoint_path}")
    return model


def _from_module(module: torch.nn.Module) -> VisualBertModel:
    """Our encoder from a module in memory: ours inside a wrapper, or transformers' VisualBERT classes."""
    from vb_probe.checkpoints import _fit_state_dict, _skeleton

    inner = getattr(module, "visual_bert", None)
    if isinstance(inner, VisualBertModel):
        return inner
    config = getattr(module, "config", None)
    if getattr(config, "model_type", None) != "visual_bert":
        raise CheckpointError(f"{type(module).__name__}: not a VisualBERT model (config.model_type "
                              f"{getattr(config, 'model_type', None)!r}); pass a checkpoint folder, a hub id, or a "
                              "VisualBertModel / VisualBertFor* object")
    from vb_probe.model import VisualBertConfig

    ours = VisualBertConfig.from_dict(config.to_dict())
    state = {k: v.detach() for k, v in module.state_dict().items()}
    fitted, set_aside = _fit_state_dict(_skeleton(ours, Path(type(module).__name__)), state,
                                        Path(type(module).__name__), prefixes=("visual_bert.",))
    model = VisualBertModel(ours).to(next(module.parameters()).device)
    model.load_state_dict(fitted, strict=True)
    model.load_notes = [f"converted from {type(module).__name__} in memory"] + (
        [f"set aside {len(set_aside)} task-head weights"] if set_aside else [])
    model.checkpoint_path = None
    return model


def load_tokenizer(src: str | Path | None = None, model: torch.nn.Module | None = None):
    """The tokenizer for ``model``: ``src`` (a folder or hub id) when given; else the checkpoint's own when its
    folder has one; else ``bert-base-uncased`` (the tokenizer every uclanlp checkpoint was trained with), saying
    so in one line (a :class:`TokenizerFallback` warning). Checked against the model's vocabulary size."""
    from vb_probe.tokenization import has_tokenizer_files
    from vb_probe.tokenization import load_tokenizer as load_folder

    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if src is None:
        folder = getattr(model, "checkpoint_path", None)
        if folder is not None and has_tokenizer_files(folder):
            return load_folder(folder, vocab_size=vocab_size)
        warnings.warn(f"{folder or 'the model'} has no tokenizer files; using {DEFAULT_TOKENIZER}, the tokenizer of "
                      "the uclanlp VisualBERT checkpoints (pass a tokenizer to use another)", TokenizerFallback,
                      stacklevel=2)
        src = DEFAULT_TOKENIZER
    return load_folder(resolve(src, "--tokenizer"), vocab_size=vocab_size)


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Probe in eval mode (dropout would distort the weights read), then give the model back as it was."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def _probe(model, tokenizer, flickr: Flickr30kEntities | str | Path, features: RegionFeatures | str | Path,
           confidence: str | None, device: str | torch.device | None, progress: bool, **options) -> ProbeResults:
    """One probe pass over the model as it is, in eval mode, with the readers opened once."""
    encoder = _encoder(model)
    device = str(resolve_device(str(device))) if device is not None else next(encoder.parameters()).device.type
    flickr = flickr if isinstance(flickr, Flickr30kEntities) else Flickr30kEntities(flickr)
    features = open_features(features, confidence) if isinstance(features, (str, Path)) else features
    cfg = ProbeConfig(flickr30k=flickr.root, features=Path(features.source), device=device, confidence=confidence,
                      **options)
    with _eval_mode(encoder):
        return run_probes(cfg, encoder.to(device), tokenizer, progress=progress, flickr=flickr, features=features)


def entity_grounding(
    model: torch.nn.Module,
    tokenizer,
    flickr: Flickr30kEntities | str | Path,
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

    ``flickr``: a :class:`Flickr30kEntities` or its root; ``features``: a feature store or its path (TSV, HDF5,
    folder of npz). ``select_on``: also choose heads on that split (the unbiased number); ``control``: also probe
    a random-initialised model of the same shape. Returns a :class:`GroundingResult`.
    """
    return grounding_result(_probe(
        model, tokenizer, flickr, features, confidence, device, progress, split=split, mask=mask,
        batch_size=batch_size, precision=precision, limit=limit, select_on=select_on, control=control,
        skip_unannotated=skip_unannotated, skip_missing_features=skip_missing_features))


def syntactic_grounding(
    model: torch.nn.Module,
    tokenizer,
    flickr: Flickr30kEntities | str | Path,
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
        model, tokenizer, flickr, features, confidence, device, progress, split=split, mask=mask,
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
    encoder = _encoder(model)
    if isinstance(words, str):  # a caption as one string: its words, split on spaces as the probe splits them
        words = words.split()
    width = encoder.config.visual_embedding_dim
    features = regions.features if isinstance(regions, Regions) else np.asarray(regions, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] != width or not len(features):
        raise VbProbeError(f"region_attention: regions have shape {tuple(features.shape)}, expected [R, {width}] "
                         f"(R ≥ 1 regions of the model's visual_embedding_dim); one region is [1, {width}]")
    if not isinstance(regions, Regions):
        regions = Regions("example", np.zeros((len(features), 4), np.float32), features, None, None, None)
    if visual_token_type is None:
        visual_token_type = getattr(encoder.config, "visual_token_type_id", 1)
    with _eval_mode(encoder):
        return word_region_attention(encoder, tokenizer, tuple(words), regions, visual_token_type,
                                     max_text_len=encoder.config.max_position_embeddings, mask=mask)
