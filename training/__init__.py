"""Builds, pre-trains and fine-tunes VisualBERT (imports vb_probe, never the reverse)."""
