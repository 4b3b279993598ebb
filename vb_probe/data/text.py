"""Reading text files line by line, as the data formats define lines."""

from __future__ import annotations


def text_lines(text: str) -> list[str]:
    """Lines as the files define them: ended by a newline (``\\r\\n`` too). Unlike ``str.splitlines``, a U+2028 or
    other Unicode separator inside a caption does not split it in two (which would shift every later caption's
    index)."""
    return [line.removesuffix("\r") for line in text.split("\n")]
