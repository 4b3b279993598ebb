"""Reading a few attention rows of a decoder without eager attention everywhere.

Under transformers 5, ``output_attentions=True`` with sdpa returns nothing, and eager attention on a 7B model at
thousands of tokens materialises every layer's full ``[batch, heads, S, S]`` map. Here one attention function is
registered with transformers' ``AttentionInterface`` under :data:`ROW_CAPTURE`, with the matching mask function in
``AttentionMaskInterface`` (without it transformers builds *no* mask for an unknown implementation, and a
bidirectional image prefix such as PaliGemma's silently becomes causal). The function returns sdpa's output
unchanged, and, while :func:`capture_rows` is active, also runs the model file's own ``eager_attention_forward`` on
the chosen query positions only: ``[batch, heads, P, keys]`` per layer, P the number of query rows wanted. Memory is
the rows, not the maps.

The same function ablates heads: while :func:`ablate` is active, the planned heads' outputs of a layer are zeroed
before the layer's output projection (the slice :mod:`vb_probe.families.ablation` zeroes for the other families),
so a head is taken out by the code that computes it, whatever module surrounds it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

ROW_CAPTURE = "vb_probe_rows"


@dataclass
class RowPlan:
    """Which rows to keep: ``positions`` [B, P] query positions of each batch row (padded with any valid position,
    ``keep`` [B, P] saying which are real); ``rows`` layer index → [B, heads, P, keys] float32, filled by the
    forward."""

    positions: torch.Tensor
    keep: torch.Tensor
    rows: dict[int, torch.Tensor] = field(default_factory=dict)


_PLAN: ContextVar[RowPlan | None] = ContextVar("vb_probe_row_plan", default=None)
_ABLATED: ContextVar[dict[int, list[int]] | None] = ContextVar("vb_probe_ablated_heads", default=None)


def _eager_of(module):
    """The eager attention code of the model file that defines ``module`` (its own GQA, scaling and softcapping)."""
    source = sys.modules[type(module).__module__]
    eager = getattr(source, "eager_attention_forward", None)
    if eager is None:
        raise TypeError(f"{type(module).__name__}: its model file has no eager_attention_forward; row capture needs one")
    return eager


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: attend) as the additive mask eager code adds; a float mask as it is."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def row_capture_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          **kwargs):
    """sdpa's output, unchanged; with a :class:`RowPlan` active, the planned query rows of this layer's attention
    through the model's own eager code. ``query`` [B, H, S, D], ``key``/``value`` [B, H_kv, K, D], ``attention_mask``
    [B, 1, S, K] (bool or additive) or None (causal)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                       **kwargs)  # [B, S, H, D]
    ablated = _ABLATED.get()
    if ablated and getattr(module, "layer_idx", None) in ablated:
        from vb_probe.families.ablation import head_keep

        output = output * head_keep(ablated[module.layer_idx], output.shape[2], output)  # [H, 1] over [B, S, H, D]
    plan = _PLAN.get()
    if plan is not None:
        batch, heads, _, dim = query.shape
        positions = plan.positions.to(query.device)  # [B, P]
        picked = query.gather(2, positions[:, None, :, None].expand(batch, heads, -1, dim))  # [B, H, P, D]
        keys = key.shape[2]
        if attention_mask is None:  # sdpa's causal fast path: the rows' causal mask, built here
            allowed = torch.arange(keys, device=query.device)[None, :] <= positions[:, :, None]  # [B, P, K]
            mask = allowed[:, None]
        else:
            mask = attention_mask.gather(2, positions[:, None, :, None].expand(-1, attention_mask.shape[1], -1, keys))
        eager = _eager_of(module)
        scale = scaling if scaling is not None else dim ** -0.5
        # the weights are wanted, not the output: an empty value makes the eager code's output (and its copy of
        # the values for grouped-query attention) cost nothing
        _, weights = eager(module, picked, key, value[..., :0], _additive(mask, query.dtype), scaling=scale,
                           dropout=0.0, **kwargs)
        plan.rows[getattr(module, "layer_idx", len(plan.rows))] = weights.float()
    return output, None


def register() -> str:
    """Register the attention function and its mask function (sdpa's) with transformers, once; returns the name
    to pass to ``set_attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ROW_CAPTURE, row_capture_attention)
    AttentionMaskInterface.register(ROW_CAPTURE, sdpa_mask)
    return ROW_CAPTURE


@contextmanager
def capture_rows(positions: torch.Tensor, keep: torch.Tensor | None = None) -> Iterator[RowPlan]:
    """While inside, every layer running :data:`ROW_CAPTURE` keeps the rows of ``positions`` [B, P] in the yielded
    plan's ``rows`` (layer → [B, heads, P, keys])."""
    plan = RowPlan(positions, keep if keep is not None else torch.ones_like(positions, dtype=torch.bool))
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


@contextmanager
def ablate(by_layer: dict[int, list[int]]) -> Iterator[None]:
    """While inside, every layer running :data:`ROW_CAPTURE` outputs zeros for its heads in ``by_layer``
    (layer → head indices)."""
    token = _ABLATED.set(by_layer)
    try:
        yield
    finally:
        _ABLATED.reset(token)
