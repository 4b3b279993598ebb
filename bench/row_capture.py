"""Row capture (``vb_probe.families.decoder.rows``) against the two ways of reading a decoder's attention that
transformers offers: a plain fast forward (sdpa, no attention out: the ceiling) and eager ``output_attentions=True``
(every layer's full map). A random Llama-shaped model over ~2,900 tokens (an anyres-sized image prompt), batch 1;
each variant runs in a process of its own so that peak memory (``ru_maxrss`` on CPU) is its own. Prints each
variant's seconds a forward and extra peak memory over the loaded model, and one JSON line of ratios against the
plain forward measured in the same run.

    python bench/row_capture.py            # CPU
    python bench/row_capture.py --tokens 2900 --layers 4 --queries 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from common import describe, peak_memory_mb, reset_peak, timed


def build(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=max(1, args.heads // 4), max_position_embeddings=args.tokens + 8)
    return LlamaForCausalLM(config).eval()


def run_variant(args) -> dict:
    from vb_probe.families.decoder.rows import capture_rows, register

    device = torch.device("cpu")
    model = build(args)
    ids = torch.randint(0, 32000, (1, args.tokens))
    positions = torch.linspace(args.tokens // 2, args.tokens - 1, args.queries).long()[None]  # caption tokens
    if args.variant == "eager":
        model.set_attn_implementation("eager")

        def forward():
            with torch.no_grad():
                return model(input_ids=ids, output_attentions=True, logits_to_keep=1).logits
    elif args.variant == "rows":
        model.set_attn_implementation(register())

        def forward():
            with torch.no_grad(), capture_rows(positions) as plan:
                model(input_ids=ids, logits_to_keep=1)
            return plan.rows
    else:
        model.set_attn_implementation("sdpa")

        def forward():
            with torch.no_grad():
                return model(input_ids=ids, logits_to_keep=1).logits
    reset_peak(device)
    loaded = peak_memory_mb(device)
    seconds = timed(forward, device, repeats=args.repeats, warmup=1)
    return {"variant": args.variant, "seconds": seconds, "extra_peak_mb": peak_memory_mb(device) - loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2900)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--queries", type=int, default=20, help="query rows kept a layer (the caption's words)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=["plain", "rows", "eager"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("plain", "rows", "eager"):
        command = [sys.executable, __file__, "--variant", variant] + [
            f"--{k}={v}" for k, v in vars(args).items() if k != "variant"]
        line = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[variant] = json.loads(line)
        r = results[variant]
        print(f"{variant:6s} {r['seconds']:.3f} s a forward, extra peak memory {r['extra_peak_mb']:.0f} MiB")
    plain = results["plain"]
    ratio = {f"{v}_time_vs_plain": round(results[v]["seconds"] / plain["seconds"], 2) for v in ("rows", "eager")}
    ratio.update({f"{v}_extra_memory_vs_plain": round(results[v]["extra_peak_mb"] / max(plain["extra_peak_mb"], 1), 2)
                  for v in ("rows", "eager")})
    print(json.dumps({"device": describe(torch.device("cpu")), "tokens": args.tokens, "layers": args.layers,
                      "queries": args.queries, **ratio}))


if __name__ == "__main__":
    main()
