"""Readers of the real data formats. No model (torch) imports here."""

from vb_probe.data.coco import CocoImage, read_karpathy
from vb_probe.data.features import Regions, open_features
from vb_probe.data.flickr30k import Annotation, Caption, Flickr30kEntities, Phrase
from vb_probe.data.parses import Parse, SpacyParser, read_conllu

__all__ = ["Annotation", "Caption", "CocoImage", "Flickr30kEntities", "Parse", "Phrase", "Regions",
           "SpacyParser", "open_features", "read_conllu", "read_karpathy"]
