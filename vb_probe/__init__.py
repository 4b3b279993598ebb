"""vb-probe: train VisualBERT and find out what its attention heads do.

The heavy modules (torch, transformers) load on first use so that ``import vb_probe`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_model", "VisualBertModel", "VbProbeError", "__version__"]


def __getattr__(name: str):
    if name == "load_model":
        from vb_probe.checkpoints import load_model

        return load_model
    if name == "VisualBertModel":
        from vb_probe.model import VisualBertModel

        return VisualBertModel
    if name == "VbProbeError":
        from vb_probe.errors import VbProbeError

        return VbProbeError
    raise AttributeError(name)
