"""Where vb-probe keeps what it can rebuild (TSV byte-offset indexes, spaCy parses): the user's cache folder,
never a data folder. ``VB_PROBE_CACHE`` overrides it; else ``$XDG_CACHE_HOME/vb-probe`` or ``~/.cache/vb-probe``."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    """The cache folder (not created here: a cache that cannot be written is simply rebuilt next time)."""
    root = os.environ.get("VB_PROBE_CACHE")
    if root is None:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vb-probe"
    return Path(root).joinpath(*parts)
