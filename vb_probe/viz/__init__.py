"""Figures. Each function returns a matplotlib Figure (the grid can also draw into a given ``ax``); no pyplot state is touched."""

from vb_probe.viz.attention import plot_attention_on_image
from vb_probe.viz.head_grid import plot_head_grid
from vb_probe.viz.relations import plot_relation_panels

__all__ = ["plot_head_grid", "plot_relation_panels", "plot_attention_on_image"]
