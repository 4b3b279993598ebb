"""The sink audit of a probe pass (``--sinks``): which image tokens are visual attention sinks (Kang et al., ICLR
2025), how much of each head's image attention they take, where they lie against the gold boxes, and every head's
accuracy re-scored with them masked out.

The trap: ``output_hidden_states`` keeps every layer's states over the whole sequence ([layer, B, T, D]: gigabytes
for a 7B model at 3,000 tokens). The mechanism: a forward hook on each decoder layer reads its output at the image
tokens only and keeps two numbers a token (its massive-activation ratio and the dimension holding it); the hooks are
removed when the forward ends, and the forward itself is not changed (the logits are the same with or without them).
The cost: one gather of [B, R, D] a layer and its norms, against the layer's own work.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from vb_probe.families.base import Tally
from vb_probe.metrics.sinks import FIRST_LAYER, SINK_RATIO, found_dims, massive_ratio, sink_tokens
from vb_probe.queries import ENTITY

SINK_HEAD_SHARE = 0.5  # a head whose image attention goes half or more to sinks is a sink head (excluded on request)


class SinkTally(Tally):
    """Sinks per image and layer, the dimensions holding massive values, and per head: its share of image attention
    on sinks and its hits with sinks masked (entity queries). ``dims``: the sink dimensions when given (else found:
    every dimension is searched and the ones that hold the massive values are reported)."""

    key = "sinks"

    def __init__(self, blocks_of, dims: tuple[int, ...] = ()):
        self.blocks_of = blocks_of  # model → its decoder layers (the residual stream's blocks)
        self.dims = tuple(int(d) for d in dims)
        self.n = 0
        self.share = None  # [layer, head] float64: sum over queries of the share of image attention on sinks
        self.correct_masked = None  # [layer, head] int64
        self.dim_counts = None  # [D] int64: massive values per dimension (image tokens, any layer)
        self.images: dict[str, list[int]] = {}  # image → sinks per layer (from FIRST_LAYER), and in all
        self.gold = [0, 0, 0, 0]  # sinks in gold, sinks, cells in gold, cells (over entity queries)
        self._ratios: list[torch.Tensor] = []  # this batch's [B, R] a layer, filled during the forward

    def empty(self) -> SinkTally:
        return SinkTally(self.blocks_of, self.dims)

    @contextmanager
    def watching(self, model, batch):
        """Hooks on every decoder layer of ``model`` for the batch's forward: the ratio of each image token's
        hidden state (``batch.extras['image_positions']`` [B, R]), kept on this tally for :meth:`add`."""
        positions = batch.extras["image_positions"]
        dims = torch.tensor(self.dims, dtype=torch.long) if self.dims else None

        def hook(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output  # [B, T, D]
            index = positions.to(hidden.device)[..., None].expand(-1, -1, hidden.shape[-1])
            on_image = hidden.gather(1, index)  # [B, R, D]: the image tokens only
            ratio, dim = massive_ratio(on_image, dims)  # [B, R] each
            self._ratios.append(ratio.cpu())
            valid = torch.arange(on_image.shape[1], device=ratio.device)[None] < counts.to(ratio.device)
            massive = (ratio >= SINK_RATIO) & valid
            found = torch.bincount(dim[massive].cpu(), minlength=hidden.shape[-1])  # which dimensions hold them
            self.dim_counts = found if self.dim_counts is None else self.dim_counts + found

        counts = batch.extras["image_counts"][:, None]  # [B, 1] image tokens a row
        handles = [block.register_forward_hook(hook) for block in self.blocks_of(model)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def add(self, batch, rows: torch.Tensor, mass: torch.Tensor, choice: torch.Tensor, hits: torch.Tensor) -> None:
        """``rows`` [layer, n, head, R]; the ratios the hooks kept for this batch's forward."""
        if not self._ratios:
            return
        ratios = torch.stack(self._ratios)  # [L, B, R]
        self._ratios = []
        counts = batch.extras["image_counts"]  # [B]
        valid_rows = torch.arange(ratios.shape[-1])[None] < counts[:, None]  # [B, R]
        sinks = sink_tokens(ratios) & valid_rows  # [B, R]
        # (dims given: the ratio is over those dims only; found: over all, and dim_counts says which held them)
        for b, image_id in enumerate(batch.image_ids):
            if image_id not in self.images:
                per_layer = ((ratios[FIRST_LAYER:, b] >= SINK_RATIO) & valid_rows[b]).sum(-1).tolist()
                self.images[image_id] = [int(sinks[b].sum()), *per_layer]
        entity = torch.from_numpy(np.flatnonzero(np.array(batch.groups) == ENTITY))
        if not len(entity):
            return
        rows = rows[:, entity].double()
        sink = sinks[batch.batch_index.cpu()[entity]][:, :rows.shape[-1]]  # [n, R]
        on_sinks = (rows * sink[None, :, None, :]).sum(-1) / rows.sum(-1).clamp(min=torch.finfo(torch.float64).tiny)
        share = on_sinks.sum(1)  # [layer, head]
        masked = rows.masked_fill(sink[None, :, None, :], -1.0)
        valid = batch.region_valid.cpu()[entity]
        masked = masked.masked_fill(~valid[None, :, None, :], -2.0)
        picked = masked.argmax(-1)  # [layer, n, head]
        target = hits.cpu()[entity]  # [n, R]
        correct = target[None, :, None, :].expand(picked.shape[0], -1, picked.shape[2], -1).gather(
            -1, picked[..., None])[..., 0].sum(1).to(torch.int64)
        self.share = share if self.share is None else self.share + share
        self.correct_masked = correct if self.correct_masked is None else self.correct_masked + correct
        gold = batch.targets["pointing"].cpu()[entity] & valid
        self.gold = [self.gold[0] + int((sink & gold).sum()), self.gold[1] + int(sink.sum()),
                     self.gold[2] + int(gold.sum()), self.gold[3] + int(valid.sum())]
        self.n += len(entity)

    def merge(self, other: SinkTally) -> None:
        for name in ("share", "correct_masked", "dim_counts"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if theirs is not None:
                setattr(self, name, theirs.clone() if mine is None else mine + theirs)
        for image_id, counts in other.images.items():
            self.images.setdefault(image_id, counts)
        self.gold = [a + b for a, b in zip(self.gold, other.gold)]
        self.n += other.n

    def state(self) -> dict:
        from vb_probe.metrics.grounding import tensor_state

        return {"dims": list(self.dims), "n": self.n, "images": self.images, "gold": self.gold,
                **{name: tensor_state(getattr(self, name)) for name in ("share", "correct_masked", "dim_counts")
                   if getattr(self, name) is not None}}

    def restored(self, state: dict) -> SinkTally:
        from vb_probe.metrics.grounding import tensor_from_state

        tally = SinkTally(self.blocks_of, tuple(state["dims"]))
        tally.n, tally.images, tally.gold = int(state["n"]), dict(state["images"]), list(state["gold"])
        for name in ("share", "correct_masked", "dim_counts"):
            if name in state:
                setattr(tally, name, tensor_from_state(state[name]))
        return tally

    def sink_heads(self) -> list[tuple[int, int]]:
        """Heads whose mean share of image attention on sinks is at least :data:`SINK_HEAD_SHARE`."""
        if self.share is None or not self.n:
            return []
        mean = self.share / self.n
        return [(int(layer), int(head)) for layer, head in torch.nonzero(mean >= SINK_HEAD_SHARE).tolist()]

    def report(self, counts, select, split: str, select_on: str | None) -> dict:
        """The sink dimensions (given or found), sinks per image and layer, their overlap with gold against the
        cells' own, each head's share on sinks and its accuracy with sinks masked beside its accuracy here."""
        images = list(self.images.values())
        per_image = [c[0] for c in images]
        per_layer = np.mean([c[1:] for c in images], axis=0).round(4).tolist() if images else []
        found = found_dims(self.dim_counts) if self.dim_counts is not None else []
        dims = {"given": list(self.dims)} if self.dims else {
            "found": found, "counts": {str(d): int(self.dim_counts[d]) for d in found}}
        block = {"ratio": SINK_RATIO, "from_layer": FIRST_LAYER, "dims": dims, "images": len(images),
                 "sinks_per_image": round(float(np.mean(per_image)), 4) if images else 0.0,
                 "images_with_sinks": int(sum(1 for c in per_image if c)), "sinks_per_layer": per_layer,
                 "share_of_sinks_in_gold": round(self.gold[0] / self.gold[1], 6) if self.gold[1] else None,
                 "share_of_cells_in_gold": round(self.gold[2] / self.gold[3], 6) if self.gold[3] else None,
                 "queries": self.n}
        if self.share is not None and self.n:
            share = (self.share / self.n).numpy()
            masked = (self.correct_masked.double() / self.n).numpy()
            here = (counts.n_correct.double() / max(counts.n, 1)).numpy()
            best = np.unravel_index(int(np.argmax(here)), here.shape)
            best_masked = np.unravel_index(int(np.argmax(masked)), masked.shape)
            block.update({
                "sink_heads": [{"layer": layer, "head": head, "share_on_sinks": round(float(share[layer, head]), 6),
                                "accuracy": round(float(here[layer, head]), 6),
                                "accuracy_sinks_masked": round(float(masked[layer, head]), 6)}
                               for layer, head in self.sink_heads()],
                "best_head": {"layer": int(best[0]), "head": int(best[1]), "accuracy": round(float(here[best]), 6),
                              "accuracy_sinks_masked": round(float(masked[best]), 6)},
                "best_head_sinks_masked": {"layer": int(best_masked[0]), "head": int(best_masked[1]),
                                           "accuracy_sinks_masked": round(float(masked[best_masked]), 6)},
                "share_on_sinks": share.round(6).tolist(), "accuracy_sinks_masked": masked.round(6).tolist()})
        return block

    @staticmethod
    def lines(block: dict) -> list[str]:
        dims = block["dims"].get("given") or block["dims"].get("found") or []
        line = (f"sinks (ratio ≥ {block['ratio']:.0f} × RMS in dims {dims or 'none found'}): "
                f"{block['sinks_per_image']:.2f} an image on {block['images_with_sinks']} of {block['images']} images")
        if block.get("share_of_sinks_in_gold") is not None:
            line += (f"; {block['share_of_sinks_in_gold']:.0%} of sinks in gold boxes (cells: "
                     f"{block['share_of_cells_in_gold']:.0%})")
        out = [line]
        if "best_head" in block:
            best = block["best_head"]
            heads = " ".join(f"L{h['layer']}H{h['head']}" for h in block["sink_heads"]) or "none"
            out.append(f"with sinks masked: best head L{best['layer']}H{best['head']} {best['accuracy']:.3f} → "
                       f"{best['accuracy_sinks_masked']:.3f}; sink heads (≥ {SINK_HEAD_SHARE:.0%} of image attention "
                       f"on sinks): {heads}")
        return out


__all__ = ["SINK_HEAD_SHARE", "SinkTally"]
