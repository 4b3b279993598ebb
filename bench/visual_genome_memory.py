"""Reading Visual Genome's region descriptions an image at a time (``vb_probe.data.json_records``) against loading
the whole file with ``json.load``, on a generated file of Visual Genome's shape (50 regions an image).

Each reading runs in a fresh process (peak RSS is per process) and reads the regions of 100 images. Prints each
variant's seconds and extra peak memory, and one JSON line of ratios against ``json.load`` measured in the same run.
The index is built once (first variant ``index-cold``) and then read from the user cache (``index-warm``).

    python bench/visual_genome_memory.py [--images 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_file(path: Path, images: int) -> None:
    with open(path, "w") as handle:
        handle.write("[")
        for i in range(images):
            regions = [{"region_id": i * 100 + k, "image_id": i, "phrase": f"a small brown dog number {k} on the grass",
                        "x": k, "y": k, "width": 10, "height": 12} for k in range(50)]
            handle.write(("," if i else "") + json.dumps({"id": i, "regions": regions}))
        handle.write("]")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(path: Path, variant: str, wanted: list[str]) -> dict:
    base = peak_mb()
    started = time.perf_counter()
    if variant == "json.load":
        data = {str(entry["id"]): entry for entry in json.loads(path.read_text())}
        read = [data[i]["regions"] for i in wanted]
    else:
        from vb_probe.data.json_records import JsonRecords

        records = JsonRecords(path, lambda entry, where: str(entry["id"]))
        read = [records.record(i)["regions"] for i in wanted]
    assert len(read) == len(wanted) and all(len(r) == 50 for r in read)
    return {"variant": variant, "seconds": time.perf_counter() - started, "extra_peak_mb": peak_mb() - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    wanted = [str(i) for i in range(0, args.images, max(1, args.images // 100))][:100]
    if args.variant:
        print(json.dumps(run_variant(Path(args.file), args.variant.split("-")[0], wanted)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "region_descriptions.json"
        write_file(path, args.images)
        env = {**os.environ, "VB_PROBE_CACHE": str(Path(folder) / "cache")}
        results = {}
        for variant in ("json.load", "index-cold", "index-warm"):
            line = subprocess.run([sys.executable, __file__, "--variant", variant, "--file", str(path),
                                   f"--images={args.images}"], capture_output=True, text=True, check=True,
                                  env=env).stdout.strip().splitlines()[-1]
            results[variant] = json.loads(line)
            r = results[variant]
            print(f"{variant:10s} {r['seconds']:.2f} s, extra peak memory {r['extra_peak_mb']:.0f} MiB")
        reference = results["json.load"]
        print(json.dumps({"file_mb": round(path.stat().st_size / 2**20), "images": args.images,
                          **{f"{v}_time_vs_json_load": round(results[v]["seconds"] / reference["seconds"], 2)
                             for v in ("index-cold", "index-warm")},
                          **{f"{v}_memory_vs_json_load": round(results[v]["extra_peak_mb"]
                                                               / max(reference["extra_peak_mb"], 1), 3)
                             for v in ("index-cold", "index-warm")}}))


if __name__ == "__main__":
    main()
