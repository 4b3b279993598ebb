"""The only module that reaches into the model's layers.

Hook points have stable dotted names, 0-based layers (``L{l}H{h}`` labels elsewhere):

==============================  =====================================================
``blocks.{l}.resid_pre``        [batch, seq, hidden]   input of layer l
``blocks.{l}.attn.q|k|v``       [batch, head, seq, d_head]
``blocks.{l}.attn.scores``      [batch, head, query, key]  pre-softmax, mask added
``blocks.{l}.attn.pattern``     [batch, head, query, key]  rows sum to 1
``blocks.{l}.attn.pattern_rows`` [n_rows, head, key]  rows of selected queries only
``blocks.{l}.attn.z``           [batch, seq, head, d_head] per-head outputs
``blocks.{l}.resid_post``       [batch, seq, hidden]   output of layer l
==============================  =====================================================

With early fusion off, the extra fusion layer is ``blocks.{num_hidden_layers}``. Every context manager
here removes what it added in ``finally``, so an exception never leaves a hook behind.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.visualbert.model import HookPoint, RowSelection, VisualBertModel
from vb_probe.results import head_label

_ATTN_POINTS = {"q": "hook_q", "k": "hook_k", "v": "hook_v", "scores": "hook_scores",
                "pattern": "hook_pattern", "pattern_rows": "hook_pattern_rows", "z": "hook_z"}
_LAYER_POINTS = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post"}


def hook_points(model: VisualBertModel) -> dict[str, HookPoint]:
    """Every named hook point of the model, in forward order."""
    points: dict[str, HookPoint] = {}
    for l, block in enumerate(model.blocks):
        points[f"blocks.{l}.resid_pre"] = block.hook_resid_pre
        for name, attr in _ATTN_POINTS.items():
            points[f"blocks.{l}.attn.{name}"] = getattr(block.attention.self, attr)
        points[f"blocks.{l}.resid_post"] = block.hook_resid_post
    return points


def _select(model: VisualBertModel, patterns: Sequence[str] | str) -> dict[str, HookPoint]:
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    points = hook_points(model)
    chosen = {n: p for n, p in points.items() if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)}
    if not chosen:
        raise ValueError(f"no hook point matches {patterns}; names look like 'blocks.0.attn.pattern'")
    return chosen


class ActivationCache(dict):
    """Hook-point name → captured tensor (detached). ``stack('attn.pattern')`` stacks layers on dim 0."""

    def stack(self, suffix: str) -> torch.Tensor:
        keys = [k for k in self if k.endswith("." + suffix)]
        keys.sort(key=lambda k: int(k.split(".")[1]))
        return torch.stack([self[k] for k in keys])


@contextmanager
def capture(model: VisualBertModel, names: Sequence[str] | str) -> Iterator[ActivationCache]:
    """Capture the hook points matching ``names`` (glob patterns) into a cache during the block's forwards."""
    cache = ActivationCache()
    handles = []
    try:
        for name, point in _select(model, names).items():
            handles.append(point.register_forward_hook(lambda _m, _i, out, name=name: cache.__setitem__(name, out.detach())))
        yield cache
    finally:
        for h in handles:
            h.remove()


@contextmanager
def edit(model: VisualBertModel, edits: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
    """Replace each named hook point's output by ``fn(output)`` during the block's forwards."""
    handles = []
    try:
        for pattern, fn in edits.items():
            for point in _select(model, pattern).values():
                handles.append(point.register_forward_hook(lambda _m, _i, out, fn=fn: fn(out)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def ablate_heads(
    model: VisualBertModel,
    heads: Sequence[tuple[int, int]],
    mode: Literal["zero", "mean"] = "zero",
) -> Iterator[None]:
    """Knock out heads ``(layer, head)``: their per-head output ``z`` set to 0, or to its mean over the
    batch's positions (``mean``), before the output projection."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"ablation mode {mode!r}: use 'zero' or 'mean'")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        if not (0 <= layer < len(model.blocks) and 0 <= head < model.config.num_attention_heads):
            raise VbProbeError(f"head {head_label(layer, head)} does not exist in a {len(model.blocks)}-layer, "
                               f"{model.config.num_attention_heads}-head model; were the scores made with this model?")
        by_layer.setdefault(layer, []).append(head)

    def make(head_ids: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        def ablate(z: torch.Tensor) -> torch.Tensor:  # z [batch, seq, head, d_head]
            z = z.clone()
            if mode == "zero":
                z[:, :, head_ids] = 0.0
            else:
                z[:, :, head_ids] = z[:, :, head_ids].mean(dim=(0, 1), keepdim=True)
            return z
        return ablate

    with edit(model, {f"blocks.{l}.attn.z": make(h) for l, h in by_layer.items()}):
        yield


@contextmanager
def mask_text_to_text(model: VisualBertModel) -> Iterator[None]:
    """Block text-to-text attention inside every layer (the ``intervene`` mask mode): text queries see
    regions only, region queries see everything not padded."""
    previous = model.block_text_to_text
    model.block_text_to_text = True
    try:
        yield
    finally:
        model.block_text_to_text = previous


@contextmanager
def capture_attention_rows(
    model: VisualBertModel, batch_index: torch.Tensor, query_index: torch.Tensor, batch_size: int | None = None
) -> Iterator[ActivationCache]:
    """Compute only the attention rows of the given (batch, query) pairs in every layer.

    Yields a cache; after the forward, ``cache.stack("attn.pattern_rows")`` is ``[layer, n_rows, head, key]``.
    The rest of the attention stays fused, so probing costs about a plain forward.
    """
    attentions = [block.attention.self for block in model.blocks]
    size = batch_size if batch_size is not None else (int(batch_index.max()) + 1 if len(batch_index) else 1)
    selection = RowSelection.build(batch_index, query_index, size)
    with capture(model, "blocks.*.attn.pattern_rows") as cache:
        try:
            for attn in attentions:
                attn.rows_to_capture = selection
            yield cache
        finally:
            for attn in attentions:
                attn.rows_to_capture = None
