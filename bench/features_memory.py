"""Peak memory of reading 10 vs 1,000 images' features from one large file, per layout.

Each reading runs in a fresh process (peak RSS is per process). The file holds 1,200 images by default; reading grows
with what is read, not with the file. Prints one JSON line with the ratios.

    python bench/features_memory.py [--images 3000] [--dim 2054]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_file(folder: Path, images: int, dim: int) -> dict[str, Path]:
    from vb_probe.data.features import Regions, write_hdf5, write_tsv

    rng = np.random.default_rng(0)
    regions = []
    for i in range(images):
        n = 36
        xy = rng.uniform(0, 300, (n, 2)).astype(np.float32)
        regions.append(Regions(str(i), np.concatenate([xy, xy + 50], 1), rng.normal(size=(n, dim)).astype(np.float32),
                               rng.uniform(size=n).astype(np.float32), 400.0, 400.0))
    write_tsv(folder / "big.tsv", regions)
    write_hdf5(folder / "big.h5", regions)
    return {"tsv": folder / "big.tsv", "hdf5": folder / "big.h5"}


def read_some(path: str, count: int) -> None:
    from vb_probe.data.features import open_features

    features = open_features(path)
    ids = features.ids()
    total = 0.0
    for image_id in ids[:count]:
        total += float(features[image_id].features[0, 0])
    print(json.dumps({"peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM belongs to the address space made by exec, unlike
    ru_maxrss, which also counts what the forking parent had resident)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, count: int) -> float:
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); " \
           f"from bench.features_memory import read_some; read_some({str(path)!r}, {count})"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--dim", type=int, default=2054)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_file(Path(tmp), args.images, args.dim)
        size_mb = {k: v.stat().st_size / 2**20 for k, v in files.items()}
        for path in files.values():  # build the TSV's offset index once (cached beside the file)
            measure(path, 1)
        result = {"file_mb": size_mb}
        for name, path in files.items():
            small, large = measure(path, 10), measure(path, 1000)
            result[name] = {"peak_rss_mb_10": round(small, 1), "peak_rss_mb_1000": round(large, 1),
                            "ratio_1000_vs_10": round(large / small, 3)}
        print(json.dumps(result))


if __name__ == "__main__":
    main()
