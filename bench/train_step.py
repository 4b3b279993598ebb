"""Pre-training step throughput: ours vs transformers' VisualBertForPreTraining, same weights and inputs.

BERT-base size, 32 text tokens + 100 regions (2048-d), batches 64 and 256; bf16 autocast on a GPU, fp32
on CPU. Ours: fused attention, masked-LM logits only at masked positions, fused AdamW, optional
``torch.compile`` (``--compile-mode reduce-overhead``: CUDA graphs). Ends with one JSON line holding
``speedup_vs_transformers`` (the smallest batch's ratio).

    python bench/train_step.py --device cuda
    python bench/train_step.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import bert_base_config, describe, peak_memory_mb, reset_peak, timed

TEXT, REGIONS, MASK_RATE = 32, 100, 0.15


def make_inputs(batch: int, config, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (batch, TEXT), generator=g)
    masked = torch.rand(batch, TEXT, generator=g) < MASK_RATE
    masked[:, 0] = False
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = {
        "input_ids": torch.where(masked, torch.full_like(ids, 103), ids),
        "attention_mask": torch.ones(batch, TEXT, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, TEXT, dtype=torch.long),
        "visual_embeds": torch.randn(batch, REGIONS, config.visual_embedding_dim, generator=g),
        "visual_attention_mask": torch.ones(batch, REGIONS, dtype=torch.long),
        "visual_token_type_ids": torch.ones(batch, REGIONS, dtype=torch.long),
    }
    sip = torch.randint(0, 2, (batch,), generator=g)
    return {k: v.to(device) for k, v in inputs.items()}, labels.to(device), sip.to(device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="about a minute on CPU")
    parser.add_argument("--batch-sizes", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (e.g. reduce-overhead)")
    parser.add_argument("--coordinate-descent", action="store_true",
                        help="let inductor tune its generated kernels' block sizes (slower compile)")
    args = parser.parse_args()
    if args.coordinate_descent:
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batches = [int(b) for b in (args.batch_sizes or ("64,256" if gpu else ("16" if args.quick else "16,64"))).split(",")]
    steps = args.steps or (10 if gpu else (2 if args.quick else 5))

    from transformers import VisualBertForPreTraining as Reference

    from vb_probe.families.visualbert.model import VisualBertModel
    from vb_probe.families.visualbert.pretraining import VisualBertForPreTraining

    config = bert_base_config()
    torch.manual_seed(0)
    reference = Reference(config).to(device).train()
    ours = VisualBertForPreTraining(VisualBertModel(config)).to(device).train()
    ours.visual_bert.load_state_dict(reference.visual_bert.state_dict())
    ours.cls.load_state_dict({k: v for k, v in reference.cls.state_dict().items() if not k.startswith("predictions.decoder")})
    opt_ref = torch.optim.AdamW(reference.parameters(), lr=1e-5)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5, fused=True)  # as training/loop.py
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else torch.autocast("cpu", enabled=False)
    # static shapes: each batch size gets its own specialised graph
    compiled = torch.compile(ours, mode=args.compile_mode, dynamic=False) if args.compile else None

    results = {}
    for batch in batches:
        inputs, labels, sip = make_inputs(batch, config, device)
        full_labels = torch.cat([labels, torch.full((batch, REGIONS), -100, device=device)], dim=1)
        b_idx, pos = (labels != -100).nonzero(as_tuple=True)
        # no padding in these batches: ours is told so by leaving the (all-ones) masks out, which lets the
        # fused attention run unmasked; transformers gets the masks (same semantics, it has no such path)
        unpadded = {k: v for k, v in inputs.items() if "attention_mask" not in k}
        mlm_labels = labels[b_idx, pos]

        def step_reference():
            with autocast:
                loss = reference(**inputs, labels=full_labels, sentence_image_labels=sip).loss
            loss.backward()
            opt_ref.step()
            opt_ref.zero_grad(set_to_none=True)

        def step_ours(model=ours):
            if model is compiled and "reduce-overhead" in args.compile_mode:
                torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs: last step's outputs are not read again
            with autocast:
                mlm_logits, sip_logits = model(unpadded, b_idx, pos)
                loss = F.cross_entropy(mlm_logits.float(), mlm_labels) + F.cross_entropy(sip_logits.float(), sip)
            loss.backward()
            opt_ours.step()
            opt_ours.zero_grad(set_to_none=True)

        entry = {}
        for name, fn in (("transformers", step_reference), ("ours", step_ours)) + (
                (("ours_compiled", lambda: step_ours(compiled)),) if compiled is not None else ()):
            reset_peak(device)
            seconds = timed(fn, device, steps, warmup=3 if name == "ours_compiled" else 1)
            entry[name] = {"samples_per_s": round(batch / seconds, 2), "peak_mb": round(peak_memory_mb(device), 1)}
        entry["speedup"] = round(entry["ours"]["samples_per_s"] / entry["transformers"]["samples_per_s"], 3)
        if compiled is not None:
            entry["speedup_compiled"] = round(entry["ours_compiled"]["samples_per_s"] / entry["transformers"]["samples_per_s"], 3)
        results[str(batch)] = entry
        print(json.dumps({"batch": batch, **entry}), flush=True)
    best = {b: max(e.get("speedup_compiled", 0), e["speedup"]) for b, e in results.items()}
    print(json.dumps({"bench": "train_step", "device": describe(device), "precision": "bf16 autocast" if gpu else "fp32",
                      "compile_mode": args.compile_mode if args.compile else None,
                      "coordinate_descent": args.coordinate_descent,
                      "text_tokens": TEXT, "regions": REGIONS, "results": results,
                      "speedup_vs_transformers": min(best.values())}))


if __name__ == "__main__":
    main()
