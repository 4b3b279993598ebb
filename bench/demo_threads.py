"""The demo's pre-training speed by torch thread count and OpenMP wait policy, idle and beside one busy process.

Why: torch's default is one thread a core, and OpenMP's threads spin while they wait for work; with another process
on the same cores, they spin against it at every parallel region, and a step can take four times as long. The
thread count is also part of the result (each count sums in another order; runs part after a few hundred steps),
so the demo fixes it (``train.threads`` of its configs), and it bounds the spinning (``GOMP_SPINCOUNT``, set by
``vb-probe demo`` unless the user set it or ``OMP_WAIT_POLICY``). This measures what each choice costs or buys.

Each setting runs in a fresh process (OpenMP reads its environment once): the demo's model (its config as
packaged) pre-trains a few steps on the built-in world (data cache, checkpoint), then ``--steps`` more resumed
from there, timed. Prints seconds a step and the ratio to torch's defaults on the idle machine, then one JSON line.

    python bench/demo_threads.py --world demo_out/world --config demo --steps 10
    python bench/demo_threads.py --world demo_out/world --config vilt --steps 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

WAITS = {"spin (OpenMP's default)": {},
         "GOMP_SPINCOUNT=3000 (the demo's)": {"GOMP_SPINCOUNT": "3000"},
         "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def seconds_a_step(config_name: str, world: Path, threads: int, steps: int) -> float:
    """In this process: the demo config's pre-training on ``threads`` threads, seconds a step."""
    import dataclasses
    import tempfile
    import time

    from common import describe  # noqa: F401  (puts the project on the path)

    from training.config import load_config
    from training.loop import pretrain

    config = load_config(config_name, [])
    warm = 3
    train = dataclasses.replace(config.train, threads=threads, steps=warm, eval_every=10**6, save_every=10**6,
                                save_every_s=0)
    with tempfile.TemporaryDirectory() as out:
        pretrain(dataclasses.replace(config, train=train), world, Path(out), progress=False)
        longer = dataclasses.replace(config, train=dataclasses.replace(train, steps=warm + steps))
        start = time.perf_counter()
        pretrain(longer, world, Path(out), resume=True, progress=False)
        return (time.perf_counter() - start) / steps


def measured(args, threads: int, wait: dict, busy: bool) -> float:
    """One setting in a fresh process (beside a busy one when ``busy``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | wait
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        done = subprocess.run([sys.executable, __file__, "--world", str(args.world), "--config", args.config,
                               "--steps", str(args.steps), "--one", str(threads)], env=env, capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent)
    finally:
        if competitor is not None:
            competitor.kill()
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=Path, required=True, help="a demo's world folder (vb-probe demo writes one)")
    parser.add_argument("--config", default="demo", help="demo (VisualBERT) or vilt")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single measurement, in a child process
    args = parser.parse_args()
    if args.one is not None:
        print(seconds_a_step(args.config, args.world.resolve(), args.one, args.steps))
        return
    results = {(label, busy, threads): measured(args, threads, wait, busy)
               for label, wait in WAITS.items() for busy in (False, True) for threads in (1, 2)}
    reference = results[(next(iter(WAITS)), False, 2)]
    print(f"{args.config} pre-training on {os.cpu_count()} cores; reference: 2 threads, OpenMP's default wait, idle "
          f"machine ({reference:.2f} s a step)")
    for (label, busy, threads), seconds in results.items():
        where = "beside one busy process" if busy else "idle machine"
        print(f"  {threads} thread(s), {label:34s} {where:24s} {seconds:6.2f} s a step   ratio {seconds / reference:5.2f}")
    print(json.dumps({"config": args.config, "cores": os.cpu_count(),
                      **{f"{'busy' if b else 'idle'}|{t}|{label.split(' (')[0]}": round(s, 3)
                         for (label, b, t), s in results.items()}}))


if __name__ == "__main__":
    main()
