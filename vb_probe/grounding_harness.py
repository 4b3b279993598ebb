"""``vb-probe ground``: heads chosen on one split, their maps turned into boxes on another, every published variant
a named setting (Kang et al., CVPR 2025, and their released code; docs/PROTOCOL.md walks through each).

Two passes of the ordinary probe: the **selection split** (Kang et al.: the train split) gives each head's image
share and spatial entropy on its first ``localization_prompts`` expressions, the elbow, the votes and the heads most
accurate against gold there; from them a :class:`~vb_probe.families.decoder.harness.HeadPlan` (fixed, gold, random
heads, the candidates for per-sample choice) is fixed and saved, and the **probed split** is read once with the
harness's tally beside the probe's own counts: every expression's box under every setting, scored against gold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.harness import CHOICES, GroundTally, HeadPlan
from vb_probe.families.decoder.localization import SKIP_LAYERS, TOP_K, bottom_row_heads
from vb_probe.probe_config import ProbeConfig, config_dict

COLUMNS = ["image_id", "unit", "expression", "gold", "setting", "heads", "x1", "y1", "x2", "y2", "iou", "hit_iou50",
           "hit_pointing"]
PLAN_FILE = ".ground-plan.json"  # the selection pass's plan, kept for --resume (keyed on what made it)
SINK_FILTERS = ("none", "audit", "bottom-row")  # how heads on attention sinks are kept out of the choice
DEFAULT_KS = (1, 3, 5)  # heads summed, as Kang et al. vary them
DEFAULT_READOUTS = ("paper", "released", "peak", "centroid")  # every readout of vb_probe.metrics.readouts
DEFAULT_CHOICES = CHOICES[:4]  # fixed, per-sample, gold, random (the one-criterion ablations on request)
SELECTION_COUNT = 10  # heads kept in each choice's order (Jaccard at k = 10 needs ten)


def default_selection_split(splits: tuple[str, ...], probed: str) -> str:
    """Kang et al. choose on the train split; a set without one chooses on its first split other than the probed."""
    if "train" in splits and probed != "train":
        return "train"
    others = [s for s in splits if s != probed]
    if not others:
        raise VbProbeError(f"the set has only split {probed!r}: heads cannot be chosen on another; pass --select-on")
    return others[0]


def head_plan(localization, counts, *, ks: tuple[int, ...], readouts: tuple[str, ...], choices: tuple[str, ...],
              entropy: str, seed: int, excluded: frozenset = frozenset()) -> tuple[HeadPlan, dict]:
    """The plan from the selection pass: ``localization`` its :class:`LocalizationTally` (prompts' shares and
    entropies), ``counts`` its entity :class:`HeadCounts` (for ``gold``); the selection's record for run.json."""
    from vb_probe.metrics.localization import kang_selection

    if localization.prompt_share is None:
        raise VbProbeError("no expression of the selection split could be read: nothing to choose heads from; check "
                           "--select-on and its images")
    largest = max(max(ks), SELECTION_COUNT)
    selection = kang_selection(localization.prompt_share.numpy(), localization.prompt_entropy.numpy(), top_k=TOP_K,
                               skip_layers=SKIP_LAYERS, count=largest, excluded=excluded)
    layers, heads = counts.layers, counts.heads
    sets: dict[str, tuple] = {}
    if "fixed" in choices:
        sets["fixed"] = tuple((layer, head) for layer, head, _ in selection.selected)
    if "gold" in choices:
        sets["gold"] = tuple(counts.ranked()[0][:largest])
    if "share-only" in choices:  # Kang et al.'s ablation: the image share alone (first layers left out)
        share = localization.prompt_share.numpy().mean(0)[SKIP_LAYERS:]  # [layer - SKIP_LAYERS, head]
        order = np.argsort(-share.ravel(), kind="stable")[:largest]
        sets["share-only"] = tuple((SKIP_LAYERS + int(j) // heads, int(j) % heads) for j in order)
    if "entropy-only" in choices:  # the spatial entropy alone: votes among every head, no elbow
        alone = kang_selection(localization.prompt_share.numpy(), localization.prompt_entropy.numpy(), top_k=TOP_K,
                               skip_layers=SKIP_LAYERS, count=largest, excluded=excluded, elbow_cut=False)
        sets["entropy-only"] = tuple((layer, head) for layer, head, _ in alone.selected)
    if "random" in choices:
        drawn = np.random.default_rng(seed).choice(layers * heads, size=min(largest, layers * heads), replace=False)
        sets["random"] = tuple(divmod(int(j), heads) for j in drawn)
    candidates = tuple(sorted((c["layer"], c["head"]) for c in selection.candidates)) if "per-sample" in choices else ()
    # a choice that found no head (a model of no more layers than are left out, no localized map) is said, not run
    unavailable = sorted(c for c in choices if c in sets and not sets[c]) + (
        ["per-sample"] if "per-sample" in choices and not candidates else [])
    sets = {c: heads_ for c, heads_ in sets.items() if heads_}
    plan = HeadPlan(sets, candidates, entropy, ks, readouts)
    if not plan.settings():
        raise VbProbeError(f"no head could be chosen by {', '.join(choices)} (the first {SKIP_LAYERS} layers are "
                           f"left out and the model has {layers}); add --choice gold or random, or use a deeper model")
    record = {"elbow": selection.elbow, "top_k": selection.top_k, "skip_layers": SKIP_LAYERS,
              "prompts": localization.kept, "candidates": selection.candidates,
              "excluded": [list(h) for h in sorted(excluded)],
              "unavailable": {c: "no head found (no candidate above the elbow past the first layers)"
                              for c in unavailable}}
    return plan, record


@dataclass
class GroundResult:
    """What ``vb-probe ground`` found: ``block`` the settings' scores and the heads (run.json's ``ground``),
    ``rows`` one row per expression and setting (``ground.csv``), ``selection`` how the heads were chosen, and the
    probe's own :class:`~vb_probe.results.GroundingResult` of the probed split (``probe``)."""

    block: dict
    rows: list[dict]
    selection: dict
    probe: object
    config: dict = field(default_factory=dict)

    FILES = ("ground.csv", "ground.png", "run.json")

    def accuracy(self, setting: str) -> float | None:
        """Acc@0.5 of ``setting`` (``fixed/k3/paper`` …)."""
        return next(s["acc50"] for s in self.block["settings"] if s["setting"] == setting)

    def run_json(self) -> dict:
        """``ground`` (the settings and heads), ``selection`` (how they were chosen), the probe's own report of the
        probed split (``entity_grounding``: every head's accuracy, baselines, the fixed position) and the config."""
        probe = {k: v for k, v in self.probe.run_json().items() if k != GroundTally.key}
        probe["extras"] = [k for k in probe.get("extras", []) if k != GroundTally.key]
        return {"probe": "ground", "config": self.config, "selection": self.selection, "ground": self.block,
                "entity_grounding": probe}

    def figure(self):
        """Acc@0.5 of every setting with its 95% interval, one colour a head choice."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [s for s in self.block["settings"] if s["n"]]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(shown)), 4.0))
        colours = dict(zip(CHOICES, ("tab:blue", "tab:orange", "tab:green", "tab:grey", "tab:purple", "tab:brown")))
        for x, s in enumerate(shown):
            low, high = s["acc50_ci95"]
            ax.errorbar(x, s["acc50"], yerr=[[s["acc50"] - low], [high - s["acc50"]]], fmt="o",
                        color=colours[s["choice"]], capsize=2)
        ax.set_xticks(range(len(shown)), [s["setting"] for s in shown], rotation=90, fontsize=7)
        ax.set_ylabel("Acc@0.5 (95% interval)")
        ax.set_ylim(0, 1)
        ax.set_title("Boxes from heads, per setting (choice / k / readout)")
        fig.tight_layout()
        return fig

    def save(self, folder: str | Path) -> Path:
        from vb_probe.atomic import atomic_files
        from vb_probe.results.files import csv_text, refuse_other_run

        folder = Path(folder)
        refuse_other_run(folder, "ground")
        with atomic_files(folder) as staged:
            staged.text("ground.csv", csv_text(COLUMNS, self.rows))
            staged.figure("ground.png", self.figure())
            staged.json("run.json", self.run_json())
        return folder


def csv_rows(tally: GroundTally) -> list[dict]:
    """The tally's rows as ``ground.csv`` has them (boxes in the original image's pixels)."""
    return [{"image_id": r[0], "unit": r[1], "expression": r[2], "gold": json.dumps(r[3]), "setting": r[4],
             "heads": " ".join(f"L{layer}H{head}" for layer, head in r[5]), "x1": r[6][0], "y1": r[6][1],
             "x2": r[6][2], "y2": r[6][3], "iou": r[7], "hit_iou50": int(r[8]), "hit_pointing": int(r[9])}
            for r in tally.rows]


def run_ground(cfg: ProbeConfig, model, tokenizer, *, select_on: str | None = None, ks: tuple[int, ...] = DEFAULT_KS,
               readouts: tuple[str, ...] = DEFAULT_READOUTS, choices: tuple[str, ...] = DEFAULT_CHOICES,
               sink_filter: str = "none", out: Path | None = None,
               progress: bool = True, resume: bool = False, dataset=None, store=None) -> GroundResult:
    """Choose heads on ``select_on`` (default: the set's train split), then read the probed split's boxes under
    every (choice, k, readout) setting. ``cfg``: the probe's options (its ``select_on`` is this function's).
    ``sink_filter``: ``audit`` (the sink audit runs on both splits and heads that put half or more of their image
    attention on sinks on the selection split are no candidates) or ``bottom-row`` (the authors' later code: heads
    with a bottom-row cell above 0.05 on half the selection prompts are no candidates); ``none`` keeps every head."""
    from vb_probe.metrics.readouts import READOUT_SETTINGS
    from vb_probe.pipeline import grounding_result, open_probe_data, run_probes
    from vb_probe.queries import ENTITY

    if sink_filter not in SINK_FILTERS:
        raise VbProbeError(f"--sink-filter {sink_filter}: use {', '.join(SINK_FILTERS)}")
    exclude_sink_heads = sink_filter == "audit"
    # a switch given twice (--k 3 --k 3) is one setting, not two copies of every expression's rows
    ks, readouts, choices = (tuple(dict.fromkeys(v)) for v in (ks, readouts, choices))
    if not ks or min(ks) < 1:
        raise VbProbeError(f"--k {ks}: each k must be at least 1")
    unknown = [r for r in readouts if r not in READOUT_SETTINGS] + [c for c in choices if c not in CHOICES]
    if unknown:
        raise VbProbeError(f"unknown readout or head choice {', '.join(unknown)}: readouts are "
                           f"{', '.join(READOUT_SETTINGS)}; choices {', '.join(CHOICES)}")
    from vb_probe.families import family_of

    family = family_of(model)
    if not family.maps_on_grid:
        raise VbProbeError(f"vb-probe ground reads each head's map on the model's image grid; a {family.name} model "
                           "reads regions or has no grid of its own (decoder VLMs have one); use entity-grounding")
    dataset, store, cfg = open_probe_data(cfg, family, dataset, store)
    probed = cfg.split or dataset.default_split
    select_on = select_on or default_selection_split(dataset.splits, probed)
    if select_on == probed:
        raise VbProbeError(f"--select-on {select_on}: heads chosen on the probed split itself would be scored on the "
                           "expressions that chose them; choose on another split (Kang et al.: train)")
    cfg = replace(cfg, sinks=cfg.sinks or exclude_sink_heads)  # the audit that excludes is reported on both splits
    select_cfg = replace(cfg, split=select_on, select_on=None, control=False, per_query=False, save_maps=())
    plan_key = {**config_dict(select_cfg), "ks": list(ks), "readouts": list(readouts), "choices": list(choices),
                "sink_filter": sink_filter}
    saved = _read_plan(out, plan_key) if resume and out is not None else None
    chosen = None
    if saved is not None:
        plan, record = HeadPlan.from_state(saved["plan"]), saved["selection"]
    else:
        selection_out = out / "selection" if out is not None else None
        chosen = run_probes(select_cfg, model, tokenizer, out=selection_out, progress=progress, resume=resume,
                            dataset=dataset, store=store)
        counts = chosen.main.counts.get(ENTITY)
        if counts is None or counts.n == 0:
            raise VbProbeError(f"no expression of split {select_on!r} could be scored: heads cannot be chosen there")
        from vb_probe.families.decoder.sinks import SinkTally

        localization = chosen.main.tallies["localization"]
        excluded = frozenset(chosen.main.tallies[SinkTally.key].sink_heads() if sink_filter == "audit" else
                             bottom_row_heads(localization.prompt_bottom) if sink_filter == "bottom-row" else ())
        plan, record = head_plan(localization, counts, ks=ks, readouts=readouts,
                                 choices=choices, entropy=cfg.entropy, seed=cfg.seed, excluded=excluded)
        record = {**record, "split": select_on, "entropy": cfg.entropy, "expressions": counts.n,
                  "sink_filter": sink_filter}
        if out is not None:
            _write_plan(out, plan_key, plan, record)
            if selection_out.is_dir() and not any(selection_out.iterdir()):
                selection_out.rmdir()
    main = run_probes(replace(cfg, split=probed, select_on=None), model, tokenizer, out=out, progress=progress, resume=resume,
                      dataset=dataset, store=store, tallies={GroundTally.key: GroundTally(plan)})
    # the probe's own report with the selection split's pass beside it (its fixed position, Kang et al.'s heads,
    # the gold-chosen head); a resumed run whose selection was saved reports them from the probed split
    probe = grounding_result(replace(main, select=chosen.main if chosen is not None else None,
                                     config=replace(main.config, select_on=select_on if chosen is not None else None)))
    tally = main.main.tallies[GroundTally.key]
    # the fixed-position pointer (the place the heads pick most on the selection split), by the pointing rule
    block = {**probe.extras[GroundTally.key], "fixed_position": probe.extras["localization"]["fixed_position"]}
    if out is not None and (out / PLAN_FILE).is_file():
        (out / PLAN_FILE).unlink()  # the run is whole: nothing left to resume
    facts = main.facts
    config = {**config_dict(cfg), "select_on": select_on, "ks": list(ks), "readouts": list(readouts),
              "choices": list(choices), "entropy": cfg.entropy, "view": cfg.view, "prompt": facts["prompt"]["preset"],
              "query_row": facts["query_row"], "localization_prompts": cfg.localization_prompts,
              "sinks": cfg.sinks, "sink_dims": list(cfg.sink_dims), "sink_filter": sink_filter}
    return GroundResult(block, csv_rows(tally), {**record, "plan": plan.state()}, probe, config)


def _read_plan(out: Path, key: dict) -> dict | None:
    path = out / PLAN_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if saved.get("key") == key else None


def _write_plan(out: Path, key: dict, plan: HeadPlan, record: dict) -> None:
    from vb_probe.atomic import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / PLAN_FILE, {"key": key, "plan": plan.state(), "selection": record})


__all__ = ["COLUMNS", "DEFAULT_CHOICES", "DEFAULT_KS", "DEFAULT_READOUTS", "GroundResult", "default_selection_split",
           "head_plan", "run_ground"]
