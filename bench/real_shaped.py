"""A real-shaped probing set for benchmarks and tests at real scale: the built-in world's Flickr30K Entities
annotations with region features as detectors write them (``regions`` boxes a image, ``dim``-d features,
LXMERT TSV and BAN HDF5), so data paths meet the sizes they meet on Flickr30K (100 × 2048 floats an image).

The world's own regions come first (so gold boxes still have regions that hit them); the rest are random boxes.
Features are seeded noise: the set measures throughput and memory, not grounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vb_probe.data.features import Regions, TsvFeatures, write_hdf5, write_tsv


def write_real_shaped_set(out: Path, images: int, *, regions: int = 100, dim: int = 2048, seed: int = 0,
                          hdf5: bool = False) -> dict[str, Path]:
    """Write ``out/world`` (the built-in world with at least ``images`` scenes in its train split) and
    ``out/features.tsv`` (+ ``.h5``) with ``regions`` × ``dim`` features an image; an existing set that is large
    enough is reused. Returns the paths (``flickr30k``, ``tsv``, ``h5``)."""
    import json
    import math

    from training.world import build_world

    out = Path(out)
    world = out / "world"
    paths = {"flickr30k": world / "flickr30k", "tsv": out / "features.tsv", "h5": out / "features.h5"}
    meta = world / "world.json"
    if meta.is_file() and json.loads(meta.read_text())["splits"]["train"] >= images and paths["tsv"].is_file() \
            and (paths["h5"].is_file() or not hdf5):
        return paths
    build_world(world, images=math.ceil(images / 0.8), seed=seed, hdf5=False, render=False, progress=False)
    source = TsvFeatures(world / "features.tsv")
    rng = np.random.default_rng(seed)
    shaped = []
    for image_id in source.ids():
        own = source[image_id]
        w, h = own.image_w, own.image_h
        extra = regions - min(len(own), regions)
        corners = rng.uniform(0, [w * 0.8, h * 0.8], size=(extra, 2))
        sizes = rng.uniform(0.1, 0.5, size=(extra, 2)) * [w, h]
        boxes = np.concatenate([own.boxes[:regions], np.concatenate([corners, np.minimum(corners + sizes, [w, h])], 1)])
        shaped.append(Regions(image_id, boxes.astype(np.float32),
                              rng.standard_normal((regions, dim), dtype=np.float32),
                              rng.uniform(size=regions).astype(np.float32), w, h))
    write_tsv(paths["tsv"], shaped)
    if hdf5:
        write_hdf5(paths["h5"], shaped)
    return paths
