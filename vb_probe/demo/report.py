"""The demos' reports (``report.md``): VisualBERT's over detector regions (:func:`report`) and ViLT's over image
patches (:func:`patch_report`), sharing the controls and verdict, the syntactic table and the pre-training section.
Pure text from typed results: no model, no torch."""

from __future__ import annotations

from vb_probe.metrics.intervals import shown
from vb_probe.queries import DIRECTIONS
from vb_probe.results import GroundingResult, SyntacticResult


def syntactic_rows(syntactic: SyntacticResult, baseline: str, with_interval: bool) -> list[str]:
    """The rows of a demo report's syntactic table, one per relation and direction: n, the head chosen on val with
    its accuracy on test (``with_interval``: and its 95% interval), the ``baseline`` over the same arcs
    (``highest_confidence`` or ``random``), the random-init control's best head, the best head on test."""
    lines = []
    for relation in syntactic.relations:
        for direction in DIRECTIONS:
            arc = (relation, direction)
            scores = syntactic.scores.get(arc)
            if scores is None:
                lines.append(f"| {relation} | {direction} | 0 | no arcs reach a boxed phrase | – | – | – |")
                continue
            chosen, control, top = syntactic.selected.get(arc), syntactic.control.get(arc), scores.best_head()
            chosen_text = chosen_cell(scores, chosen) if with_interval else \
                (f"{chosen.label} **{shown(chosen.accuracy)}**" if chosen else "–")
            control_text = shown(control.best_head().accuracy) if control is not None else "–"
            lines.append(f"| {relation} | {direction} | {scores.n} | {chosen_text} | "
                         f"{shown(scores.baselines[baseline])} | {control_text} | {top.label} {shown(top.accuracy)} |")
    return lines


def pretraining_lines(history: list[dict], key: str, without_image: str, matching: str) -> list[str]:
    """A demo report's pre-training section: held-out masked entity-word accuracy with the image and
    ``without_image`` (the regions removed, a blank image), and the ``matching`` objective's accuracy."""
    evals = [r for r in history if r.get("eval_entity_acc")]
    if not evals:
        return []
    last = evals[-1]
    return ["", "## Pre-training", "",
            f"Held-out masked entity-word accuracy {float(last['eval_entity_acc']):.3f} with the image vs "
            f"{float(last['eval_entity_no_image_acc']):.3f} with {without_image}; {matching} accuracy "
            f"{float(last['eval_sip_acc']):.3f} (log: `models/{key}/log.csv`)."]


def patch_report(entity: GroundingResult, syntactic: SyntacticResult, history: list[dict], config, seconds: float,
                  key: str) -> str:
    """``report.md`` of the ViLT demo: pointing-rule numbers beside their baselines and controls."""
    b, best = entity.baselines, entity.best_head()
    m = config.model
    lines = ["# vb-probe demo report: ViLT (image patches)", "",
             f"A {m.num_hidden_layers}-layer × {m.num_attention_heads}-head ViLT (hidden {m.hidden_size}, "
             f"{m.patch_size}-pixel patches of the images resized to a shortest edge of {m.image_size}, random init) "
             f"pre-trained for {config.train.steps} steps on the built-in world's images (masked LM with the image, "
             f"`{config.objective.masking}` masking, image–text matching), probed on "
             f"{entity.provenance['n_images']} held-out test images. Total time {seconds / 60:.1f} min.", "",
             "## Entity grounding, pointing rule (Figure 3)", "",
             f"- Phrases: {entity.n_phrases}, scored {entity.n}, skipped {entity.skipped}.",
             f"- Baselines: a random patch {shown(b['random'])} (about the gold boxes' share of the image); oracle "
             f"{shown(b['oracle'])}; no detector, so no highest-confidence baseline."]
    lines += chosen_and_control(entity, "ViLT")
    lines += controls_and_rules(entity, "patch cells")
    lines += [f"- Best of {entity.shape[0] * entity.shape[1]} heads chosen on test itself (biased upwards): "
              f"{best.label} {shown(best.accuracy)}.",
              "- Per-layer best: " + ", ".join(f"{h.label} {h.accuracy:.2f}" for h in entity.per_layer_best()), "",
              "![Figure 3](entity_grounding/entity_grounding.png)", "", "## Syntactic grounding (Figure 4)", "",
              "| relation | direction | n | head chosen on val: test accuracy | random | random-init control | "
              "best on test (biased) |",
              "|---|---|---|---|---|---|---|"]
    lines += syntactic_rows(syntactic, "random", with_interval=False)
    lines += pretraining_lines(history, key, "a blank image", "image–text matching")
    lines += ["", "Explore every head on the first 20 test images, patch cells drawn on the image: "
              "[`explorer/index.html`](explorer/index.html).", ""]
    return "\n".join(lines)


def chosen_and_control(entity: GroundingResult, model: str) -> list[str]:
    """The report's lines on the head chosen on val (with its interval) and the random-initialised ``model``'s."""
    lines, selected = [], entity.selected_head
    if selected:
        low, high = entity.interval(selected.layer, selected.head)
        lines.append(f"- **Head chosen on val, scored on test: {selected.label} {shown(selected.accuracy)}** (95% "
                     f"interval {shown(low)}–{shown(high)}).")
    if entity.control is not None:
        control = entity.control.best_head()
        lines.append(f"- Control, a random-initialised {model} of the same shape: best head {control.label} "
                     f"{shown(control.accuracy)} (chosen on test: an upper bound for the control).")
    return lines


def controls_and_rules(entity: GroundingResult, cells: str) -> list[str]:
    """The report's lines on the permuted-geometry control, the verdict and the other scoring rule (``cells``: what
    an image's tokens are, "regions" or "patch cells")."""
    lines = []
    if entity.permuted is not None:
        permuted = entity.permuted.best_head()
        lines.append(f"- Control, permuted geometry (the same picks scored after each image's {cells} are shuffled): "
                     f"best head {permuted.label} {shown(permuted.accuracy)}.")
    lines.append(f"- **Verdict: {emergence_verdict(entity)}.**")
    if entity.other_rule is not None:
        other = entity.other_rule.best_head()
        rule = ("the pointing rule (the chosen region's centre inside a gold box, as patch models are scored)"
                if entity.other_rule_name == "pointing" else "the IoU ≥ 0.5 rule (a patch rarely reaches it)")
        lines.append(f"- {rule[0].upper()}{rule[1:]} on the same picks: best head {other.label} "
                     f"{shown(other.accuracy)}, random {shown(entity.other_rule.baselines.get('random'))}.")
    return lines


def emergence_verdict(entity: GroundingResult) -> str:
    """Whether grounding emerged, in one line: the head chosen on val must beat, by its 95% interval's lower end,
    both the random-init control's best head and the permuted-geometry control's best head."""
    selected = entity.selected_head
    if selected is None or entity.control is None:
        return "undecided (run with a selection split and the random-init control)"
    low, _ = entity.interval(selected.layer, selected.head)
    bars = {"the random-init control's best head": entity.control.best_head().accuracy}
    if entity.permuted is not None:
        bars["the permuted-geometry control's best head"] = entity.permuted.best_head().accuracy
    beaten = [name for name, value in bars.items() if low <= value]
    if not beaten:
        return (f"grounding emerged: {selected.label}'s interval ({shown(low)} up) clears "
                + " and ".join(f"{name} ({shown(value)})" for name, value in bars.items()))
    return (f"grounding did not emerge: {selected.label} {shown(selected.accuracy)} (interval from {shown(low)}) "
            f"does not clear " + " or ".join(f"{name} ({shown(bars[name])})" for name in beaten)
            + ", which land on the named object as often without having learned anything about it")


def chosen_cell(scores, chosen) -> str:
    """A table cell for the head chosen on val, scored on ``scores``' split: label, accuracy and its 95% interval."""
    if chosen is None:
        return "–"
    low, high = scores.interval(chosen.layer, chosen.head)
    return f"{chosen.label} **{chosen.accuracy:.3f}** ({low:.3f}–{high:.3f})"


def other_sets_lines(other: dict | None) -> list[str]:
    """The report's section on the world's RefCOCO and Visual Genome layouts."""
    if not other:
        return []
    lines = ["", "## Referring expressions and relations (the world's RefCOCO and Visual Genome layouts)", "",
             "The same model and probe on the world's RefCOCO layout (each phrase naming one object is an expression; "
             "the query word is its head, from spaCy's parse; the head chosen on val) and on its Visual Genome "
             "relationships (subject word → object's box, and back; no parser):", "",
             "| set | n | head chosen on val: accuracy (95% interval) | highest-confidence | best on this split (biased) |",
             "|---|---|---|---|---|"]
    for name in (n for n in ("refcoco testA", "refcoco testB") if n in other):
        result = other[name]
        best = result.best_head()
        lines.append(f"| RefCOCO {name.split()[1]} (expressions) | {result.n} | "
                     f"{chosen_cell(result, result.selected_head)} | {result.baselines['highest_confidence']:.3f} | "
                     f"{best.label} {best.accuracy:.3f} |")
    relations = other["visual_genome relations"]
    ranked = sorted(relations.scores.items(), key=lambda item: -item[1].n)
    for (relation, direction), scores in ranked[:6]:
        chosen, best = relations.selected.get((relation, direction)), scores.best_head()
        lines.append(f"| Visual Genome `{relation}` {direction.replace('_', ' ')} | {scores.n} | "
                     f"{chosen_cell(scores, chosen)} | "
                     f"{scores.baselines['highest_confidence']:.3f} | {best.label} {best.accuracy:.3f} |")
    return lines


def report(entity: GroundingResult, syntactic: SyntacticResult, history: list[dict], config, seconds: float,
            examples: list[str], key: str, extras: dict) -> str:
    b = entity.baselines
    hc = b["highest_confidence"]
    best = entity.best_head()
    ratio = best.accuracy / hc if hc else float("nan")
    layers_2x = [h.layer for h in entity.per_layer_best() if hc and h.accuracy >= 2 * hc]
    selected = entity.selected_head
    lines = [
        "# vb-probe demo report",
        "",
        f"A {config.model.num_hidden_layers}-layer × {config.model.num_attention_heads}-head VisualBERT "
        f"(hidden {config.model.hidden_size}, random init) pre-trained for {config.train.steps} steps on the built-in "
        f"world (masked LM with the image, `{config.objective.masking}` masking, sentence-image objective "
        f"`{config.objective.sentence_image}`), probed on {entity.provenance['n_images']} held-out test images. "
        f"Total time {seconds / 60:.1f} min.",
        "",
        "## Entity grounding (Figure 3)",
        "",
        f"- Phrases: {entity.n_phrases}, scored {entity.n}, skipped {entity.skipped}.",
        f"- Baselines: highest detector confidence **{hc:.3f}**, random region {b['random']:.3f}, oracle {b['oracle']:.3f}.",
    ]
    if selected:
        low, high = entity.interval(selected.layer, selected.head)
        lines.append(f"- **Head chosen on val, scored on test: {selected.label} {selected.accuracy:.3f}** (95% interval "
                     f"{low:.3f}–{high:.3f}), {selected.accuracy / hc:.2f}× the highest-confidence baseline.")
    if entity.control is not None:
        control = entity.control.best_head()
        lines.append(f"- Control, the same probe on a random-initialised model of the same shape: its best head "
                     f"{control.label} {control.accuracy:.3f} (chosen on test, so an upper bound for the control).")
    lines.append(f"- Best of {entity.shape[0] * entity.shape[1]} heads chosen on test itself (biased upwards): "
                 f"{best.label} {best.accuracy:.3f} ({ratio:.2f}× the baseline).")
    lines += controls_and_rules(entity, "regions")
    lines += [
        f"- Layers whose best head reaches 2× the baseline: {layers_2x or 'none'} "
        f"({'meets' if len(layers_2x) >= 2 and ratio >= 2 else 'does NOT meet'} the demo's target of ≥2× in several layers).",
        "- Per-layer best: " + ", ".join(f"{h.label} {h.accuracy:.2f}" for h in entity.per_layer_best()),
        "",
        "![Figure 3](figures/fig3_entity_grounding.png)",
        "",
        "## Syntactic grounding (Figure 4)",
        "",
        "Heads chosen on val and scored on test, beside the highest-confidence baseline over the same arcs and the",
        "random-init control's best head (chosen on test, an upper bound for the control):",
        "",
        "| relation | direction | n | head chosen on val: test accuracy (95% interval) | highest-confidence | "
        "random-init control | best on test (biased) |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += syntactic_rows(syntactic, "highest_confidence", with_interval=True)
    lines += ["", "![Figure 4](figures/fig4_syntactic.png)", "",
              "## Attention on the image (Figures 1 and 5)", "",
              "For six layers, each layer's best grounding head: the region each entity word attends to most (an "
              "entity's words share a colour and a number), solid where it hits a gold box (dashed), dotted where "
              "it misses.", ""]
    lines += [f"![{name}](figures/{name})" for name in examples]
    lines += ["", "Explore every head on the first 20 test images interactively: [`explorer/index.html`](explorer/index.html) "
              "(one offline file: click a head, hover a word)."]
    attribution, causal = extras["attribution"], extras["causal"]
    best_agree = attribution.best_head()
    lines += ["", "## Attribution and a causal check", "",
              f"- Integrated gradients of {attribution['n']} masked entity words (first test images): the region with "
              f"the largest attribution hits a gold box {attribution['ig_top_region_grounding_accuracy']:.3f} of the "
              f"time; the image carries {attribution['mean_image_share_of_attribution']:.2f} of the attribution. "
              f"Head whose most-attended region most often is that region: {best_agree.label} "
              f"({best_agree.accuracy:.2f}). Table: `attribution/attribution_heads.csv`.",
              f"- Ablating the {causal['k']} best grounding heads lowers masked entity-word accuracy on {causal['n']} "
              f"test phrases from {causal['accuracy_intact']:.3f} to {causal['accuracy_top_k_ablated']:.3f} "
              f"(drop {shown(causal['drop_top_k'])}, 95% bootstrap interval {shown(causal['drop_top_k_ci95'][0])} to "
              f"{shown(causal['drop_top_k_ci95'][1])}); {causal['k']} random heads drop it "
              f"{shown(causal['drop_random_k'])} "
              f"on average over {len(causal['random_draws'])} draws. In short: {causal['verdict']}. "
              "Region-to-phrase R@1 needs a fine-tuned region-to-phrase head (`vb-train finetune --task flickr30k`)."]
    lines += other_sets_lines(extras.get("other_sets"))
    lines += pretraining_lines(history, key, "the regions removed", "sentence-image")
    lines += ["", "Files: `entity_grounding/` and `syntactic/` (CSV + run.json as the probe commands write), "
              "`figures/`.", ""]
    return "\n".join(lines)


def selection_verdict(entity: GroundingResult) -> str:
    """Whether Kang et al.'s selection (no gold) found the grounding heads, in one line: its most-voted head is
    among the three best heads by gold on the probed split, and its 95% interval clears the random-init control's
    best head."""
    block = entity.extras.get("localization", {}).get("unsupervised_selection", {})
    heads = block.get("heads") or []
    if not heads:
        return "the selection without boxes chose no head (too few layers or prompts)"
    top = heads[0]
    label = f"L{top['layer']}H{top['head']}"
    low = top["ci95"][0]
    control = entity.control.best_head().accuracy if entity.control is not None else None
    clears = control is None or low > control
    if top["gold_rank"] <= 3 and clears:
        return (f"the selection without boxes found them: its most-voted head {label} ranks {top['gold_rank']} of "
                f"{entity.shape[0] * entity.shape[1]} by gold ({shown(top['accuracy'])}"
                + (f", interval from {shown(low)} above the control's {shown(control)})" if control is not None else ")"))
    why = (f"it ranks {top['gold_rank']} by gold" if top["gold_rank"] > 3 else
           f"its interval (from {shown(low)}) does not clear the random-init control's {shown(control)}")
    return (f"the selection without boxes did not find them: its most-voted head {label} scores "
            f"{shown(top['accuracy'])} and {why}")


def llava_report(entity: GroundingResult, other: dict, boxes, history: list[dict], config, seconds: float, key: str,
                 examples: list[str]) -> str:
    """``report.md`` of the LLaVA grown on the world: the pointing-rule numbers beside their baselines and controls,
    the two verdicts (did localization heads emerge; did the selection without boxes find them), RefCOCO, boxes from
    heads per readout, the sink audit and each stage's last loss."""
    b, best = entity.baselines, entity.best_head()
    s = config.llava
    lines = ["# vb-probe demo report: a LLaVA grown on the world", "",
             f"A LLaVA (transformers' `LlavaForConditionalGeneration`) of a {s.vision_layers}-layer CLIP ViT (hidden "
             f"{s.vision_hidden}, {s.patch_size}-pixel patches of the image padded to a {s.image_size}² square: "
             f"{(s.image_size // s.patch_size) ** 2} image tokens) and a {s.text_layers}-layer × {s.text_heads}-head "
             f"Llama (hidden {s.text_hidden}), grown as LLaVA is: the language model on the captions ({s.lm_steps} "
             f"steps), CLIP contrastive ({s.clip_steps}), the projector alone on captioning ({s.align_steps}), "
             f"projector and language model on captioning ({s.caption_steps}). Probed on "
             f"{entity.provenance['n_images']} held-out test images. Total time {seconds / 60:.1f} min.", "",
             f"- **Verdict: {emergence_verdict(entity)}.**",
             f"- **Selection without boxes: {selection_verdict(entity)}.**", "",
             "## Entity grounding, pointing rule (Figure 3)", "",
             f"- Phrases: {entity.n_phrases}, scored {entity.n}, skipped {entity.skipped}.",
             f"- Baselines: a random image token {shown(b['random'])}; oracle {shown(b['oracle'])}."]
    lines += chosen_and_control(entity, "LLaVA")
    if entity.permuted is not None:
        permuted = entity.permuted.best_head()
        lines.append(f"- Control, permuted geometry: best head {permuted.label} {shown(permuted.accuracy)}.")
    localization = entity.extras.get("localization", {})
    fixed = localization.get("fixed_position")
    if fixed:
        lines.append(f"- Fixed-position baseline (the place picked most on {fixed['chosen_on']}): "
                     f"{shown(fixed['accuracy'])}.")
    for h in localization.get("unsupervised_selection", {}).get("heads", []):
        lines.append(f"- Kang et al.'s head L{h['layer']}H{h['head']} ({h['votes']} votes): {shown(h['accuracy'])}, "
                     f"rank {h['gold_rank']} by gold.")
    lines += [f"- Best of {entity.shape[0] * entity.shape[1]} heads chosen on test itself (biased upwards): "
              f"{best.label} {shown(best.accuracy)}.", "", "![Figure 3](entity_grounding/entity_grounding.png)", ""]
    lines += [f"![{name}](figures/{name})" for name in examples]
    if other:
        lines += ["", "## RefCOCO (the world's layout; the query word each expression's head)", "",
                  "| split | expressions | head chosen on val | random |", "|---|---|---|---|"]
        for name, result in other.items():
            lines.append(f"| {name.split()[1]} | {result.n} | {chosen_cell(result, result.selected_head)} | "
                         f"{shown(result.baselines['random'])} |")
    lines += ["", "## Boxes from heads on RefCOCO val (`ground/`: heads chosen on train)", "",
              "| setting | Acc@0.5 (95% interval) | mean IoU | pointing |", "|---|---|---|---|"]
    for row in boxes.block["settings"]:
        if row["n"] and (row["k"] == 3 or row["choice"] == "fixed"):  # every readout of the voted heads; k 3 of all
            low, high = row["acc50_ci95"]
            lines.append(f"| {row['setting']} | {shown(row['acc50'])} ({shown(low)}–{shown(high)}) | "
                         f"{shown(row['mean_iou'])} | {shown(row['pointing'])} |")
    sinks = entity.extras.get("sinks")
    if sinks:
        from vb_probe.families.decoder.sinks import SinkTally

        lines += ["", "## Attention sinks", "", "- " + "; ".join(SinkTally.lines(sinks))]
    losses = {}
    for row in history:
        losses[row.get("stage")] = row.get("loss")
    if losses:
        lines += ["", "## Growing it", "", "Last logged loss of each stage: " + ", ".join(
            f"{stage} {float(loss):.3f}" for stage, loss in losses.items() if stage) + f" (log: `models/{key}/log.csv`)."]
    lines += ["", "Explore the first 20 RefCOCO val images with each expression's box from heads: "
              "[`explorer/index.html`](explorer/index.html).", ""]
    return "\n".join(lines)
