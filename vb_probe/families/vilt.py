"""ViLT (Kim et al. 2021) as a model family: transformers' own ``ViltModel``, not re-implemented.

Single stream over text and image *patches*: ``[text tokens] [image CLS] [patches]``, every layer's self-attention
over all of them (eager code in transformers, so ``output_attentions`` gives the maps; they are small). The
image tokens are patches of the image as ViLT's own image processor resized it (shortest edge to 384, longest at
most 640, both floored to multiples of 32: x and y scale differently), so each patch token's *cell* is a box of the
original image: from the processor's output (its pixel mask gives the resized size), never re-derived.

Two traps, both handled here: ``ViltEmbeddings.visual_embed`` deals the patches into a random order with
``torch.multinomial`` on every forward and keeps the order only in a value the model drops, so the order is
captured by wrapping ``visual_embed`` for the probe's forward (output unchanged) and every row is put back into
the image's row-major cell order; and the image's own CLS token is not spatial (left out). Patches are scored by
the pointing rule (a patch is rarely IoU ≥ 0.5 with a gold box).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vb_probe.data.features import Regions
from vb_probe.errors import DataError, VbProbeError
from vb_probe.families import FamilyBase, Site, items_image_tokens, pin, register_family
from vb_probe.families.base import settings_json
from vb_probe.families.loading import load_pretrained
from vb_probe.hub import DEFAULT_TOKENIZER

MODEL_TYPE = "vilt"


@dataclass
class PatchGrid(Regions):
    """One image as ViLT sees it: ``boxes`` [R, 4] each patch cell in the original image's pixels, row-major
    (cell ``r * grid_w + c``); ``pixel_values`` [3, H, W] and ``pixel_mask`` [H, W] the processor's output."""

    pixel_values: torch.Tensor | None = None
    pixel_mask: torch.Tensor | None = None
    grid: tuple[int, int] = (0, 0)  # (rows, columns) of patches
    kind = "pixels"


def image_processor(folder: Path | None) -> tuple[Any, str | None]:
    """ViLT's image processor, loaded as transformers loads it: the checkpoint's own, from
    ``preprocessor_config.json`` or from ``processor_config.json`` (where transformers 5's ``ViltProcessor`` nests it);
    else ViLT's defaults (those of the published checkpoints), with the note that says so. The PIL back-end when
    torchvision is absent (the same resizing)."""
    try:
        from transformers import ViltImageProcessorPil as Processor
    except ImportError:  # an older transformers: one back-end only
        from transformers import ViltImageProcessor as Processor
    if folder is not None and _has_image_processor(Path(folder)):
        try:
            return Processor.from_pretrained(str(folder)), None
        except (OSError, ValueError, TypeError) as exc:
            from vb_probe.errors import CheckpointError

            raise CheckpointError(f"{folder}: its image processor cannot load ({type(exc).__name__}); re-save the "
                                  "checkpoint's processor") from None
    note = None if folder is None else (f"{folder} has no image processor (preprocessor_config.json or "
                                        "processor_config.json); using ViLT's default (shortest edge 384, longest ≤ "
                                        "640, multiples of 32)")
    return Processor(), note


def _has_image_processor(folder: Path) -> bool:
    """The folder holds an image processor's settings: its own file, or nested in the processor's."""
    import json

    if (folder / "preprocessor_config.json").is_file():
        return True
    try:
        return "image_processor" in json.loads((folder / "processor_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def patch_grid(processor, patch_size: int, image, image_id: str) -> PatchGrid:
    """``image`` (RGB PIL) through ``processor``; the cells of the patch grid the model will read. The valid
    patch grid is worked out from the pixel mask exactly as ``visual_embed`` does (nearest interpolation to the
    patch grid), so cells and tokens agree for any processor settings."""
    width, height = image.size
    out = processor(image, return_tensors="pt")
    pixel_values, pixel_mask = out["pixel_values"][0], out["pixel_mask"][0]
    resized_h, resized_w = int(pixel_mask.any(1).sum()), int(pixel_mask.any(0).sum())
    patches = torch.nn.functional.interpolate(pixel_mask[None, None].float(),
                                              size=(pixel_mask.shape[0] // patch_size, pixel_mask.shape[1] // patch_size))
    grid_h, grid_w = int(patches[0, 0, :, 0].sum()), int(patches[0, 0, 0, :].sum())
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    sx, sy = width / resized_w, height / resized_h  # resized pixels → original pixels, per axis
    x1, y1 = cols.ravel() * patch_size, rows.ravel() * patch_size
    boxes = np.stack([x1 * sx, y1 * sy, np.minimum(x1 + patch_size, resized_w) * sx,
                      np.minimum(y1 + patch_size, resized_h) * sy], axis=1).astype(np.float32)
    # a size_divisor finer than the patch leaves a band at the right and bottom that no patch covers: not seen
    seen = np.array([0.0, 0.0, min(grid_w * patch_size, resized_w) * sx, min(grid_h * patch_size, resized_h) * sy])
    return PatchGrid(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height), seen,
                     pixel_values, pixel_mask, (grid_h, grid_w))


def pad_pixels(grids: list[PatchGrid]) -> dict[str, torch.Tensor]:
    """Images of several sizes as one batch, padded at the bottom and right as ViLT's processor pads a batch:
    ``pixel_values`` [B, 3, H_max, W_max] float32 and ``pixel_mask`` [B, H_max, W_max]."""
    height = max(g.pixel_values.shape[1] for g in grids)
    width = max(g.pixel_values.shape[2] for g in grids)
    pixels = torch.zeros(len(grids), 3, height, width)
    mask = torch.zeros(len(grids), height, width, dtype=torch.long)
    for b, grid in enumerate(grids):
        _, h, w = grid.pixel_values.shape
        pixels[b, :, :h, :w] = grid.pixel_values
        mask[b, :h, :w] = grid.pixel_mask
    return {"pixel_values": pixels, "pixel_mask": mask}


@contextmanager
def captured_patch_order(model):
    """While inside, every forward of ``model`` records the patch order ``visual_embed`` sampled:
    ``record["patch_index"]`` [B, N, 2] (row, column) of each image token after the image CLS, and
    ``record["mask"]`` [B, 1 + N] which image tokens are real. The model's outputs are unchanged."""
    embeddings = model.embeddings
    own = embeddings.__dict__.get("visual_embed")
    original = embeddings.visual_embed
    record: dict[str, torch.Tensor] = {}

    def visual_embed(*args, **kwargs):
        x, x_mask, (patch_index, size) = original(*args, **kwargs)
        record["patch_index"], record["mask"] = patch_index, x_mask
        return x, x_mask, (patch_index, size)

    embeddings.visual_embed = visual_embed
    try:
        yield record
    finally:
        if own is None:
            del embeddings.visual_embed
        else:
            embeddings.visual_embed = own


@register_family
class ViltFamily(FamilyBase):
    """Text and image patches in one stream; one site, the self-attention of every layer."""

    name = "vilt"
    model_type = MODEL_TYPE
    default_tokenizer = DEFAULT_TOKENIZER  # the published ViLT checkpoints use bert-base-uncased's vocabulary
    rule = "pointing"
    reads = "pixels"
    token_kind = "patches"

    def load(self, source: Path | Any, *, dtype=None, device_map=None):
        """``ViltModel`` from a folder (task models' checkpoints too: their heads are set aside) or an object in
        memory (``ViltModel``, or the ``vilt`` inside ``ViltFor*``), with its image processor."""
        from transformers import ViltModel

        if isinstance(source, (str, Path)):
            model, notes = load_pretrained(ViltModel, Path(source), attention="eager")  # a task head set aside
            processor, note = image_processor(Path(source))
            return pin(model, checkpoint_path=Path(source), load_notes=notes + ([note] if note else []),
                       image_processor=processor).eval()
        model = pin(getattr(source, "vilt", source))  # ViltFor*: its encoder
        if model.image_processor is None:
            model.image_processor = pin(source).image_processor or image_processor(model.checkpoint_path)[0]
        return model

    def sites(self, model) -> list[Site]:
        return [Site("self", model.config.num_hidden_layers, model.config.num_attention_heads)]

    def head_outputs(self, model) -> list[torch.nn.Module]:
        """Each layer's ``attention.output.dense``: the projection of the heads' outputs side by side."""
        return [layer.attention.output.dense for layer in getattr(model, "vilt", model).encoder.layer]

    def prepare(self, model, store, options: dict) -> dict:
        if store.kind != "pixels":
            raise DataError(f"{options.get('features') or store.source}: ViLT reads pixels, not region features; "
                            "pass --images FOLDER (the images as <image_id>.jpg or .png)")
        if options.get("mask", "posthoc") != "posthoc":
            raise VbProbeError(f"--mask {options['mask']}: ViLT is probed post hoc only (its layers are transformers' "
                               "own, unchanged); use --mask posthoc")
        processor = model.image_processor
        limit = model.config.max_image_length
        facts = {"image_processor": {"size": settings_json(processor.size), "size_divisor": processor.size_divisor,
                                     "patch_size": model.config.patch_size},
                 "max_image_length": limit}
        if isinstance(limit, int) and limit > 0:
            note = (f"the model sees {limit} randomly chosen patches of each image (config.max_image_length); "
                    "patches it did not see count as attended 0 (the draw is seeded, so runs repeat)")
            if note not in model.load_notes:
                model.load_notes.append(note)
        return facts

    def text_limit(self, model) -> int:
        return model.config.max_position_embeddings

    def image_size_problem(self, model, width: int, height: int) -> str | None:
        """ViLT's processor resizes the short side to ``shortest_edge`` with the long side capped, then floors both
        to its ``size_divisor``: an extreme shape floors to no row (or column) of patches, which transformers'
        resize turns into a traceback. Asked of the processor itself, on a blank image of that size (cheap: the
        output is capped)."""
        from PIL import Image

        try:
            grid = patch_grid(model.image_processor, model.config.patch_size, Image.new("RGB", (width, height)), "").grid
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            reason = " ".join(str(exc).split())[:80] or type(exc).__name__
            return f"ViLT's image processor cannot resize it ({reason}); crop it nearer a square"
        if min(grid) < 1:
            return "ViLT's image processor leaves it no row or column of patches; crop it nearer a square"
        return None

    def image_tokens(self, model, store, image_id: str) -> PatchGrid:
        """One image's patch cells (and pixels) from ``store`` (an :class:`~vb_probe.data.images.ImageFolder`)."""
        return patch_grid(model.image_processor, model.config.patch_size, store.image(image_id), image_id)

    def collate(self, model, items, tokenizer, facts: dict, max_text_len: int, store=None):
        from vb_probe.batching import layout, pad_text
        from vb_probe.tokenization import tokenize_captions

        rows = items_image_tokens(self, model, items, store, PatchGrid)
        tokenized = tokenize_captions(tokenizer, [list(item.words) for item in items], max_length=max_text_len)
        inputs = pad_text([t.input_ids for t in tokenized], tokenizer.pad_token_id)
        inputs.update(pad_pixels(rows))
        views = [g.seen for g in rows]  # the patches' part of the image
        return layout(items, [t.word_last_token for t in tokenized], [g.boxes for g in rows], [None] * len(rows),
                      inputs, views=views,
                      grids=torch.tensor([g.grid for g in rows], dtype=torch.long))

    def rows(self, model, batch, site: Site, mask: str = "posthoc", precision: str = "fp32") -> torch.Tensor:
        """Each query's attention on the image's patch cells, in row-major cell order: [layer, n, head, R]. The
        image CLS is left out; a cell the model did not see (``max_image_length``) and padding get 0."""
        attentions, order = forward_with_patch_order(model, batch.inputs, precision)
        return cell_rows(attentions, order, batch)

    def twin(self, model, seed: int):
        from transformers import ViltModel

        torch.manual_seed(seed)
        return pin(ViltModel(model.config).to(next(model.parameters()).device).eval(), checkpoint_path=None,
                   load_notes=[], image_processor=model.image_processor)


def forward_with_patch_order(model, inputs: dict[str, torch.Tensor], precision: str = "fp32", seed: int = 0
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward with ``output_attentions``: every layer's maps [layer, batch, head, S, S] (S = text + 1 + N), and
    the patch order ``visual_embed`` drew (:func:`captured_patch_order`). The draw is seeded (``seed``), so a run
    repeats; the global random state is left as it was."""
    device_type = inputs["input_ids"].device.type
    with captured_patch_order(model) as order, torch.random.fork_rng(devices=[]), \
            torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        torch.manual_seed(seed)
        out = model(**inputs, output_attentions=True)
    return torch.stack(out.attentions), order


def cell_rows(attentions: torch.Tensor, order: dict[str, torch.Tensor], batch) -> torch.Tensor:
    """The query rows of ``attentions`` [layer, B, head, S, S] over the image tokens, put back into each image's
    row-major cell order with the captured patch ``order``: [layer, n, head, R_max] fp32 on the CPU (cells not
    seen and padding 0). Text comes first, then the image CLS (not spatial, left out), then the N patches."""
    text_len = batch.inputs["input_ids"].shape[1]
    maps = attentions.transpose(2, 3)  # [layer, batch, query, head, key]
    image_rows = maps[:, batch.batch_index, batch.query_index, :, text_len + 1:]  # [layer, n, head, N]
    grids = batch.extras["grids"].to(image_rows.device)  # [B, 2] patch rows, columns of each image
    row, col = order["patch_index"][..., 0], order["patch_index"][..., 1]  # [B, N]
    r_max = batch.region_valid.shape[1]
    seen = (row < grids[:, None, 0]) & (col < grids[:, None, 1]) & order["mask"][:, 1:].bool()
    cell = torch.where(seen, row * grids[:, None, 1] + col, torch.full_like(row, r_max))  # r_max: discarded
    index = cell[batch.batch_index][None, :, None, :].expand_as(image_rows)
    cells = torch.zeros(*image_rows.shape[:3], r_max + 1, dtype=image_rows.dtype, device=image_rows.device)
    cells.scatter_add_(-1, index, image_rows)
    return cells[..., :r_max].float().cpu()
