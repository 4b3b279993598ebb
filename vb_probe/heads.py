"""Heads and their names: ``L{layer}H{head}``, 0-based, the one place heads are named in tables, files, figures and
pages. A leaf: the results and the figures both import it, neither imports the other for it."""

from __future__ import annotations

from typing import NamedTuple


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
