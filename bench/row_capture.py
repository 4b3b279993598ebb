"""Row capture (``vb_probe.families.decoder.rows``) against the two ways of reading a decoder's attention that
transformers offers: a plain fast forward (sdpa, no attention out: the ceiling) and eager ``output_attentions=True``
(every layer's full map), on a LLaVA-NeXT-shaped model: transformers' ``LlavaNextForConditionalGeneration`` with
its real processor settings (CLIP at 336², llava-v1.6's ``image_grid_pinpoints``) reading a 672 × 672 image, the
base view and 2 × 2 tiles: 2,928 image tokens (576 + 48 × 48 + 48 row newlines) and a caption; a small random
vision tower and a Llama language model (4 layers, hidden 512, grouped-query attention), batch 1. Only the language
model's attention implementation changes between variants.

Each variant runs in a process of its own, ``--runs`` times, so that peak memory (``ru_maxrss`` on CPU) is its own;
each prints the best time a forward and the median extra peak memory over the loaded model, with the spread, and
one JSON line gives the ratios against the plain forward measured in the same run.

Why the memory ratio moved between runs (1.28× once, 0.83× another time for the same code): on CPU the peak is the
process's resident set, and glibc's malloc serves a large block from ``mmap`` (returned to the system when freed)
only above a threshold that it *raises* each time such a block is freed, up to 32 MiB; after that, blocks of a
forward's size come from the heap, which keeps freed pages resident and fragments in an order that depends on
which tensors were freed first. Two variants with the same live memory then show different peaks, and one variant
shows different peaks from run to run. Here every variant runs with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB
(which also stops the threshold moving) and ``MALLOC_TRIM_THRESHOLD_`` at 0: every large tensor is its own mapping,
returned when freed, so the resident peak follows the live tensors. (On GPU the allocator's own peak is read.)

    python bench/row_capture.py            # CPU
    python bench/row_capture.py --runs 5 --queries 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
from common import describe, peak_memory_mb, reset_peak, timed

# llava-hf/llava-v1.6-*'s image_grid_pinpoints (its config.json and preprocessor_config.json)
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "MALLOC_TRIM_THRESHOLD_": "0"}


def build(args):
    """A LLaVA-NeXT model (small vision tower, ``args``' language model) and its processor with real settings."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    from training.tiny import byte_level_tokenizer, token

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, image_size=336, patch_size=14, projection_dim=64)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=args.hidden,
                intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                num_attention_heads=args.heads, num_key_value_heads=max(1, args.heads // 4),
                max_position_embeddings=4096)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=token(tokenizer, "<image>"),
                             vision_feature_layer=-1, image_grid_pinpoints=PINPOINTS)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, image_grid_pinpoints=PINPOINTS,
                                                 crop_size={"height": 336, "width": 336})
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                   vision_feature_select_strategy="default", image_token="<image>",
                                   num_additional_image_tokens=1)
    return model, processor


def inputs_for(processor) -> dict:
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (672, 672, 3), dtype=np.uint8))
    caption = " ".join(["a man in a red shirt rides a brown horse near the blue car"] * 2)
    return dict(processor(images=image, text=f"USER: <image>\n{caption} ASSISTANT:", return_tensors="pt"))


def run_variant(args) -> dict:
    from vb_probe.families.decoder.rows import capture_rows, register

    device = torch.device("cpu")
    model, processor = build(args)
    inputs = inputs_for(processor)
    image_tokens = int((inputs["input_ids"] == model.config.image_token_index).sum())
    length = inputs["input_ids"].shape[1]
    positions = torch.linspace(length - args.queries, length - 1, args.queries).long()[None]  # the caption's words
    implementation = {"plain": "sdpa", "rows": register(), "eager": "eager"}[args.variant]
    model.set_attn_implementation({"text_config": implementation, "vision_config": "sdpa"})

    def forward():
        with torch.no_grad():
            if args.variant == "rows":
                with capture_rows(positions) as plan:
                    model(**inputs, logits_to_keep=1)
                return plan.rows
            return model(**inputs, logits_to_keep=1, output_attentions=args.variant == "eager").logits

    reset_peak(device)
    loaded = peak_memory_mb(device)
    seconds = timed(forward, device, repeats=args.repeats, warmup=1)
    return {"variant": args.variant, "seconds": seconds, "extra_peak_mb": peak_memory_mb(device) - loaded,
            "tokens": length, "image_tokens": image_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--queries", type=int, default=20, help="query rows kept a layer (the caption's words)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards a process (after one warm-up)")
    parser.add_argument("--runs", type=int, default=3, help="processes a variant")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's moving mmap threshold as it is (to see the spread it makes)")
    parser.add_argument("--variant", choices=["plain", "rows", "eager"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results: dict[str, list[dict]] = {}
    environment = {**os.environ, **({} if args.default_malloc else MALLOC)}
    for _ in range(args.runs):  # interleaved, so that a slow spell of the machine touches every variant alike
        for variant in ("plain", "rows", "eager"):
            command = [sys.executable, __file__, "--variant", variant] + [
                f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k not in ("variant", "runs", "default_malloc")]
            out = subprocess.run(command, capture_output=True, text=True, check=True, env=environment).stdout
            results.setdefault(variant, []).append(json.loads(out.strip().splitlines()[-1]))
    summary = {}
    for variant, runs in results.items():
        seconds = [r["seconds"] for r in runs]
        memory = [r["extra_peak_mb"] for r in runs]
        summary[variant] = {"seconds": min(seconds), "memory": statistics.median(memory)}
        print(f"{variant:6s} {min(seconds):.3f} s a forward (best of {len(runs)}; spread {min(seconds):.3f}–"
              f"{max(seconds):.3f}), extra peak memory {statistics.median(memory):.0f} MiB (median; spread "
              f"{min(memory):.0f}–{max(memory):.0f})")
    plain = summary["plain"]
    ratio = {f"{v}_time_vs_plain": round(summary[v]["seconds"] / plain["seconds"], 2) for v in ("rows", "eager")}
    ratio.update({f"{v}_extra_memory_vs_plain": round(summary[v]["memory"] / max(plain["memory"], 1), 2)
                  for v in ("rows", "eager")})
    per_run = [round(r["extra_peak_mb"] / max(p["extra_peak_mb"], 1), 2)
               for r, p in zip(results["rows"], results["plain"])]
    first = results["plain"][0]
    print(json.dumps({"device": describe(torch.device("cpu")), "model": "LlavaNextForConditionalGeneration",
                      "tokens": first["tokens"], "image_tokens": first["image_tokens"], "layers": args.layers,
                      "queries": args.queries, "runs": args.runs, "malloc": "default" if args.default_malloc else MALLOC,
                      **ratio, "rows_memory_ratio_each_run": per_run}))


if __name__ == "__main__":
    main()
