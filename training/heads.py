"""Heads for training. The pre-training heads live in :mod:`vb_probe.heads` (the probe's attribution and
causal checks use the masked-LM head too); the task heads for fine-tuning are here."""

from vb_probe.heads import VisualBertForPreTraining

__all__ = ["VisualBertForPreTraining"]
