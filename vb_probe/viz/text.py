"""Text from data (words, ids, split and relation names) drawn as it is: matplotlib reads ``$…$`` as mathtext,
so a caption holding ``$\\foo$`` would fail to draw (or draw something else). Every such string goes through
:func:`plain`."""

from __future__ import annotations


def plain(text: object) -> str:
    """``text`` with its dollar signs escaped, so matplotlib draws it literally (``\\$`` is a literal ``$``)."""
    return str(text).replace("$", r"\$")
