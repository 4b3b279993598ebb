"""``vb-train``: the built-in world, pre-training, fine-tuning and the ablation study.

Exit codes: 0 success, 2 bad input (one line naming the input and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cmd_tiny(args: argparse.Namespace) -> int:
    from training.tiny import write_tiny

    out = write_tiny(args.family, args.out, seed=args.seed)
    print(f"wrote a tiny random {args.family} model (2 layers × 4 heads, the public checkpoints' processor settings) "
          f"to {out}; try it on the built-in world, e.g. vb-probe entity-grounding --ckpt {out} --flickr30k "
          "WORLD/flickr30k " + ("--features WORLD/features.tsv" if args.family in ("visualbert", "lxmert")
                                else "--images WORLD/images") + " --out OUT")
    return 0


def cmd_world(args: argparse.Namespace) -> int:
    from training.world import build_world
    from vb_probe.atomic import check_replaceable, remove_stale_temporaries, writable_folder

    check_replaceable(args.out, kind="world")  # before any work: a user's folder, or one of another kind, stays
    remove_stale_temporaries(args.out.resolve().parent)  # a world killed mid-way left its temporary folder
    writable_folder(args.out.resolve().parent, "--out's parent")

    stats = build_world(args.out, images=args.scenes, seed=args.seed, hdf5=not args.no_hdf5,
                        render=not args.no_images, progress=not args.quiet)
    print(f"world written to {args.out}")
    for line in stats.lines():
        print("  " + line)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from training.config import load_config
    from training.loop import claim_run_folder, pretrain
    from vb_probe.atomic import writable_folder

    writable_folder(args.out)
    claim_run_folder(args.out, args.resume)  # before any work, and before the task's text is written into it
    overrides = args.set + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    if args.task:  # task-specific pre-training: masked LM on the task's own text and images
        from training.tasks import load_task, task_captions
        from vb_probe.atomic import write_json

        task = load_task(args.task, args.data)
        captions = args.out / f"{args.task}_text.json"
        write_json(captions, task_captions(task))
        overrides += [f"data.captions={captions.resolve()}", f"data.features={task.features_path().resolve()}"]
        if args.init is not None:
            overrides.append(f"data.tokenizer={args.init.resolve()}")
    config = load_config(args.config, overrides)
    result = pretrain(config, args.data, args.out, resume=args.resume, progress=not args.quiet,
                      init_checkpoint=args.init)
    if result["skipped_images"]:
        print(f"skipped {result['skipped_images']} images without features")
    if result["eval"]:
        print("final evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in result["eval"].items()))
    print(f"model saved to {args.out / 'final'} (transformers folder); log in {args.out / 'log.csv'}")
    return 0


def _settings(args, task: str | None = None):
    from training.finetune import FinetuneSettings
    from training.tasks import TASKS

    steps = args.steps if args.steps is not None else (TASKS[task].default_steps if task else 300)
    return FinetuneSettings(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)


def _print_metrics(result: dict) -> None:
    chance, prior = result["chance"], result.get("text_prior", {})
    shown = {k: v for k, v in result.items() if k in ("vqa_accuracy", "accuracy", "consistency", "q2a", "qa2r", "q2ar",
                                                     "r@1", "r@5", "r@10", "upper_bound") and v is not None}

    def with_baselines(key: str, value: float) -> str:
        if key not in chance:
            return f"{key} {value:.3f}"
        extra = f", question-only prior {prior[key]:.3f}" if key in prior else ""
        return f"{key} {value:.3f} (chance {chance[key]:.3f}{extra})"

    print(f"{result['task']} on {result['split']}: " + ", ".join(with_baselines(k, v) for k, v in shown.items()))
    if result.get("by_answer_type"):
        print("  by answer type: " + ", ".join(f"{k} {v:.3f}" for k, v in result["by_answer_type"].items()))


def cmd_finetune(args: argparse.Namespace) -> int:
    from training.finetune import FINETUNE_FILES, finetune
    from training.tasks import TASKS
    from vb_probe.atomic import check_outputs, writable_folder

    tasks = list(TASKS) if args.task == "all" else [args.task]
    for task in tasks:  # every folder checked before any training: a user's file is never replaced
        check_outputs(args.out / task if args.task == "all" else args.out, FINETUNE_FILES)
    writable_folder(args.out)
    for task in tasks:  # with --task all, each task in its own folder under --out
        out = args.out / task if args.task == "all" else args.out
        result = finetune(task, args.data, args.init, out, _settings(args, task), tokenizer_dir=args.tokenizer,
                          progress=not args.quiet)
        _print_metrics(result)
        print(f"wrote {out / 'metrics.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from training.finetune import FINETUNE_FILES, evaluate_saved
    from vb_probe.atomic import atomic_files, check_outputs

    out = args.out or args.ckpt
    check_outputs(out, [FINETUNE_FILES[1]])
    result = evaluate_saved(args.ckpt, args.data, args.device)
    _print_metrics(result)
    with atomic_files(out) as staged:
        staged.json(FINETUNE_FILES[1], result)
    print(f"wrote {out / 'metrics.json'}")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from training.finetune import ABLATION_FILES, ablate
    from vb_probe.atomic import check_outputs, writable_folder

    check_outputs(args.out, ABLATION_FILES)
    writable_folder(args.out)
    rows = ablate(args.task, args.data, args.out, [v for v in args.variants.split(",") if v], args.seeds,
                  args.set, _settings(args), bert=args.bert, progress=not args.quiet)
    print("variant, mean ± std over seeds (held-out " + rows[0]["metric"] + ")")
    for row in rows:
        print(f"  {row['variant']:26s} {float(row['mean']):.3f} ± {float(row['std']):.3f}   (chance {float(row['chance']):.3f})")
    print(f"wrote {args.out / 'ablation.csv'} and {args.out / 'ablation.png'}")
    return 0


def _finetune_options(p: argparse.ArgumentParser, steps: int | None = None, allow_all: bool = False) -> None:
    from training.tasks import TASKS
    from vb_probe.errors import positive_float, positive_int

    p.add_argument("--task", required=True, choices=list(TASKS) + (["all"] if allow_all else []),
                   help="the downstream task" + (" ('all': each in its own folder under --out)" if allow_all else ""))
    p.add_argument("--data", type=Path, required=True, help="folder with the task's files and features")
    p.add_argument("--steps", type=positive_int, default=steps,
                   help="fine-tuning steps" + ("" if steps else " (default: the task's own: " + ", ".join(
                       f"{name} {task.default_steps}" for name, task in TASKS.items()) + ")"))
    p.add_argument("--batch-size", type=positive_int, default=32, help="examples per step")
    p.add_argument("--lr", type=positive_float, default=2e-4, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the task head and the data order")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    from training.tasks import TASKS
    from vb_probe.errors import DefaultsHelpFormatter, OneLineArgumentParser, at_least, positive_int

    parser = OneLineArgumentParser(prog="vb-train", description="Build the world, pre-train and fine-tune "
                                   "VisualBERT (and a small ViLT), and write tiny models of any family.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
    p = add_parser("world", "generate the built-in world in the real data formats")
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder (or a world written before)")
    p.add_argument("--scenes", type=at_least(10), default=1000,
                   help="how many scenes (images) to generate, at least 10")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes")
    p.add_argument("--no-hdf5", action="store_true", help="write the TSV features only")
    p.add_argument("--no-images", action="store_true", help="skip the rendered PNGs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_world)

    p = add_parser("tiny", "a tiny random model of any family (real processor settings) to try the commands offline")
    p.add_argument("--family", required=True, choices=["visualbert", "lxmert", "vilt", "llava", "qwen2_vl",
                                                         "paligemma"], help="the model family")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.set_defaults(func=cmd_tiny)

    p = add_parser("pretrain", "masked LM with the image + sentence-image prediction")
    p.add_argument("--config", help="a packaged config (demo, vilt, tasks, paper) or a TOML file; vilt pre-trains a "
                                     "small ViLT on the images")
    p.add_argument("--data", type=Path, required=True, help="folder with the captions JSON, features and tokenizer")
    p.add_argument("--out", type=Path, required=True, help="the run's folder: new or empty, or a run to --resume")
    p.add_argument("--steps", type=positive_int, help="shorthand for --set train.steps=N")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. train.steps=300")
    p.add_argument("--init", type=Path, help="start from this VisualBERT checkpoint (e.g. for task-specific pre-training)")
    p.add_argument("--task", choices=[name for name, task in TASKS.items() if task.text_pretraining],
                   help="task-specific pre-training: masked LM on this task's text and images under --data")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pretrain)

    p = add_parser("finetune", "fine-tune on VQA, NLVR2, VCR or Flickr30K region-to-phrase (or all)")
    _finetune_options(p, allow_all=True)
    p.add_argument("--init", required=True, help="VisualBERT checkpoint folder, or 'random'")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the --init checkpoint's; with --init random, "
                                                    "--data's tokenizer/)")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pt and metrics.json (--task all: one "
                   "folder per task inside)")
    p.set_defaults(func=cmd_finetune)

    p = add_parser("evaluate", "held-out metrics of a fine-tuned model")
    p.add_argument("--ckpt", type=Path, required=True, help="the --out folder of vb-train finetune")
    p.add_argument("--data", type=Path, required=True, help="folder with the task's files and features")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, help="folder for metrics.json (default: --ckpt)")
    p.set_defaults(func=cmd_evaluate)

    p = add_parser("ablate", "the paper's ablation study (Table 5) over variants and seeds")
    _finetune_options(p, steps=150)
    p.add_argument("--variants", default="full,no-early-fusion,no-coco-pretraining,no-bert-init,"
                                        "no-grounded-pretraining,no-objective2", help="comma-separated variants")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per variant")
    p.add_argument("--bert", type=Path, help="BERT folder for the 'with BERT init' variants (else all start random)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="pre-training overrides")
    p.add_argument("--out", type=Path, required=True, help="folder for ablation.csv, ablation_runs.csv, "
                   "ablation.png and one run per variant and seed")
    p.set_defaults(func=cmd_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vb_probe.errors import VbProbeError, run_command

    return run_command("vb-train", args, (VbProbeError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
