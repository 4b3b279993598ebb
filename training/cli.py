"""``vb-train``: the built-in world, pre-training, fine-tuning and the ablation study.

Exit codes: 0 success, 2 bad input (one line naming the input and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_world(args: argparse.Namespace) -> int:
    from training.world import build_world

    stats = build_world(args.out, images=args.images, seed=args.seed, hdf5=not args.no_hdf5,
                        render=not args.no_images, progress=not args.quiet)
    print(f"world written to {args.out}")
    for line in stats.lines():
        print("  " + line)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.loop import pretrain

    config = load_config(args.config, args.set)
    result = pretrain(config, args.data, args.out, resume=args.resume, progress=not args.quiet,
                      init_checkpoint=args.init)
    if result["skipped_images"]:
        print(f"skipped {result['skipped_images']} images without features")
    if result["eval"]:
        print("final evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in result["eval"].items()))
    print(f"model saved to {args.out / 'final'} (transformers folder); log in {args.out / 'log.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vb-train", description="Build, pre-train and fine-tune VisualBERT.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("world", help="generate the built-in world in the real data formats")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-hdf5", action="store_true", help="write the TSV features only")
    p.add_argument("--no-images", action="store_true", help="skip the rendered PNGs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_world)

    p = sub.add_parser("pretrain", help="masked LM with the image + sentence-image prediction")
    p.add_argument("--config", type=Path, help="TOML file (configs/demo.toml, configs/paper.toml)")
    p.add_argument("--data", type=Path, required=True, help="folder with the captions JSON, features and tokenizer")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, help="shorthand for --set train.steps=N")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--init", type=Path, help="start from this VisualBERT checkpoint (task-specific pre-training)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "steps", None) is not None:
        args.set = [*args.set, f"train.steps={args.steps}"]
    from vb_probe.errors import VbProbeError

    try:
        return args.func(args)
    except (VbProbeError, ValueError) as exc:
        if args.debug:
            raise
        print(f"vb-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vb-train: interrupted; run again with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
