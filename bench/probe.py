"""Probing throughput (captions/s) of entity grounding over all 144 heads, side by side:

* ours: fused attention everywhere, attention rows computed only for the probed query tokens;
* (a) transformers' forward with ``output_attentions=True``, then the same scoring;
* (b) a plain forward without attention output (the ceiling): ours fused, and transformers' too.

Also peak memory of probing 1× and 10× as many captions (the scores are reduced inside each batch, so it
should stay flat). Ends with one JSON line: ``speedup_vs_output_attentions`` and ``time_vs_plain_forward``.

``--precision bf16`` runs our probe under bf16 autocast (``vb-probe … --precision bf16``); the reference then
runs twice, in fp32 (transformers' default, and the exact answer) and under the same autocast, and the line
also holds ``speedup_vs_output_attentions_same_precision`` and how often ours picks the same region as fp32.

    python bench/probe.py --device cuda
    python bench/probe.py --device cuda --precision bf16 --batch-size 512 --regions 100
    python bench/probe.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json

import torch
from common import bert_base_config, describe, peak_memory_mb, reset_peak, sync, timed

TEXT, QUERIES = 20, 3


def make_batch(batch: int, regions: int, config, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    inputs = {
        "input_ids": torch.randint(1000, config.vocab_size, (batch, TEXT), generator=g),
        "attention_mask": torch.ones(batch, TEXT, dtype=torch.long),
        "visual_embeds": torch.randn(batch, regions, config.visual_embedding_dim, generator=g),
        "visual_attention_mask": torch.ones(batch, regions, dtype=torch.long),
    }
    b_idx = torch.arange(batch).repeat_interleave(QUERIES)
    q_idx = torch.randint(1, TEXT - 1, (batch * QUERIES,), generator=g)
    hits = torch.rand(batch * QUERIES, regions, generator=g) < 0.1
    return ({k: v.to(device) for k, v in inputs.items()}, b_idx.to(device), q_idx.to(device), hits.to(device))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--regions", type=int, default=36, help="regions per image (real detectors: 36 to 100)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="our probe's precision")
    args = parser.parse_args()
    regions = args.regions
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (128 if gpu else 16)
    n_batches = args.batches or (10 if gpu else (2 if args.quick else 4))

    from transformers import VisualBertModel as Reference

    from vb_probe.families.visualbert.hooks import capture_attention_rows
    from vb_probe.families.visualbert.model import VisualBertModel
    from vb_probe.metrics.grounding import HeadCounts, head_correct

    config = bert_base_config(dropout=0.0)
    torch.manual_seed(0)
    reference = Reference(config).to(device).eval()
    ours = VisualBertModel(config).to(device).eval()
    ours.load_state_dict(reference.state_dict())
    data = [make_batch(batch, regions, config, device, seed) for seed in range(n_batches)]
    valid = torch.ones(batch * QUERIES, regions, dtype=torch.bool, device=device)

    def autocast(enabled: bool):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    bf16 = args.precision == "bf16"
    picks = {}  # name → per-query correctness of the first batch, [layer, n, head]

    @torch.no_grad()
    def probe_ours(batches=data):
        counts = HeadCounts(12, 12)
        for inputs, b_idx, q_idx, hits in batches:
            with capture_attention_rows(ours, b_idx, q_idx, batch) as cache, autocast(bf16):
                ours(**{k: v for k, v in inputs.items() if "attention_mask" not in k})  # no padding here
            rows = cache.stack("attn.pattern_rows")[..., TEXT:]
            correct = head_correct(rows, valid, hits)
            picks.setdefault("ours", correct)
            counts.add(correct, rows.sum(-1), {})
        return counts

    def output_attentions(in_bf16: bool):
        @torch.no_grad()
        def run():
            counts = HeadCounts(12, 12)
            for inputs, b_idx, q_idx, hits in data:
                with autocast(in_bf16):
                    attentions = reference(**inputs, output_attentions=True).attentions
                rows = torch.stack([a[b_idx, :, q_idx, TEXT:] for a in attentions]).float()
                correct = head_correct(rows, valid, hits)
                picks.setdefault(f"reference_{'bf16' if in_bf16 else 'fp32'}", correct)
                counts.add(correct, rows.sum(-1), {})
            return counts
        return run

    probe_output_attentions = output_attentions(False)

    @torch.no_grad()
    def plain_ours():
        for inputs, *_ in data:
            with autocast(bf16):
                ours(**{k: v for k, v in inputs.items() if "attention_mask" not in k})

    @torch.no_grad()
    def plain_transformers():
        for inputs, *_ in data:
            with autocast(bf16):
                reference(**inputs)

    a, b = probe_ours(), probe_output_attentions()
    agree = bool(torch.equal(a.n_correct, b.n_correct))
    same_pick = (picks["ours"] == picks["reference_fp32"]).float().mean().item()
    accuracy_gap = (a.n_correct - b.n_correct).abs().max().item() / (batch * n_batches * QUERIES)
    captions = batch * n_batches
    repeats = 3 if gpu else 1
    timings = [("ours_probe", probe_ours), ("transformers_output_attentions", probe_output_attentions),
               ("ours_plain_forward", plain_ours), ("transformers_plain_forward", plain_transformers)]
    if bf16:
        timings.append(("transformers_output_attentions_bf16", output_attentions(True)))
    seconds = {name: timed(fn, device, repeats, warmup=1) for name, fn in timings}
    throughput = {k: round(captions / v, 2) for k, v in seconds.items()}

    # memory as the data set grows 10× (the same batches streamed ten times)
    memory = {}
    for scale in (1, 10):
        reset_peak(device)
        sync(device)
        probe_ours(data * scale)
        memory[f"peak_mb_{scale}x"] = round(peak_memory_mb(device), 1)
    result = {
        "bench": "probe", "device": describe(device), "precision": args.precision, "batch": batch,
        "captions": captions, "text_tokens": TEXT, "regions": regions,
        "heads": 144, "queries_per_caption": QUERIES, "scores_agree_with_output_attentions": agree,
        "same_region_as_fp32_output_attentions": round(same_pick, 5),
        "max_head_accuracy_gap_vs_fp32": round(accuracy_gap, 5),
        "captions_per_s": throughput, "memory": memory,
        "memory_growth_10x": round(memory["peak_mb_10x"] / memory["peak_mb_1x"], 3),
        "speedup_vs_output_attentions": round(seconds["transformers_output_attentions"] / seconds["ours_probe"], 3),
        "time_vs_plain_forward": round(seconds["ours_probe"] / seconds["ours_plain_forward"], 3),
    }
    if bf16:
        result["speedup_vs_output_attentions_same_precision"] = round(
            seconds["transformers_output_attentions_bf16"] / seconds["ours_probe"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
