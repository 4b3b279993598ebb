"""Probing at real scale, end to end: the CLI's own path (`vb-probe entity-grounding`) on a generated real-shaped
set (the built-in world's annotations; 100 regions × 2048-d features an image, LXMERT TSV), against the same
model on pre-collated batches, and peak host memory at two split sizes (it should stay flat: features are read
batch by batch).

Each run is a child process, so its own peak RSS is measured; "end to end" is the probe call itself (reading,
tokenising, collating, the forward, scoring), start-up (imports, loading the model) left out.

    python bench/pipeline.py --quick                  # a few minutes on 2 cores: tiny model and BERT-base
    python bench/pipeline.py --device cuda            # BERT-base on a GPU, larger splits

Every timed figure is the best of several passes (``--passes``; the end-to-end and model-only figures one child
process a pass, the data path several passes of the whole split in one process, each a second or more), printed
with the median and the spread: a single pass of about a second moved 2× between runs on one quiet machine.
``--against COMMIT`` (default d2ab4a6, the end of the round before the families) times that commit's own data path
on the same files, from a git worktree of it, its passes interleaved with this code's, and prints the ratio.

Ends with one JSON line: ``captions_per_s`` (end to end, BERT-base), ``time_vs_model_only`` (end-to-end time over
model-only time, BERT-base), ``data_path_captions_per_s`` (reading, tokenising and collating alone, no model; with
``data_path_vs_reference``), ``tiny_end_to_end_captions_per_s`` (a tiny model end to end, beyond start-up) and
``peak_rss_ratio`` (peak host memory at the larger split over the smaller, tiny model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from vb_probe.api import load_model, load_tokenizer
from vb_probe.batching import to_device
from vb_probe.data.features import open_features
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.families import family_of
from vb_probe.pipeline import ProbeConfig, run_probes, score_batch
from vb_probe.queries import collect_items

mode, ckpt, flickr, features, limit, batch, device, threads, passes = {args!r}
torch.set_num_threads(threads)
torch.set_grad_enabled(False)
model = load_model(ckpt, device=device)
tokenizer = load_tokenizer(model=model)
cfg = ProbeConfig(ckpt=ckpt, annotations=flickr, features=features, split="train", limit=limit, batch_size=batch,
                  device=device)
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
if mode == "end_to_end":
    start = time.perf_counter()
    results = run_probes(cfg, model, tokenizer, progress=False)
    sync()
    seconds = time.perf_counter() - start
    captions = results.main.n_captions
elif mode == "data_only":  # reading, tokenising and collating every batch, no model: the data path alone
    store, fl, family = open_features(features), Flickr30kEntities(flickr), family_of(model)
    items, _ = collect_items(fl, store, fl.split("train")[:limit])
    facts = family.prepare(model, store, {{}})
    seconds = []
    for _ in range(passes):  # each pass the whole split {rounds} times (a few seconds), reading the features again
        start = time.perf_counter()
        for _ in range({rounds}):
            for i in range(0, len(items), batch):
                family.collate(model, items[i:i + batch], tokenizer, facts, 128, store)
        seconds.append(time.perf_counter() - start)
    captions = len(items) * {rounds}
else:  # the same model on batches collated beforehand: the ceiling of the pipeline
    store, fl, family = open_features(features), Flickr30kEntities(flickr), family_of(model)
    items, _ = collect_items(fl, store, fl.split("train")[:limit])
    facts = family.prepare(model, store, {{}})
    batches = [to_device(family.collate(model, items[i:i + batch], tokenizer, facts, 128, store), device)
               for i in range(0, len(items), batch)]
    score_batch(family, model, batches[0], {{}})  # warm-up
    sync()
    start = time.perf_counter()
    counts = {{}}
    with torch.no_grad():
        for b in batches:
            score_batch(family, model, b, counts)
    sync()
    seconds = time.perf_counter() - start
    captions = len(items)
print(json.dumps({{"seconds": seconds if isinstance(seconds, list) else [seconds], "captions": captions,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


DATA_ROUNDS = 3  # a data-path pass collates the split this many times: a few seconds, not one

# the data path as the code before the families (d2ab4a6) runs it: the same files, its own collate
REFERENCE_DATA_PATH = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from vb_probe.api import load_model, load_tokenizer
from vb_probe.batching import collate
from vb_probe.data.features import open_features
from vb_probe.data.flickr30k import Flickr30kEntities
from vb_probe.pipeline import ProbeConfig, collect_items

mode, ckpt, flickr, features, limit, batch, device, threads, passes = {args!r}
torch.set_num_threads(threads)
model = load_model(ckpt, device=device)
tokenizer = load_tokenizer(model=model)
cfg = ProbeConfig(ckpt=ckpt, flickr30k=flickr, features=features, split="train", limit=limit, batch_size=batch,
                  device=device)
store, fl = open_features(features), Flickr30kEntities(flickr)
items, *_ = collect_items(cfg, fl, store, fl.split("train")[:limit], None, "")
seconds = []
for _ in range(passes):
    start = time.perf_counter()
    for _ in range({rounds}):
        for i in range(0, len(items), batch):
            collate(items[i:i + batch], tokenizer, 1, 128, store)
    seconds.append(time.perf_counter() - start)
print(json.dumps({{"seconds": seconds, "captions": len(items) * {rounds}, "peak_rss_mb": 0}}))
"""


def child(mode: str, ckpt: Path, data: dict, limit: int, batch: int, device: str, threads: int, passes: int = 1,
          root: Path = ROOT, template: str = CHILD) -> dict:
    """One child process of ``mode``: its timed passes (``seconds``, a list), captions, peak RSS, and the best
    pass's ``captions_per_s``."""
    script = template.format(root=str(root), rounds=DATA_ROUNDS,
                             args=(mode, str(ckpt), str(data["flickr30k"]), str(data["tsv"]), limit, batch, device,
                                   threads, passes))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=str(root))
    if result.returncode:
        raise SystemExit(f"child {mode} ({root}) failed:\n{result.stderr[-3000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["captions_per_s"] = out["captions"] / min(out["seconds"])
    return out


def passes_of(runs: list[dict]) -> dict:
    """Several children's passes as one figure: the best (the figure), the median and the spread, in seconds and
    captions a second."""
    seconds = [s for run in runs for s in run["seconds"]]
    captions = runs[0]["captions"]
    return {"seconds": min(seconds), "median_s": statistics.median(seconds), "spread_s": [min(seconds), max(seconds)],
            "passes": len(seconds), "captions": captions, "captions_per_s": captions / min(seconds),
            "median_captions_per_s": captions / statistics.median(seconds),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs)}


def reference_tree(commit: str, work: Path) -> Path:
    """A git worktree of ``commit`` under ``work`` (made once)."""
    tree = work / f"ref-{commit}"
    if not (tree / "vb_probe").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--force", "--detach", str(tree), commit],
                       check=True, capture_output=True)
    return tree


def make_checkpoint(folder: Path, tokenizer_dir: Path, size: str) -> Path:
    """A random VisualBERT over 2048-d features: ``tiny`` (2 × 64) or ``base`` (BERT-base, 12 × 768)."""
    import torch
    from transformers import VisualBertConfig

    from vb_probe.families.visualbert.checkpoints import save_model
    from vb_probe.families.visualbert.model import VisualBertModel
    from vb_probe.tokenization import load_tokenizer

    if (folder / "model.safetensors").is_file():
        return folder
    vocab = len(load_tokenizer(tokenizer_dir))
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128) \
        if size == "tiny" else {}
    torch.manual_seed(0)
    save_model(VisualBertModel(VisualBertConfig(vocab_size=vocab, visual_embedding_dim=2048, **shape)), folder)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, folder)
    return folder


def main() -> None:
    from bench.real_shaped import write_real_shaped_set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small splits (a few minutes on 2 cores)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_out" / "pipeline")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="timed passes a figure (the best is the figure)")
    parser.add_argument("--against", default="d2ab4a6", help="a commit whose data path is timed beside (none: skip)")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    small, large = (40, 320) if args.quick else (100, 800)
    base_images = 10 if args.quick and not gpu else (200 if gpu else 40)
    data = write_real_shaped_set(args.work, large)
    tokenizer_dir = args.work / "world" / "tokenizer"
    tiny, base = make_checkpoint(args.work / "tiny", tokenizer_dir, "tiny"), make_checkpoint(args.work / "base",
                                                                                             tokenizer_dir, "base")
    from vb_probe.data.features import open_features

    open_features(data["tsv"])  # the byte-offset index is built once, here, not inside a timed run
    report: dict = {"bench": "pipeline", "device": args.device, "regions": 100, "feature_dim": 2048}
    runs = {}
    for name, ckpt, limit, batch, mode in (
            ("tiny_small", tiny, small, 64, "end_to_end"), ("tiny_large", tiny, large, 64, "end_to_end"),
            ("tiny_model_only", tiny, small, 64, "model_only"),
            ("base_end_to_end", base, base_images, 256 if gpu else 16, "end_to_end"),
            ("base_model_only", base, base_images, 256 if gpu else 16, "model_only")):
        runs[name] = passes_of([child(mode, ckpt, data, limit, batch, args.device, args.threads)
                                for _ in range(args.passes)])
        print(json.dumps({"run": name, **_rounded(runs[name])}), flush=True)
    # the data path: this code's passes and the reference commit's, interleaved process by process
    reference = reference_tree(args.against, args.work) if args.against != "none" else None
    ours, theirs = [], []
    for _ in range(max(args.passes, 4)):  # processes of each, alternating
        ours.append(child("data_only", tiny, data, large, 64, args.device, args.threads, passes=args.passes))
        if reference is not None:
            theirs.append(child("data_only", tiny, data, large, 64, args.device, args.threads, passes=args.passes,
                                root=reference, template=REFERENCE_DATA_PATH))
    runs["data_only"] = passes_of(ours)
    print(json.dumps({"run": "data_only", **_rounded(runs["data_only"])}), flush=True)
    if reference is not None:
        runs["data_only_reference"] = passes_of(theirs)
        print(json.dumps({"run": f"data_only at {args.against}", **_rounded(runs["data_only_reference"])}), flush=True)
        report["data_path_vs_reference"] = {
            "commit": args.against, "reference_captions_per_s": round(runs["data_only_reference"]["captions_per_s"], 1),
            "best_ratio": round(runs["data_only"]["captions_per_s"] / runs["data_only_reference"]["captions_per_s"], 2),
            "median_ratio": round(runs["data_only"]["median_captions_per_s"]
                                  / runs["data_only_reference"]["median_captions_per_s"], 2)}
    report.update(
        captions_per_s=round(runs["base_end_to_end"]["captions_per_s"], 2),
        model_only_captions_per_s=round(runs["base_model_only"]["captions_per_s"], 2),
        time_vs_model_only=round(runs["base_end_to_end"]["seconds"] / runs["base_model_only"]["seconds"], 3),
        data_path_captions_per_s=round(runs["data_only"]["captions_per_s"], 1),
        data_path_median_captions_per_s=round(runs["data_only"]["median_captions_per_s"], 1),
        passes=args.passes,
        tiny_end_to_end_captions_per_s=round(  # beyond start-up: the slope between the two split sizes
            (runs["tiny_large"]["captions"] - runs["tiny_small"]["captions"])
            / (runs["tiny_large"]["seconds"] - runs["tiny_small"]["seconds"]), 1),
        tiny_model_only_captions_per_s=round(runs["tiny_model_only"]["captions_per_s"], 1),
        peak_rss_mb={"small": round(runs["tiny_small"]["peak_rss_mb"]), "large": round(runs["tiny_large"]["peak_rss_mb"])},
        peak_rss_ratio=round(runs["tiny_large"]["peak_rss_mb"] / runs["tiny_small"]["peak_rss_mb"], 3),
        split_images={"small": small, "large": large, "base": base_images})
    print(json.dumps(report))


def _rounded(figure: dict) -> dict:
    return {k: ([round(x, 3) for x in v] if isinstance(v, list) else round(v, 3)) for k, v in figure.items()}


if __name__ == "__main__":
    main()
