"""The causal check's statistics, from per-item outcomes alone (pure numpy, testable by hand).

Ablating the k best grounding heads is compared with ablating k random heads: how far the measure drops (masked
entity-word accuracy for a masked-LM model, a caption's mean log-probability for a decoder), a bootstrap interval
over items, and an empirical p-value that places the top-k drop among the random-k drops. When the p-value or the
interval does not separate them, the summary says so.
"""

from __future__ import annotations

import numpy as np

from vb_probe.metrics.intervals import shown

# each measure (the key prefix of its values in the summary): its name on figures and the console, and in verdicts
MEASURES = {"accuracy": "masked entity-word accuracy",
            "log_prob": "caption log-probability (mean over its tokens, nats)"}
_VERDICT_NAMES = {"accuracy": "accuracy", "log_prob": "caption log-probability"}


def causal_summary(intact: np.ndarray, top_k: np.ndarray, random_k: np.ndarray, *, bootstrap: int = 1000,
                   seed: int = 0, alpha: float = 0.05, measure: str = "accuracy") -> dict:
    """``intact`` and ``top_k`` [n]: each item's outcome with nothing / the top-k heads ablated (bool: its masked
    word predicted right; float: its caption's log-probability); ``random_k`` [draws, n]: the same with k random
    heads ablated, one row per draw. ``measure`` (a :data:`MEASURES` key) names the values.

    Returns the measure's means as ``<measure>_intact``, ``<measure>_top_k_ablated``, ``<measure>_random_k_ablated``,
    ``drop_top_k``, ``drop_random_k`` (mean over draws) and their per-draw values,
    ``excess_drop`` (top-k drop − mean random-k drop) with 95% bootstrap intervals over phrases (percentile,
    ``bootstrap`` resamples), ``p_value`` = (1 + #draws whose drop ≥ the top-k drop) / (1 + draws), and
    ``distinguishable``: p ≤ ``alpha`` and the excess drop's interval above 0.
    """
    intact, top_k, random_k = (np.asarray(a, dtype=float) for a in (intact, top_k, np.atleast_2d(random_k)))
    n, draws = len(intact), len(random_k)
    drops_random = intact.mean() - random_k.mean(1)
    drop_top = float(intact.mean() - top_k.mean())
    rng = np.random.default_rng(seed)
    resampled = rng.integers(0, n, size=(bootstrap, n))
    boot_top = intact[resampled].mean(1) - top_k[resampled].mean(1)
    boot_random = intact[resampled].mean(1) - random_k[:, resampled].mean(2).mean(0)
    low_high = (100 * alpha / 2, 100 * (1 - alpha / 2))
    top_interval = np.percentile(boot_top, low_high)
    excess_interval = np.percentile(boot_top - boot_random, low_high)
    p_value = float((1 + np.sum(drops_random >= drop_top)) / (1 + draws))
    distinguishable = bool(p_value <= alpha and excess_interval[0] > 0)
    excess = drop_top - float(drops_random.mean())
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}: use one of {', '.join(MEASURES)}")
    name = _VERDICT_NAMES[measure]
    if distinguishable:
        verdict = (f"ablating the top-k heads drops {name} {shown(excess)} more than ablating k random heads "
                   f"(95% interval {shown(excess_interval[0])} to {shown(excess_interval[1])}; p = {shown(p_value)})")
    else:
        verdict = (f"not distinguishable from ablating k random heads: excess drop {shown(excess)} (95% interval "
                   f"{shown(excess_interval[0])} to {shown(excess_interval[1])}), p = {shown(p_value)} over {draws} "
                   "draws")
    return {"n": n, "measure": measure, f"{measure}_intact": float(intact.mean()),
            f"{measure}_top_k_ablated": float(top_k.mean()), f"{measure}_random_k_ablated": float(random_k.mean()),
            "random_draws": random_k.mean(1).tolist(),
            "drop_top_k": drop_top, "drop_top_k_ci95": [float(v) for v in top_interval],
            "drop_random_k": float(drops_random.mean()), "drop_random_k_draws": drops_random.tolist(),
            "excess_drop": excess, "excess_drop_ci95": [float(v) for v in excess_interval],
            "p_value": p_value, "distinguishable": distinguishable, "verdict": verdict,
            "bootstrap_resamples": bootstrap}
