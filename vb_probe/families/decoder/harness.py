"""From heads to boxes, per expression (``vb-probe ground``): the heads a :class:`HeadPlan` names, each query's maps on
its image's primary grid turned into a box under every readout of :mod:`vb_probe.metrics.readouts`, and the box
scored against the expression's gold (Acc@0.5 by IoU, mean IoU, and the pointing rule on the box's centre).

The trap: a box read on the model's grid is in the model's view (a crop, a padded square), not the image. The
mechanism: every grid cell carries its box in the original image's pixels (:mod:`.geometry`), so the readout's
cells become a box there, clipped to the image (a padded view's blob in the padding is an empty box, a miss).
The cost: per query, the maps of the heads the plan names (and the candidates, for per-sample choice) smoothed once
per kernel, then a sum and one labelling per setting: a few milliseconds, against a forward of a large model.

Head choices: ``fixed`` (Kang et al.'s: the most-voted heads on the selection split), ``gold`` (the heads most
accurate against gold on the selection split: what a supervised choice reaches), ``random`` (k heads drawn once,
seeded), ``per-sample`` (each query's own k lowest-entropy candidates above the elbow: Kang et al.'s 67.4 setting),
and Kang et al.'s one-criterion ablations: ``share-only`` (the heads of highest mean image share) and
``entropy-only`` (votes by entropy among every head, no elbow cut).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vb_probe.families.base import Tally
from vb_probe.queries import ENTITY

CHOICES = ("fixed", "per-sample", "gold", "random", "share-only", "entropy-only")
JACCARD_KS = (3, 10)  # the overlaps of unsupervised and gold-best sets reported


@dataclass(frozen=True)
class HeadPlan:
    """What the boxes are read from, decided before the probed split is read: ``sets`` choice → heads in order
    (the first k used at each k of ``ks``), ``candidates`` the heads above the elbow (per-sample choice among them,
    by the ``entropy`` variant), ``readouts`` the keys of :data:`~vb_probe.metrics.readouts.READOUT_SETTINGS`."""

    sets: dict[str, tuple[tuple[int, int], ...]]
    candidates: tuple[tuple[int, int], ...]
    entropy: str = "paper"
    ks: tuple[int, ...] = (1, 3, 5)
    readouts: tuple[str, ...] = ("paper", "released", "peak", "centroid")

    def settings(self) -> list[tuple[str, int, str]]:
        """Every (choice, k, readout) scored, in report order."""
        choices = [c for c in CHOICES if c == "per-sample" and self.candidates or c in self.sets]
        return [(choice, k, readout) for choice in choices for k in self.ks for readout in self.readouts]

    def state(self) -> dict:
        return {"sets": {k: [list(h) for h in v] for k, v in self.sets.items()},
                "candidates": [list(h) for h in self.candidates], "entropy": self.entropy, "ks": list(self.ks),
                "readouts": list(self.readouts)}

    @classmethod
    def from_state(cls, state: dict) -> HeadPlan:
        return cls({k: tuple(tuple(h) for h in v) for k, v in state["sets"].items()},
                   tuple(tuple(h) for h in state["candidates"]), state["entropy"], tuple(state["ks"]),
                   tuple(state["readouts"]))


def setting_name(choice: str, k: int, readout: str) -> str:
    return f"{choice}/k{k}/{readout}"


@dataclass
class GroundTally(Tally):
    """Per entity query: a box, its IoU with the gold and its hits under every setting of ``plan``; per head, the
    enrichment of its attention inside the gold (its share of image attention on the cells whose centre lies in a
    gold box, over those cells' share of the grid), summed over queries."""

    plan: HeadPlan
    rows: list[list] = field(default_factory=list)  # [image, unit, text, gold, setting, heads, box, iou, hit, point]
    enrichment: torch.Tensor | None = None  # [layer, head] float64 sums
    enrichment_n: int = 0

    key = "ground"

    def empty(self) -> GroundTally:
        return GroundTally(self.plan)

    def add(self, batch, rows: torch.Tensor, mass: torch.Tensor, choice: torch.Tensor, hits: torch.Tensor) -> None:
        """``rows`` [layer, n, head, R]; each image's grid, size and cells from the family's ``batch.extras``
        (``grids``, ``image_sizes``) and ``batch.cells``; the gold from each scored query."""
        from vb_probe.metrics.boxes import centre_hits, iou
        from vb_probe.metrics.readouts import (
            ENTROPY_VARIANTS,
            READOUT_SETTINGS,
            cells_box,
            gaussian_smooth,
            readout_cells,
            spatial_entropies,
        )

        entity = np.flatnonzero(np.array(batch.groups) == ENTITY)
        if not len(entity):
            return
        self._enrich(rows[:, entity], batch.targets["pointing"][entity].cpu(), batch.region_valid[entity].cpu())
        grids, sizes = batch.extras["grids"], batch.extras["image_sizes"]
        settings = self.plan.settings()
        largest = max(self.plan.ks)
        taps_needed = sorted({READOUT_SETTINGS[r].taps for r in self.plan.readouts})
        variant = ENTROPY_VARIANTS[self.plan.entropy]
        for i in entity.tolist():
            b = int(batch.batch_index[i])
            height, width = (int(v) for v in grids[b])
            maps = rows[:, i, :, :height * width].double().reshape(rows.shape[0], rows.shape[2], height, width)
            heads = dict(self.plan.sets)
            if self.plan.candidates:
                stack = torch.stack([maps[layer, head] for layer, head in self.plan.candidates]).numpy()
                order = np.argsort(spatial_entropies(stack, variant), kind="stable")[:largest]
                heads["per-sample"] = tuple(self.plan.candidates[j] for j in order)
            used = sorted({h for chosen in heads.values() for h in chosen[:largest]})
            raw = np.stack([maps[layer, head].numpy() for layer, head in used])  # [u, h, w]
            smoothed = {taps: dict(zip(used, gaussian_smooth(raw, taps))) for taps in taps_needed}
            query = batch.scored[i]
            gold = np.asarray(query.gold, dtype=np.float64).reshape(-1, 4)
            image_w, image_h = (float(v) for v in sizes[b])
            cells = np.asarray(batch.cells[b], dtype=np.float64)[:height * width]
            words = batch.item_words[b]
            first = query.first_word_index if query.first_word_index is not None else query.word_index
            text = " ".join(words[first:(query.phrase_last if query.phrase_last is not None else query.word_index) + 1])
            for choice_name, k, readout in settings:
                chosen = heads[choice_name][:k]
                setting = READOUT_SETTINGS[readout]
                summed = sum(smoothed[setting.taps][h] for h in chosen)
                box = cells_box(readout_cells(summed, setting), cells, image_w, image_h)
                overlap = float(iou(box[None], gold).max()) if len(gold) else 0.0
                point = bool(centre_hits(box[None], gold)[0]) if len(gold) else False
                self.rows.append([batch.image_ids[b], query.unit, text, gold.round(2).tolist(),
                                  setting_name(choice_name, k, readout), [list(h) for h in chosen],
                                  box.round(2).tolist(), round(overlap, 6), overlap >= 0.5, point])

    def _enrich(self, rows: torch.Tensor, gold_cells: torch.Tensor, valid: torch.Tensor) -> None:
        """Each head's attention share inside the gold cells over their share of the valid cells, summed over the
        queries whose gold covers some but not every cell (``rows`` [layer, n, head, R])."""
        gold_cells, valid = gold_cells.float(), valid.float()
        area = gold_cells.sum(-1) / valid.sum(-1).clamp(min=1)  # [n]
        usable = (area > 0) & (area < 1)
        if not bool(usable.any()):
            return
        rows = rows[:, usable].double()
        inside = (rows * gold_cells[usable][None, :, None, :]).sum(-1)  # [layer, n, head]
        share = inside / rows.sum(-1).clamp(min=torch.finfo(torch.float64).tiny)
        ratio = (share / area[usable].double()[None, :, None]).sum(1)  # [layer, head]
        self.enrichment = ratio if self.enrichment is None else self.enrichment + ratio
        self.enrichment_n += int(usable.sum())

    def merge(self, other: GroundTally) -> None:
        self.rows.extend(other.rows)
        if other.enrichment is not None:
            self.enrichment = other.enrichment.clone() if self.enrichment is None else self.enrichment + other.enrichment
        self.enrichment_n += other.enrichment_n

    def state(self) -> dict:
        from vb_probe.metrics.grounding import tensor_state

        return {"plan": self.plan.state(), "rows": self.rows, "enrichment_n": self.enrichment_n,
                **({"enrichment": tensor_state(self.enrichment)} if self.enrichment is not None else {})}

    def restored(self, state: dict) -> GroundTally:
        from vb_probe.metrics.grounding import tensor_from_state

        tally = GroundTally(HeadPlan.from_state(state["plan"]), [list(r) for r in state["rows"]])
        tally.enrichment_n = int(state["enrichment_n"])
        if "enrichment" in state:
            tally.enrichment = tensor_from_state(state["enrichment"])
        return tally

    def report(self, counts, select, split: str, select_on: str | None) -> dict:
        """Acc@0.5 (with its 95% interval), mean IoU and the pointing accuracy of every setting; the heads of each
        choice with their accuracy against gold here, rank among all heads and enrichment; the overlap of the
        unsupervised and the gold-best sets (gold-best: the most accurate heads here, ``counts``)."""
        from vb_probe.metrics.intervals import wilson_interval
        from vb_probe.metrics.readouts import jaccard

        by_setting: dict[str, list] = {}
        for row in self.rows:
            by_setting.setdefault(row[4], []).append(row)
        settings = []
        for choice_name, k, readout in self.plan.settings():
            name = setting_name(choice_name, k, readout)
            rows = by_setting.get(name, [])
            n, hit, point = len(rows), sum(bool(r[8]) for r in rows), sum(bool(r[9]) for r in rows)
            used = len(self.plan.candidates) if choice_name == "per-sample" else len(self.plan.sets[choice_name])
            settings.append({"setting": name, "choice": choice_name, "k": k, "heads_used": min(k, used),
                             "readout": readout, "n": n,
                             "acc50": round(hit / n, 6) if n else None,
                             "acc50_ci95": [round(v, 6) for v in wilson_interval(hit, n)] if n else None,
                             "mean_iou": round(float(np.mean([r[7] for r in rows])), 6) if n else None,
                             "pointing": round(point / n, 6) if n else None,
                             "pointing_ci95": [round(v, 6) for v in wilson_interval(point, n)] if n else None})
        accuracy = counts.accuracy().numpy()  # [layer, head] by the family's rule, here
        gold_best, rank = counts.ranked()
        enrichment = (self.enrichment / max(self.enrichment_n, 1)).numpy() if self.enrichment is not None else None

        def described(layer: int, head: int) -> dict:
            return {"layer": layer, "head": head, "accuracy": round(float(accuracy[layer, head]), 6),
                    "gold_rank": int(rank[layer, head]),
                    "enrichment": None if enrichment is None else round(float(enrichment[layer, head]), 6)}

        fixed = list(self.plan.sets.get("fixed", ()))
        return {"settings": settings, "queries": len({(r[0], r[1]) for r in self.rows}),
                "heads": {choice: [described(*h) for h in chosen] for choice, chosen in self.plan.sets.items()},
                "gold_best_here": [described(*h) for h in gold_best[:max(JACCARD_KS)]],
                "jaccard_fixed_vs_gold_best": {f"k{k}": round(jaccard(fixed[:k], gold_best[:k]), 6)
                                               for k in JACCARD_KS if len(fixed) >= k},
                "candidates": len(self.plan.candidates), "entropy": self.plan.entropy,
                "enrichment_queries": self.enrichment_n}

    @staticmethod
    def lines(block: dict) -> list[str]:
        out = []
        for s in block["settings"]:
            if s["n"]:
                low, high = s["acc50_ci95"]
                out.append(f"{s['setting']:<28} Acc@0.5 {s['acc50']:.3f} [{low:.3f}, {high:.3f}]  mean IoU "
                           f"{s['mean_iou']:.3f}  pointing {s['pointing']:.3f}  (n={s['n']})")
        return out


__all__ = ["CHOICES", "GroundTally", "HeadPlan", "setting_name"]
