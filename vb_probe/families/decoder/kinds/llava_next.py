"""LLaVA-NeXT (``llava_next``, "anyres"): the image squashed to the tower's square (the base view, 24 × 24 tokens at
336²), then the best grid of 336² tiles from ``image_grid_pinpoints``: the image resized to fit that resolution and
padded to it in the middle, cut row-major into tiles. The model unpads again: it joins the tiles' patch grids into
one, drops the rows or columns that were padding, and ends each remaining row with an ``image_newline`` token; the
base view's tokens come first.

The trap: the prompt's image tokens are not a grid: the newlines are image tokens in the prompt but no cell, the
unpadding drops a band whose width comes from the model's own rounding, and the processor's padding is its own.
The mechanism: which cell each image token is comes from the model's own ``pack_image_features`` run on index
features ((view, row, column) in three channels; the newline marked -1), so the order, the unpadding and the
newlines are the model's code, not a copy; the tiles' pixels from the processor's own functions
(``select_best_resolution``, ``get_patch_output_size``, padding in the middle) and are tested against its pixels.
The cost: one pack of a few thousand three-number features per image size (cached per model).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, View, ViewMap, squashed_view, views_cells
from vb_probe.families.decoder.kinds.base import register_kind
from vb_probe.families.decoder.kinds.llava import Llava
from vb_probe.families.decoder.prompts import Template

NEWLINE = -1  # the index features' mark for an image_newline token

_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → (height, width) → [T, 3] int


@register_kind
class LlavaNext(Llava):
    model_types = ("llava_next",)
    label = "LLaVA-NeXT"
    model_class = "LlavaNextForConditionalGeneration"
    # llava-hf/llava-v1.6-mistral-7b-hf's chat template for one image then text
    default_template = Template("[INST] <image>\n", " [/INST]", "<image>")
    system_prompt = None  # the Mistral template has no system turn
    settings = ("size", "crop_size", "image_grid_pinpoints", "do_pad", "resample")

    def check_processor(self, model) -> None:
        image_processor = model.processor.image_processor
        side = model.config.vision_config.image_size
        crop = getattr(image_processor, "crop_size", None) or {}
        if crop and (crop.get("height"), crop.get("width")) != (side, side):
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor's crop_size is {dict(crop)} but "
                               f"the vision tower takes {side} × {side}; pass the processor saved with the model")
        if [list(p) for p in image_processor.image_grid_pinpoints] != [list(p) for p in model.config.image_grid_pinpoints]:
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: the processor's image_grid_pinpoints differ "
                               "from the model's config; pass the processor saved with the model")

    def notes(self, model) -> list[str]:
        return []

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side = model.config.vision_config.image_size
        grid = side // model.config.vision_config.patch_size
        tiles = tile_views(model.processor.image_processor, width, height, side)
        views = [View("image", squashed_view(width, height, (side, side)), (grid, grid))]
        views += [View(f"tile {r + 1},{c + 1}", view, (grid, grid)) for (r, c), view in tiles]
        packed = packed_order(model, height, width, len(views))  # [T, 3] (view, row, column) or NEWLINE
        is_cell = packed[:, 0] != NEWLINE
        full = views_cells(image_id, width, height, views, processed)  # every cell of every view
        keep = packed[is_cell, 0] * grid * grid + packed[is_cell, 1] * grid + packed[is_cell, 2]  # kept, in order
        slots = np.full(len(packed), -1, np.int64)
        slots[is_cell] = np.arange(int(is_cell.sum()))
        return ImageCells(image_id, full.boxes[keep], full.features[keep], None, full.image_w, full.image_h,
                          full.seen, full.grid, full.view, processed, slots, full.views, full.view_of[keep])

    def token_count(self, model, width: int, height: int) -> int:
        return int(model.processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0])

    def size_problem(self, model, width: int, height: int) -> str | None:
        return None  # anyres resizes to one of its pinpoints: any size fits

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's views [V_b, 3, H, W], zero-padded to the batch's most (the model reads ``image_sizes`` to
        know how many are real), and ``image_sizes``."""
        views = [c.processed["pixel_values"][0] for c in rows]
        most = max(v.shape[0] for v in views)
        pixels = torch.zeros(len(views), most, *views[0].shape[1:], dtype=views[0].dtype)
        for b, v in enumerate(views):
            pixels[b, :v.shape[0]] = v
        return {"pixel_values": pixels, "image_sizes": torch.cat([c.processed["image_sizes"] for c in rows])}


def tile_views(image_processor, width: int, height: int, side: int) -> list[tuple[tuple[int, int], ViewMap]]:
    """((row, column), view) of each tile, row-major: the image resized by the processor's own
    ``get_patch_output_size`` to fit the resolution its ``select_best_resolution`` picks, padded in the middle
    (``(target − resized) // 2`` before, as its ``_get_padding_size``), cut into ``side``² tiles."""
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    best_h, best_w = select_best_resolution((height, width), image_processor.image_grid_pinpoints)
    shape_only = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, height, width))
    new_h, new_w = get_patch_output_size(shape_only, (best_h, best_w), input_data_format=ChannelDimension.FIRST)
    pad_y, pad_x = (best_h - new_h) // 2, (best_w - new_w) // 2
    scale = (height / new_h, width / new_w)
    return [((r, c), ViewMap((side, side), scale, (r * side, c * side), (pad_y * scale[0], pad_x * scale[1])))
            for r in range(best_h // side) for c in range(best_w // side)]


def packed_order(model, height: int, width: int, views: int) -> np.ndarray:
    """[T, 3] int64: for each image token the model makes of a ``height`` × ``width`` image, in prompt order, the
    (view, row, column) of the cell it is (view 0 the base image, i the i-th tile), or :data:`NEWLINE` in all
    three; from the model's own ``pack_image_features`` on index features (cached per model and size)."""
    cache = _PACKED.setdefault(model, {})
    if (height, width) not in cache:
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        view, row, col = np.meshgrid(np.arange(views), np.arange(grid), np.arange(grid), indexing="ij")
        index = torch.from_numpy(np.stack([view, row, col], -1).reshape(views, grid * grid, 3)).double()
        core = getattr(model, "model", model)
        with torch.no_grad():
            packed, _ = core.pack_image_features([index], torch.tensor([[height, width]]),
                                                 vision_feature_select_strategy="default",
                                                 image_newline=torch.full((3,), float(NEWLINE), dtype=torch.float64))
        cache[(height, width)] = torch.cat(packed).round().long().numpy()  # one image: one entry
    return cache[(height, width)]
