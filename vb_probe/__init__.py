"""vb-probe: find out what the attention heads of vision-language transformers do (VisualBERT, whose trainer it ships,
LXMERT, ViLT and decoder VLMs): which heads ground words in the image, against gold boxes.

    import vb_probe
    model = vb_probe.load_model("uclanlp/visualbert-vqa-coco-pre")      # a folder, a hub id, or a model object
    tokenizer = vb_probe.load_tokenizer(model=model)
    result = vb_probe.entity_grounding(model, tokenizer, "flickr30k_entities", "features.tsv")
    result.best_head(), result.to_frame(), result.plot()

The heavy modules (torch, transformers) load on first use so that ``import vb_probe`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

# public name → the module that owns it
_EXPORTS = {
    "load_model": "vb_probe.api",
    "load_tokenizer": "vb_probe.api",
    "entity_grounding": "vb_probe.api",
    "ground": "vb_probe.api",
    "syntactic_grounding": "vb_probe.api",
    "region_attention": "vb_probe.api",
    "image_attention": "vb_probe.api",
    "read_maps": "vb_probe.results.records",
    "load_masked_lm": "vb_probe.api",
    "attribute": "vb_probe.api",
    "causal_check": "vb_probe.api",
    "ablate_heads": "vb_probe.api",
    "grounding_probes": "vb_probe.api",
    "open_session": "vb_probe.api",
    "attention_figure": "vb_probe.visualize",
    "GroundingSet": "vb_probe.data.annotations",
    "RefCoco": "vb_probe.data.refcoco",
    "VisualGenome": "vb_probe.data.visual_genome",
    "open_grounding_set": "vb_probe.data.grounding_sets",
    "TokenizerFallback": "vb_probe.api",
    "explore": "vb_probe.explorer",
    "GroundingResult": "vb_probe.results",
    "SyntacticResult": "vb_probe.results",
    "HeadScores": "vb_probe.results",
    "AttributionResult": "vb_probe.results",
    "CausalResult": "vb_probe.results",
    "Flickr30kEntities": "vb_probe.data.flickr30k",
    "open_features": "vb_probe.data.features",
    "families": "vb_probe.families",
    "VbProbeError": "vb_probe.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name == "families":
        return import_module("vb_probe.families")
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vb_probe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
