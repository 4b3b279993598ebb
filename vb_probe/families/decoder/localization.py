"""The decoder family's own measure of a probe pass (:class:`LocalizationTally`): the fixed-position baseline and
Kang et al.'s (CVPR 2025) localization heads chosen without boxes, kept per batch beside the engine's counts and
reported into ``run.json`` under ``localization``.

- **Fixed-position baseline**: every head's pick on every entity query counts for its *place* (one of 64 × 64 bins
  of the model's view, :mod:`vb_probe.metrics.positions`), and the hits per place; the most-picked place on the
  selection split is the fixed position, scored as a pointer that always points there.
- **Heads chosen without boxes**: for the first ``prompts`` entity queries, every head's image share and the
  spatial entropy of its map on the grid (:mod:`vb_probe.metrics.localization`); at report time the elbow of the
  mean shares, the votes per prompt and the heads with most votes, each with its accuracy against gold.

- **Views** (tiled models: LLaVA-NeXT's tiles, Gemma 3's crops …): on images the model sees through more than one
  view, how often each head's pick falls in the primary (whole-image) view and how often in another (a tile).
  Places and spatial entropies are read on the primary view (a tile's cell counts for the place of the primary
  view holding its centre).

The cost: one spatial entropy per head and prompt, for the capped prompts only; picks per place are a bincount.
"""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.families.base import Tally
from vb_probe.queries import ENTITY

TOP_K, SKIP_LAYERS, SELECTED = 10, 2, 3  # Kang et al.: votes per prompt, first layers left out, heads reported
BOTTOM_ROW_LIMIT = 0.05  # the authors' later code: a head with a bottom-row cell above this attends to a sink


def bottom_row_heads(bottom: torch.Tensor) -> list[tuple[int, int]]:
    """The released code's sink rule over the selection prompts: ``bottom`` [N, layer, head] each prompt's largest
    attention on the grid's bottom row; a head is dropped when it exceeds :data:`BOTTOM_ROW_LIMIT` on half the
    prompts or more (the code drops it per sample; a fixed choice drops it when it usually would)."""
    if bottom is None or not len(bottom):
        return []
    often = (bottom > BOTTOM_ROW_LIMIT).float().mean(0) >= 0.5
    return [(int(layer), int(head)) for layer, head in torch.nonzero(often).tolist()]


class LocalizationTally(Tally):
    """Picks and hits per place of the grid (entity queries), and per prompt every head's image share and spatial
    entropy, for at most ``prompts`` prompts."""

    key = "localization"

    def __init__(self, prompts: int, entropy: str = "paper"):
        from vb_probe.metrics.positions import BINS

        self.prompts = max(0, int(prompts))
        self.entropy = entropy  # the spatial entropy's variant (:data:`vb_probe.metrics.readouts.ENTROPY_VARIANTS`)
        self.position_picks = torch.zeros(BINS, dtype=torch.int64)
        self.position_hits = torch.zeros(BINS, dtype=torch.int64)
        self.n = 0  # entity queries seen
        self.prompt_share: torch.Tensor | None = None  # [N, layer, head] float32
        self.prompt_entropy: torch.Tensor | None = None  # [N, layer, head] float32
        # [N, layer, head] float32: the largest attention on the grid's bottom row (the released code's sink rule)
        self.prompt_bottom: torch.Tensor | None = None
        self.tiled = 0  # entity queries on an image seen through several views
        self.view_picks: torch.Tensor | None = None  # [layer, head, 2] int64 picks in the primary view, in another

    @property
    def kept(self) -> int:
        return 0 if self.prompt_share is None else int(self.prompt_share.shape[0])

    def empty(self) -> LocalizationTally:
        return LocalizationTally(self.prompts - self.kept, self.entropy)

    def add(self, batch, rows: torch.Tensor, mass: torch.Tensor, choice: torch.Tensor, hits: torch.Tensor) -> None:
        """The entity queries of one batch: ``rows`` [layer, n, head, R], ``mass`` and ``choice`` [layer, n, head],
        ``hits`` [n, R]; each image's grid (rows, columns) of its primary view, each cell's place and view from
        the family's own ``batch.extras`` (``grids``, ``places``, ``view_index``)."""
        from vb_probe.metrics.localization import spatial_entropies
        from vb_probe.metrics.positions import hits_per_place, picks_per_place
        from vb_probe.metrics.readouts import ENTROPY_VARIANTS

        entity = torch.from_numpy(np.flatnonzero(np.array(batch.groups) == ENTITY))
        if not len(entity):
            return
        rows, mass, choice, hits = rows[:, entity], mass[:, entity], choice[:, entity], hits[entity]
        rows_of = batch.batch_index.cpu()[entity]
        grids = batch.extras["grids"][rows_of]  # [n, 2]
        places = batch.extras["places"][rows_of]  # [n, R]
        self.position_picks += picks_per_place(choice.cpu(), places)
        view_index = batch.extras["view_index"][rows_of]  # [n, R]
        tiled = view_index.amax(-1) > 0  # [n]
        if bool(tiled.any()):
            picked_view = view_index[tiled][None, :, None, :].expand(choice.shape[0], -1, choice.shape[2], -1).gather(
                -1, choice[:, tiled.to(choice.device)].cpu()[..., None])[..., 0]  # [layer, n_tiled, head]
            other = (picked_view > 0).sum(1)  # [layer, head]
            counts = torch.stack([int(tiled.sum()) - other, other], -1).to(torch.int64)
            self.view_picks = counts if self.view_picks is None else self.view_picks + counts
            self.tiled += int(tiled.sum())
        self.position_hits += hits_per_place(hits.cpu(), grids)
        self.n += len(entity)
        take = max(0, min(self.prompts - self.kept, rows.shape[1]))
        if not take:
            return
        layers, _, heads, _ = rows.shape
        entropy = torch.empty(take, layers, heads, dtype=torch.float32)
        bottom = torch.empty(take, layers, heads, dtype=torch.float32)
        shapes = [tuple(g) for g in grids[:take].tolist()]
        for shape in set(shapes):  # maps of one grid shape at once
            which = torch.from_numpy(np.flatnonzero([s == shape for s in shapes]))
            maps = rows[:, which, :, :shape[0] * shape[1]].permute(1, 0, 2, 3).reshape(-1, *shape)
            found = spatial_entropies(maps, ENTROPY_VARIANTS[self.entropy])
            entropy[which] = found.reshape(len(which), layers, heads).float()
            bottom[which] = maps[:, -1, :].amax(-1).reshape(len(which), layers, heads).float().cpu()
        share = mass[:, :take].permute(1, 0, 2).float().cpu()
        self._append(share, entropy, bottom)

    def _append(self, share: torch.Tensor, entropy: torch.Tensor, bottom: torch.Tensor) -> None:
        if self.prompt_share is None:
            self.prompt_share, self.prompt_entropy, self.prompt_bottom = share.clone(), entropy.clone(), bottom.clone()
        else:
            self.prompt_share = torch.cat([self.prompt_share, share])
            self.prompt_entropy = torch.cat([self.prompt_entropy, entropy])
            self.prompt_bottom = torch.cat([self.prompt_bottom, bottom])

    def merge(self, other: LocalizationTally) -> None:
        self.position_picks += other.position_picks
        self.position_hits += other.position_hits
        self.n += other.n
        self.tiled += other.tiled
        if other.view_picks is not None:
            self.view_picks = other.view_picks.clone() if self.view_picks is None else self.view_picks + other.view_picks
        if other.prompt_share is not None:
            self._append(other.prompt_share, other.prompt_entropy, other.prompt_bottom)

    def finish(self) -> None:
        """Keep the first ``prompts`` prompts in batch order (each process kept a prefix of its own batches')."""
        if self.prompt_share is not None:
            self.prompt_share = self.prompt_share[:self.prompts]
            self.prompt_entropy = self.prompt_entropy[:self.prompts]
            self.prompt_bottom = self.prompt_bottom[:self.prompts]

    def state(self) -> dict:
        from vb_probe.metrics.grounding import tensor_state

        return {"prompts": self.prompts, "entropy": self.entropy, "n": self.n,
                "position_picks": tensor_state(self.position_picks),
                "position_hits": tensor_state(self.position_hits), "tiled": self.tiled,
                **({"view_picks": tensor_state(self.view_picks)} if self.view_picks is not None else {}),
                **({"prompt_share": tensor_state(self.prompt_share),
                    "prompt_entropy": tensor_state(self.prompt_entropy),
                    "prompt_bottom": tensor_state(self.prompt_bottom)} if self.prompt_share is not None else {})}

    def restored(self, state: dict) -> LocalizationTally:
        from vb_probe.metrics.grounding import tensor_from_state

        tally = LocalizationTally(int(state["prompts"]), state["entropy"])
        tally.n = int(state["n"])
        tally.position_picks = tensor_from_state(state["position_picks"])
        tally.position_hits = tensor_from_state(state["position_hits"])
        tally.tiled = int(state.get("tiled", 0))  # saved before tiled models: none
        if "view_picks" in state:
            tally.view_picks = tensor_from_state(state["view_picks"])
        if "prompt_share" in state:
            tally.prompt_share = tensor_from_state(state["prompt_share"])
            tally.prompt_entropy = tensor_from_state(state["prompt_entropy"])
            tally.prompt_bottom = tensor_from_state(state["prompt_bottom"])
        return tally

    def report(self, counts, select: LocalizationTally | None, split: str, select_on: str | None) -> dict:
        """The fixed-position baseline (the grid place the heads pick most often on the selection split, and how
        often a pointer fixed there hits gold here), and the heads Kang et al.'s criterion selects without boxes,
        each with its accuracy against gold here (``counts``: this pass's entity counts)."""
        from vb_probe.metrics.intervals import wilson_interval
        from vb_probe.metrics.localization import kang_selection
        from vb_probe.metrics.positions import place_label

        source, chosen_on = (select, select_on) if select is not None else (self, split)
        place = int(source.position_picks.argmax())
        picks = int(source.position_picks.sum())
        block = {"fixed_position": {"chosen_on": chosen_on, "place": [round(v, 6) for v in place_label(place)],
                                    "share_of_picks": round(int(source.position_picks[place]) / max(picks, 1), 6),
                                    "accuracy": round(int(self.position_hits[place]) / max(counts.n, 1), 6)}}
        heads, shown = [], {}
        chooser, chosen_from = (select, select_on) if select is not None and select.kept else (self, split)
        if chooser.prompt_share is not None:
            selection = kang_selection(chooser.prompt_share.numpy(), chooser.prompt_entropy.numpy(), top_k=TOP_K,
                                       skip_layers=SKIP_LAYERS, count=SELECTED)
            _, rank = counts.ranked()  # 1: the head with the most hits here
            for layer, head, votes in selection.selected:
                correct = int(counts.n_correct[layer, head])
                low, high = wilson_interval(correct, counts.n)
                heads.append({"layer": layer, "head": head, "votes": votes, "accuracy": round(correct / counts.n, 6),
                              "ci95": [round(low, 6), round(high, 6)],
                              "gold_rank": int(rank[layer, head])})
            shown = {"elbow": selection.elbow, "candidates": selection.candidates}
        if self.view_picks is not None:
            best = divmod(int(counts.n_correct.argmax()), int(counts.n_correct.shape[1]))  # (layer, head)
            total = self.view_picks.sum((0, 1))

            def primary_share(picks: torch.Tensor) -> float:
                return round(int(picks[0]) / max(int(picks.sum()), 1), 6)

            block["views"] = {"queries": self.tiled, "primary_share_all_heads": primary_share(total),
                              "best_head": {"layer": int(best[0]), "head": int(best[1]),
                                            "primary_share": primary_share(self.view_picks[best[0], best[1]])},
                              "selected": [{"layer": h["layer"], "head": h["head"],
                                            "primary_share": primary_share(self.view_picks[h["layer"], h["head"]])}
                                           for h in heads]}
        block["unsupervised_selection"] = {
            "method": "Kang et al. 2025: image share above the elbow, lowest spatial entropy, first layers left out",
            "prompts": chooser.kept, "split": chosen_from, "entropy": chooser.entropy, "top_k": TOP_K,
            "skip_layers": SKIP_LAYERS, "heads": heads, **shown}
        return block

    @staticmethod
    def lines(block: dict) -> list[str]:
        """The fixed-position baseline and the unsupervised selection, as the summary shows them."""
        fixed = block["fixed_position"]
        row, col = fixed["place"]
        lines = [f"fixed-position baseline (the place picked most on {fixed['chosen_on']}, "
                 f"{fixed['share_of_picks']:.0%} of picks, at row {row:.2f} column {col:.2f} of the image): "
                 f"{fixed['accuracy']:.3f}"]
        chosen = block.get("unsupervised_selection", {})
        heads = "  ".join(f"L{h['layer']}H{h['head']} {h['accuracy']:.3f} ({h['votes']} votes, "
                          f"rank {h['gold_rank']} by gold)" for h in chosen.get("heads", []))
        lines.append(f"localization heads chosen without boxes (Kang et al., {chosen.get('prompts', 0)} prompts of "
                     f"{chosen.get('split')}, {len(chosen.get('candidates', []))} heads above the elbow "
                     f"{chosen.get('elbow', 0.0):.3f}): {heads or 'none (too few layers or prompts)'}")
        views = block.get("views")
        if views:
            best = views["best_head"]
            lines.append(f"views: on {views['queries']} queries of images seen whole and in tiles or crops, the "
                         f"heads' picks fall in the whole-image view {views['primary_share_all_heads']:.0%} of the "
                         f"time (best head L{best['layer']}H{best['head']}: {best['primary_share']:.0%}), in a tile "
                         "or crop the rest")
        return lines
