"""Visual attention sinks (Kang et al., ICLR 2025, arXiv 2503.03321): image tokens whose hidden state carries a
massive activation in a few fixed dimensions, at least :data:`SINK_RATIO` times the state's root mean square.
Pure functions over tensors; the hooks that read the hidden states live with the decoder family
(:mod:`vb_probe.families.decoder.sinks`).

Shapes: ``hidden`` [..., D] hidden states; ratios [...] per token.
"""

from __future__ import annotations

import torch

SINK_RATIO = 20.0  # Kang et al.: a sink's largest value in the sink dimensions is ≥ 20 × its RMS
FIRST_LAYER = 2  # sinks are read from this layer on (the first layers' states are the embeddings, barely mixed)


def massive_ratio(hidden: torch.Tensor, dims: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``hidden`` [..., D] → (ratio [...], dim [...]): each token's largest absolute value over ``dims`` (None: over
    every dimension) divided by its root mean square over all D, and the dimension holding it. Computed in fp32."""
    hidden = hidden.float()
    rms = hidden.pow(2).mean(-1).sqrt().clamp(min=torch.finfo(torch.float32).tiny)
    values = hidden.abs() if dims is None else hidden.abs().index_select(-1, dims.to(hidden.device))
    peak, where = values.max(-1)
    dim = where if dims is None else dims.to(hidden.device)[where]
    return peak / rms, dim


def sink_tokens(ratios: torch.Tensor, threshold: float = SINK_RATIO, first_layer: int = FIRST_LAYER) -> torch.Tensor:
    """``ratios`` [layer, ..., R] → [..., R] bool: a token is a sink when its ratio reaches ``threshold`` in any
    layer from ``first_layer`` on."""
    return (ratios[first_layer:] >= threshold).any(0) if ratios.shape[0] > first_layer else torch.zeros(
        ratios.shape[1:], dtype=torch.bool)


def found_dims(dim_counts: torch.Tensor, share: float = 0.9) -> list[int]:
    """The sink dimensions found from the model: ``dim_counts`` [D] how often each dimension held a massive value
    (ratio ≥ :data:`SINK_RATIO`); the fewest dimensions that hold ``share`` of them, most frequent first."""
    total = int(dim_counts.sum())
    if not total:
        return []
    order = torch.argsort(dim_counts, descending=True, stable=True)
    cumulative = torch.cumsum(dim_counts[order], 0)
    keep = int((cumulative < share * total).sum()) + 1
    return [int(d) for d in order[:keep] if int(dim_counts[d]) > 0]


__all__ = ["FIRST_LAYER", "SINK_RATIO", "found_dims", "massive_ratio", "sink_tokens"]
