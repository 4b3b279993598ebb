"""Head ablation: a head ``(layer, head)`` of a family's probed site made to add nothing to its layer's output.

The mechanism: every family's attention lays its heads' outputs side by side ([..., heads × d_head]) and sends them
through one output projection; zeroing a head's slice of that input is zeroing the head, exactly as zeroing its
columns of the projection's weight would be (the parity the tests hold), without touching the weights. Families
with an output projection of their own say which module it is (:meth:`FamilyBase.head_outputs`) and get a forward
pre-hook here; the decoders zero the same slice one step earlier, inside their registered attention function
(:mod:`.decoder.rows`). A module shared by two directions (LXMERT's cross-attention serves language → vision and
vision → language) has the head zeroed in both, as zeroing its weight would.
The cost: one multiply per ablated layer's forward.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from vb_probe.errors import VbProbeError
from vb_probe.heads import head_label


def heads_by_layer(heads: Sequence[tuple[int, int]], shape: tuple[int, int]) -> dict[int, list[int]]:
    """``heads`` grouped by layer, each checked to exist in a site of ``shape`` (layers, heads); one line naming
    the head and the shape."""
    layers, n_heads = shape
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < layers and 0 <= head < n_heads):
            raise VbProbeError(f"head {head_label(layer, head)} does not exist in a {layers}-layer, "
                               f"{n_heads}-head model; were the scores made with this model?")
        by_layer.setdefault(int(layer), []).append(int(head))
    return by_layer


def head_keep(head_ids: Sequence[int], n_heads: int, like: torch.Tensor) -> torch.Tensor:
    """[n_heads, 1] ones, zeros at ``head_ids``: multiplies a [..., n_heads, d_head] view of the heads' outputs."""
    keep = torch.ones(n_heads, 1, dtype=like.dtype, device=like.device)
    keep[list(head_ids)] = 0
    return keep


def zero_heads(side_by_side: torch.Tensor, head_ids: Sequence[int], n_heads: int) -> torch.Tensor:
    """``side_by_side`` [..., n_heads × d_head] with the slices of ``head_ids`` zero (a new tensor: the input may be
    needed by autograd)."""
    shape = side_by_side.shape
    split = side_by_side.reshape(*shape[:-1], n_heads, shape[-1] // n_heads)
    return (split * head_keep(head_ids, n_heads, side_by_side)).reshape(shape)


@contextmanager
def zero_at_projections(projections: Sequence[torch.nn.Module], by_layer: dict[int, list[int]], n_heads: int
                        ) -> Iterator[None]:
    """While inside, ``projections[layer]``'s input has the heads ``by_layer[layer]`` zeroed (forward pre-hooks,
    removed on the way out)."""
    handles = []

    def hook_for(head_ids: list[int]):
        def hook(_module, args):
            return (zero_heads(args[0], head_ids, n_heads), *args[1:])
        return hook

    try:
        for layer, head_ids in by_layer.items():
            handles.append(projections[layer].register_forward_pre_hook(hook_for(head_ids)))
        yield
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["head_keep", "heads_by_layer", "zero_at_projections", "zero_heads"]
