"""The decoder VLMs vb-probe reads, one module each, registered by model type (:mod:`.base` declares what a kind
says)."""

from vb_probe.families.decoder.kinds import (  # noqa: F401  (each registers itself)
    gemma3,
    idefics3,
    internvl,
    llava,
    llava_next,
    mllama,
    paligemma,
    qwen,
)
from vb_probe.families.decoder.kinds.base import KINDS, DecoderKind, kind_of, register_kind

__all__ = ["DecoderKind", "KINDS", "kind_of", "register_kind"]
