"""Beyond reading attention: attribution (integrated gradients, captum) and a causal check (head ablation).

Both work on *masked phrases*: for each phrase with gold boxes, its last word's sub-words are replaced by
``[MASK]`` and the model predicts the word with the image in view.

* ``attribute``: integrated gradients of the masked word's logit with respect to the region features and
  the word embeddings; per head, how often its most-attended region (from the masked word) is the region
  with the largest attribution.
* ``causal_check``: masked-entity-word accuracy with the top-k grounding heads ablated, against k random
  heads ablated (several draws), and with nothing ablated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vb_probe.data.annotations import GroundingSet
from vb_probe.data.features import RegionFeatures
from vb_probe.errors import VbProbeError
from vb_probe.families.visualbert.hooks import ablate_heads, capture_attention_rows
from vb_probe.families.visualbert.inputs import pad_inputs
from vb_probe.metrics.boxes import region_hits
from vb_probe.metrics.causal import causal_summary
from vb_probe.queries import ENTITY, collect_items
from vb_probe.results import AttributionResult, CausalResult, head_label
from vb_probe.tokenization import tokenize_words


@dataclass
class MaskedPhrase:
    key: str
    phrase: str
    input_ids: list[int]  # with the word's sub-words masked
    masked: list[int]  # positions of the masked sub-words
    target: int  # the original id of the last masked sub-word
    regions: np.ndarray  # [R, D] features
    hits: np.ndarray  # [R] bool


def require_masked_lm(model) -> None:
    """Attribution and the causal check read the masked-LM head: an encoder alone is refused in one line."""
    if getattr(model, "cls", None) is None or getattr(model, "visual_bert", None) is None:
        raise VbProbeError(f"{type(model).__name__}: no masked-LM head; attribution and the causal check need the "
                           "pre-training model (vb_probe.load_masked_lm(checkpoint))")


def masked_phrases(dataset: GroundingSet, features: RegionFeatures, tokenizer, split: str, limit: int | None,
                   max_text_len: int = 128, progress: bool = False) -> list[MaskedPhrase]:
    """Every phrase with gold boxes in the first ``limit`` images of ``split`` (the probe's own queries:
    :func:`vb_probe.queries.collect_items`), its last word masked. Phrases whose word falls past the text limit
    are left out."""
    from tqdm.auto import tqdm

    image_ids = dataset.split(split)[:limit] if limit else dataset.split(split)
    items, _ = collect_items(dataset, features, image_ids)
    out = []
    for item in tqdm(items, desc=f"phrases of {len(image_ids)} {split} images", unit="caption",
                     disable=not progress, leave=False):
        regions = features[item.image_id]
        tokens = tokenize_words(tokenizer, list(item.words), max_length=max_text_len)
        for query in item.queries:
            if query.group != ENTITY:
                continue
            first, last = tokens.word_first_token[query.word_index], tokens.word_last_token[query.word_index]
            if last is None:
                continue
            ids = list(tokens.input_ids)
            target = ids[last]
            for p in range(first, last + 1):
                ids[p] = tokenizer.mask_token_id
            phrase = " ".join(item.words[query.first_word_index:query.word_index + 1])
            out.append(MaskedPhrase(item.key, phrase, ids, list(range(first, last + 1)), target, regions.features,
                                    region_hits(regions.boxes, query.gold)))
    return out


def _batch(items: list[MaskedPhrase], pad_id: int, visual_token_type: int, device):
    """Model inputs, each item's query position (its last masked sub-word) and the text length T_max."""
    inputs = pad_inputs([i.input_ids for i in items], pad_id, regions=[i.regions for i in items],
                        region_types=visual_token_type)
    query = torch.tensor([i.masked[-1] for i in items])
    return {k: v.to(device) for k, v in inputs.items()}, query.to(device), inputs["input_ids"].shape[1]


@torch.no_grad()
def masked_word_hits(model, items: list[MaskedPhrase], pad_id: int, batch_size: int = 64,
                     visual_token_type: int = 1) -> np.ndarray:
    """[n] bool: the masked-LM head predicts each phrase's masked last sub-word exactly."""
    device = next(model.parameters()).device
    hits = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        inputs, query, _ = _batch(chunk, pad_id, visual_token_type, device)
        logits, _ = model(inputs, torch.arange(len(chunk), device=device), query)
        hits.append((logits.argmax(-1).cpu() == torch.tensor([i.target for i in chunk])).numpy())
    return np.concatenate(hits) if hits else np.zeros(0, dtype=bool)


def masked_word_accuracy(model, items: list[MaskedPhrase], pad_id: int, batch_size: int = 64,
                         visual_token_type: int = 1) -> float:
    """Share of masked phrase words whose last sub-word the masked-LM head predicts exactly."""
    return float(masked_word_hits(model, items, pad_id, batch_size, visual_token_type).mean()) if items else 0.0


def causal_check(model, items: list[MaskedPhrase], top_heads: list[tuple[int, int]], pad_id: int, *,
                 random_draws: int = 20, seed: int = 0, progress: bool = False) -> CausalResult:
    """Masked-entity-word accuracy with nothing, the top-k grounding heads, or k random heads ablated (one set
    per draw), with a bootstrap interval over phrases and an empirical p-value (:func:`causal_summary`)."""
    from vb_probe.causal import ablation_outcomes

    encoder = model.visual_bert
    shape = (len(encoder.blocks), encoder.config.num_attention_heads)
    intact, top, draws = ablation_outcomes(lambda: masked_word_hits(model, items, pad_id),
                                           lambda heads: ablate_heads(encoder, heads), top_heads, shape,
                                           draws=random_draws, seed=seed, progress=progress)
    summary = causal_summary(intact, top, draws, seed=seed)
    return CausalResult({"k": len(top_heads), "heads_ablated": [head_label(l, h) for l, h in top_heads], **summary,
                         "region_to_phrase_r1": None,
                         "region_to_phrase_note": "needs a checkpoint fine-tuned for Flickr30K region-to-phrase "
                                                  "(vb-train finetune --task flickr30k); this one has no such head"})


def integrated_gradients(forward, inputs: tuple[torch.Tensor, ...], steps: int
                         ) -> tuple[tuple[torch.Tensor, ...], float, float]:
    """Integrated gradients of the scalar ``forward(*inputs)`` (batch of one) from all-zero baselines (captum,
    Gauss–Legendre). Returns the attributions (shaped as ``inputs``), the completeness gap
    ``sum(attributions) − (F(x) − F(0))`` and ``F(x) − F(0)``."""
    from captum.attr import IntegratedGradients

    baselines = tuple(torch.zeros_like(x) for x in inputs)
    attributions, delta = IntegratedGradients(forward).attribute(
        inputs, baselines=baselines, n_steps=steps, internal_batch_size=steps, return_convergence_delta=True)
    with torch.no_grad():
        change = float(forward(*inputs).sum() - forward(*baselines).sum())
    return attributions, float(delta.sum()), change


def attribute(model, items: list[MaskedPhrase], pad_id: int, *, steps: int = 32, visual_token_type: int = 1,
              progress: bool = False) -> AttributionResult:
    """Integrated gradients (zero baselines) of each masked word's logit w.r.t. region features and word
    embeddings; per head, agreement of its most-attended region with the top-attributed region."""
    from tqdm.auto import tqdm

    from vb_probe.metrics.grounding import head_choices

    if steps < 1:
        raise VbProbeError(f"--steps {steps}: integrated gradients needs at least 1 integration step")
    encoder = model.visual_bert
    device = next(model.parameters()).device
    layers, heads = len(encoder.blocks), encoder.config.num_attention_heads
    agree = torch.zeros(layers, heads, dtype=torch.long)
    top_hits = 0
    image_share, completeness = [], []
    per_phrase = []
    for item in tqdm(items, desc="integrated gradients", unit="phrase", disable=not progress, leave=False):
        inputs, query, t_max = _batch([item], pad_id, visual_token_type, device)
        word_embeds = encoder.embeddings.word_embeddings(inputs["input_ids"]).detach()
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "visual_embeds")}

        def forward(text_embeds, visual_embeds):
            out = encoder(inputs_embeds=text_embeds, visual_embeds=visual_embeds,
                          **{k: v.expand(text_embeds.shape[0], *v.shape[1:]) for k, v in rest.items()})
            hidden = out.last_hidden_state[:, int(query[0])]
            return model.cls.predictions(hidden)[:, item.target]

        (text_attr, visual_attr), delta, change = integrated_gradients(forward, (word_embeds, inputs["visual_embeds"]),
                                                                       steps)
        completeness.append(abs(delta) / max(abs(change), 1e-6))
        region_score = visual_attr[0].sum(-1)  # [R]
        top_region = int(region_score.argmax())
        top_hits += bool(item.hits[top_region])
        total = float(text_attr.abs().sum() + visual_attr.abs().sum())
        image_share.append(float(visual_attr.abs().sum()) / total if total else 0.0)
        with torch.no_grad(), capture_attention_rows(encoder, torch.tensor([0], device=device), query, 1) as cache:
            encoder(**inputs)
        rows = cache.stack("attn.pattern_rows")[..., t_max:].float().cpu()
        choice = head_choices(rows, torch.ones(1, rows.shape[-1], dtype=torch.bool))[:, 0]  # [layer, head]
        agree += (choice == top_region).long()
        per_phrase.append({"key": item.key, "phrase": item.phrase, "top_region": top_region,
                           "top_region_hits_gold": bool(item.hits[top_region])})
    n = len(items)
    rate = agree.double() / max(n, 1)
    flat = int(rate.flatten().argmax())
    return AttributionResult(agree.numpy().astype(np.int64), n, {
        "n": n, "ig_steps": steps, "ig_top_region_grounding_accuracy": top_hits / max(n, 1),
        # |sum of attributions − (F(x) − F(0))| / |F(x) − F(0)|: how well the integral converged (0 is exact)
        "ig_completeness_error_max": float(max(completeness)) if completeness else None,
        "mean_image_share_of_attribution": float(np.mean(image_share)) if image_share else None,
        "best_agreeing_head": {"layer": flat // heads, "head": flat % heads, "agreement": float(rate.flatten()[flat])},
        "per_phrase": per_phrase})
