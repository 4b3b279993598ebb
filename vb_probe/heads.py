"""Heads and their names: ``L{layer}H{head}``, 0-based, the one place heads are named in tables, files, figures and
pages. A leaf: the results and the figures both import it, neither imports the other for it."""

from __future__ import annotations

from typing import NamedTuple


def parse_head_label(text: str) -> tuple[int, int]:
    """``L8H6`` → (8, 6); a ValueError naming what was expected otherwise."""
    import re

    match = re.fullmatch(r"[Ll](\d+)[Hh](\d+)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a head: name it L<layer>H<head>, e.g. L8H6")
    return int(match.group(1)), int(match.group(2))


def head_label(layer: int, head: int) -> str:
    """``L{layer}H{head}``, 0-based: the one place heads are named, in tables, files and figures."""
    return f"L{layer}H{head}"


class Head(NamedTuple):
    """One head and its accuracy; ``L{layer}H{head}``, 0-based, everywhere."""

    layer: int
    head: int
    accuracy: float

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)


class SelectedHead(NamedTuple):
    """A head chosen on another split (``selected_on``) and scored here: the unbiased number to report."""

    layer: int
    head: int
    accuracy: float
    selected_on: str
    accuracy_on_selection_split: float

    @property
    def label(self) -> str:
        return head_label(self.layer, self.head)
