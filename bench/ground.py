"""What the grounding harness and the sink audit cost beside the probe they ride on, and what labelling components
with ``scipy.ndimage.label`` saves against the propagation loop vb-probe used before, in one run.

1. **Components**: the spatial entropies of every head's map for ``--prompts`` prompts (Kang et al.'s selection
   reads 500 to 1,000 prompts × every head), LLaVA-1.5-7B's shape (32 × 32 heads over a 24 × 24 grid): the
   propagation loop (max-pooling labels over 8-neighbours until nothing changes; reproduced here as it was) against
   one ``scipy.ndimage.label`` call over the stack.
2. **The harness and the audit**: one probe pass over the built-in world's test images on a LLaVA-shaped model
   (transformers' ``LlavaForConditionalGeneration``, CLIP at 336²: 576 image tokens; a random Llama language model
   of ``--layers`` × ``--heads``), alone, with the harness's tally (fixed, gold and random heads and the per-sample
   choice among 10% of the heads, k 1/3/5, all four readouts: 48 boxes an expression), and with the sink audit;
   passes alternate, best of ``--passes``. The language model's MLP is small (the tiny builders'), so its forward
   is cheaper than a real model's of the same width: the ratios here are upper bounds.

    python bench/ground.py
    python bench/ground.py --layers 8 --heads 16 --hidden 1024 --passes 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from common import describe

WORK = Path(__file__).resolve().parent.parent / "bench_out" / "ground"


def propagation_entropies(maps: torch.Tensor) -> torch.Tensor:
    """vb-probe's spatial entropy before scipy (the reference): labels spread by 3 × 3 max-pooling until stable."""
    maps = maps.double()
    count, height, width = maps.shape
    above = maps > maps.mean(dim=(1, 2), keepdim=True)
    index = torch.arange(1, height * width + 1, dtype=torch.float64).reshape(1, height, width)
    labels = torch.where(above, index, torch.zeros(()))
    while True:
        spread = torch.nn.functional.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0]
        spread = torch.where(above, spread, torch.zeros(()))
        if torch.equal(spread, labels):
            break
        labels = spread
    slots = height * width + 1
    keys = (labels.long() + slots * torch.arange(count)[:, None, None]).flatten()
    mass = torch.zeros(count * slots, dtype=torch.float64).index_add_(0, keys, maps.flatten()).reshape(count, slots)
    mass = mass[:, 1:]
    p = mass / mass.sum(1, keepdim=True).clamp(min=torch.finfo(torch.float64).tiny)
    entropy = -(torch.where(p > 0, p * p.log(), torch.zeros(()))).sum(1) + 0.0
    return torch.where(above.flatten(1).any(1), entropy, torch.full_like(entropy, float("inf")))


def components(prompts: int, layers: int = 32, heads: int = 32, side: int = 24, repeats: int = 3) -> dict:
    from vb_probe.metrics.readouts import ENTROPY_VARIANTS, spatial_entropies

    rng = np.random.default_rng(0)
    maps = rng.random((prompts * layers * heads, side, side)) ** 6  # attention-like: a few bright cells
    tensor = torch.from_numpy(maps)
    ours, before = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        found = spatial_entropies(maps, ENTROPY_VARIANTS["released-mean"])
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = propagation_entropies(tensor).numpy()
        before.append(time.perf_counter() - start)
    assert np.allclose(found, reference), "the two labellings must agree"
    return {"maps": len(maps), "scipy_s": round(min(ours), 3), "propagation_s": round(min(before), 3),
            "speedup": round(min(before) / min(ours), 1),
            "at_500_prompts_s": {"scipy": round(min(ours) * 500 / prompts, 1),
                                 "propagation": round(min(before) * 500 / prompts, 1)}}


def harness(args) -> dict:
    from training.tiny import tiny_llava
    from training.world.build import build_world
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.data.images import ImageFolder
    from vb_probe.families.decoder import DecoderFamily
    from vb_probe.families.decoder.harness import GroundTally, HeadPlan
    from vb_probe.pipeline import run_probes
    from vb_probe.probe_config import ProbeConfig

    world = WORK / f"world-{args.scenes}"
    if not world.is_dir():
        build_world(world, images=args.scenes, seed=0, hdf5=False, progress=False)
    flickr, images = Flickr30kEntities(world / "flickr30k"), ImageFolder(world / "images")
    model = DecoderFamily().load(tiny_llava(image_size=336, layers=args.layers, heads=args.heads, hidden=args.hidden))
    heads = [(layer, head) for layer in range(args.layers) for head in range(args.heads)]
    rng = np.random.default_rng(0)
    pick = lambda n: tuple(heads[i] for i in rng.choice(len(heads), size=n, replace=False))  # noqa: E731
    plan = HeadPlan({"fixed": pick(10), "gold": pick(10), "random": pick(10)},
                    pick(max(10, len(heads) // 10)), "paper", (1, 3, 5))
    cfg = ProbeConfig(split="test", batch_size=args.batch, limit=args.limit)
    variants = {"probe": ({}, cfg), "probe + harness": ({"ground": plan}, cfg),
                "probe + sink audit": ({}, ProbeConfig(split="test", batch_size=args.batch, limit=args.limit,
                                                       sinks=True))}
    seconds = {name: [] for name in variants}
    expressions = 0
    run_probes(cfg, model, None, progress=False, dataset=flickr, store=images)  # warm-up: caches, first allocations
    for _ in range(args.passes):
        for name, (extra, config) in variants.items():
            tallies = {GroundTally.key: GroundTally(extra["ground"])} if "ground" in extra else None
            start = time.perf_counter()
            result = run_probes(config, model, None, progress=False, dataset=flickr, store=images, tallies=tallies)
            seconds[name].append(time.perf_counter() - start)
            expressions = result.main.counts["entity"].n
    best = {name: min(values) for name, values in seconds.items()}
    return {"model": f"LLaVA-shaped, 576 image tokens, {args.layers} × {args.heads} heads, hidden {args.hidden}",
            "expressions": expressions, "boxes_an_expression": len(plan.settings()),
            "best_s": {k: round(v, 2) for k, v in best.items()},
            "median_s": {k: round(statistics.median(v), 2) for k, v in seconds.items()},
            "harness_vs_probe": round(best["probe + harness"] / best["probe"], 3),
            "harness_ms_an_expression": round(1000 * (best["probe + harness"] - best["probe"]) / max(expressions, 1), 1),
            "sink_audit_vs_probe": round(best["probe + sink audit"] / best["probe"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10, help="prompts of 32 × 32 maps for the labelling")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--scenes", type=int, default=60, help="scenes of the built-in world (a tenth are test)")
    parser.add_argument("--limit", type=int, default=6, help="test images probed")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(json.dumps({"bench": "ground", "device": describe(torch.device("cpu")),
                      "components": components(args.prompts), "harness": harness(args)}))


if __name__ == "__main__":
    main()
