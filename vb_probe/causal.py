"""The causal check of any family: does taking out the heads that ground best cost the model more than taking out
as many random heads?

One measure per item is read with nothing ablated, with the top-k heads ablated, and with k random other heads
ablated (one set per draw), through the family's own :meth:`~vb_probe.families.FamilyBase.ablate_heads`; the
statistics are :func:`vb_probe.metrics.causal.causal_summary`'s. The measure is the family's: masked entity-word
accuracy for a model with a masked-LM head (VisualBERT, :mod:`vb_probe.families.visualbert.interventions`), and
for a decoder the caption's mean log-probability per token given the image (:func:`caption_log_prob_check`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.heads import head_label
from vb_probe.metrics.causal import causal_summary
from vb_probe.results import CausalResult

Heads = list[tuple[int, int]]


def ablation_outcomes(measure: Callable[[], np.ndarray], ablate: Callable[[Heads], AbstractContextManager],
                      top_heads: Heads, shape: tuple[int, int], *, draws: int = 20, seed: int = 0,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``measure()`` [n] with nothing ablated, inside ``ablate(top_heads)``, and inside ``ablate`` of k random heads
    of the other ``shape`` (layers, heads) ones, ``draws`` times (seeded): (intact [n], top [n], random [draws, n])."""
    from tqdm.auto import tqdm

    if draws < 1:
        raise VbProbeError(f"--draws {draws}: the control needs at least 1 draw of random heads")
    layers, heads = shape
    chosen = set(top_heads)
    pool = [(l, h) for l in range(layers) for h in range(heads) if (l, h) not in chosen]
    if len(pool) < len(top_heads):
        raise VbProbeError(f"-k {len(top_heads)}: the model has {layers * heads} heads, too few for k random others "
                           f"as a control; use -k {layers * heads // 2} or less")
    intact = measure()
    with ablate(top_heads):
        top = measure()
    rng = np.random.default_rng(seed)
    random_outcomes = []
    for _ in tqdm(range(draws), desc=f"{len(top_heads)} random heads ablated", unit="draw", disable=not progress,
                  leave=False):
        drawn = [pool[i] for i in rng.choice(len(pool), len(top_heads), replace=False)]
        with ablate(drawn):
            random_outcomes.append(measure())
    return intact, top, np.stack(random_outcomes)


def caption_log_prob_check(family, model, tokenizer, items: Sequence, store, facts: dict, top_heads: Heads, *,
                           draws: int = 20, seed: int = 0, batch_size: int = 8, max_text_len: int = 128,
                           precision: str = "fp32", device: torch.device | str = "cpu", progress: bool = False
                           ) -> CausalResult:
    """A decoder's causal check: each caption's mean log-probability per token (nats) given its image and prompt,
    with nothing, the top-k, or k random heads ablated; ``items`` the probe's (one a caption), batched and collated
    once. The drop is intact minus ablated: positive when the heads mattered."""
    from vb_probe.batching import to_device

    batches = [to_device(family.collate(model, list(items[start:start + batch_size]), tokenizer, facts, max_text_len,
                                        store), device) for start in range(0, len(items), batch_size)]

    def measure() -> np.ndarray:
        with torch.no_grad():
            return torch.cat([family.caption_log_probs(model, batch, precision) for batch in batches]).numpy()

    site = family.sites(model)[0]
    intact, top, random_draws = ablation_outcomes(measure, lambda heads: family.ablate_heads(model, heads), top_heads,
                                                  site.shape, draws=draws, seed=seed, progress=progress)
    summary = causal_summary(intact, top, random_draws, seed=seed, measure="log_prob")
    return CausalResult({"k": len(top_heads), "heads_ablated": [head_label(l, h) for l, h in top_heads], **summary,
                         "captions": len(items)})


__all__ = ["ablation_outcomes", "caption_log_prob_check"]
