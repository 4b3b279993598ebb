"""Figures. Each function takes an optional ``ax`` and returns the figure; no pyplot state is touched."""

from vb_probe.viz.head_grid import plot_head_grid
from vb_probe.viz.relations import plot_relation_curves

__all__ = ["plot_head_grid", "plot_relation_curves"]
