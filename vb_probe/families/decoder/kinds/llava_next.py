"""LLaVA-NeXT (``llava_next``, "anyres") and LLaVA-OneVision (``llava_onevision``, "anyres_max_9"): the image
squashed to the tower's square (the base view, 24 × 24 tokens at 336², 27 × 27 at OneVision's 384²), then the best
grid of tiles from ``image_grid_pinpoints``: the image resized to fit that resolution and padded to it in the
middle, cut row-major into tiles. The model unpads again: it joins the tiles' patch grids into one canvas, drops the
rows or columns that were padding, (OneVision) shrinks the canvas bilinearly when it holds more than ``max`` tiles'
worth, and ends each remaining row with an ``image_newline`` token; the base view's tokens come first.

The trap: the prompt's image tokens are not a grid: the newlines are image tokens in the prompt but no cell, the
unpadding drops a band whose width comes from the model's own rounding, and the processor's padding is its own.
The mechanism: which cell each image token is comes from the model's own ``pack_image_features`` run on index
features (a base-view flag, then the row and column: the base view's own, or the tile canvas's), so the order,
the unpadding, OneVision's shrinking and the newlines are the model's code, not a copy (bilinear sampling of a
linear field is exact: a shrunk token's value is the canvas point it samples, its extent the spacing between
tokens); the tiles' pixels from the processor's own functions
(``select_best_resolution``, ``get_patch_output_size``, padding in the middle) and are tested against its pixels.
The cost: one pack of a few thousand three-number features per image size (cached per model).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, View, ViewMap, cell_boxes, patch_cover, squashed_view
from vb_probe.families.decoder.kinds.base import pad_views, register_kind
from vb_probe.families.decoder.kinds.llava import Llava
from vb_probe.families.decoder.prompts import Template

NEWLINE, TILE, BASE = -1, 0, 1  # the index features' first channel: an image_newline token, a tile's, the base's

_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → (height, width) → [T, 3] float


@register_kind
class LlavaNext(Llava):
    model_types = ("llava_next",)
    label = "LLaVA-NeXT"
    model_class = "LlavaNextForConditionalGeneration"
    views = ()  # anyres: its own padding of the tiles, read as it is
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
        side, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
        grid, cover = side // patch, patch_cover(side, patch)  # (SigLIP 384/14: 27 patches cover 378 pixels)
        tiles, canvas = tile_views(model.processor.image_processor, width, height, side, cover)
        base = View("image", squashed_view(width, height, (side, side), (cover, cover)), (grid, grid))
        views = [base] + [View(f"tile {r + 1},{c + 1}", view, (grid, grid)) for (r, c), view in tiles]
        columns = max((c for (_, c), _ in tiles), default=0) + 1
        packed = packed_order(self, model, height, width, len(views))  # [T, 3]
        flag = packed[:, 0].round()
        on_base, on_tile = flag == BASE, flag == TILE
        base_boxes = cell_boxes((grid, grid), base.view)
        rows_cols = packed[on_base, 1:].round().astype(np.int64)
        boxes = np.zeros((int((flag != NEWLINE).sum()), 4), np.float32)
        view_of = np.zeros(len(boxes), np.int64)
        cell_of_slot = np.cumsum(flag != NEWLINE) - 1  # each prompt position's cell (newlines: -1 below)
        boxes[cell_of_slot[on_base]] = base_boxes[rows_cols[:, 0] * grid + rows_cols[:, 1]]
        if on_tile.any():
            y, x = packed[on_tile, 1], packed[on_tile, 2]  # canvas patch coordinates the tokens sample
            ey, ex = _spacing(y), _spacing(x)  # how many patches a token spans (1 unless shrunk)
            u1 = _canvas_pixel(x + 0.5 - ex / 2, grid, side, patch)  # its first patch's left edge, on the canvas
            v1 = _canvas_pixel(y + 0.5 - ey / 2, grid, side, patch)
            u2, v2 = u1 + ex * patch, v1 + ey * patch
            x1, y1 = canvas.to_original(u1, v1)
            x2, y2 = canvas.to_original(u2, v2)
            boxes[cell_of_slot[on_tile]] = np.stack([x1, y1, x2, y2], 1)
            tile_row = np.clip(np.floor((y + 0.5) / grid), 0, None).astype(np.int64)
            tile_col = np.clip(np.floor((x + 0.5) / grid), 0, columns - 1).astype(np.int64)
            view_of[cell_of_slot[on_tile]] = 1 + tile_row * columns + tile_col  # the tile holding its centre
        slots = np.where(flag != NEWLINE, cell_of_slot, -1)
        return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                          base.view.seen(), (grid, grid), base.view, processed, slots, tuple(v.name for v in views),
                          view_of)

    def token_count(self, model, width: int, height: int) -> int:
        return int(model.processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0])

    def size_problem(self, model, width: int, height: int) -> str | None:
        return None  # anyres resizes to one of its pinpoints: any size fits

    def pack(self, model, index: torch.Tensor, image_sizes: torch.Tensor, newline: torch.Tensor) -> list[torch.Tensor]:
        """The model's own ``pack_image_features`` on one image's features ``index`` [views, cells, channels]."""
        core = getattr(model, "model", model)
        packed, _ = core.pack_image_features([index], image_sizes, vision_feature_select_strategy="default",
                                             image_newline=newline)
        return packed

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's views [V_b, 3, H, W], zero-padded to the batch's most (the model reads ``image_sizes`` to
        know how many are real), and ``image_sizes``."""
        pixels = pad_views([c.processed["pixel_values"][0] for c in rows])
        return {"pixel_values": pixels, "image_sizes": torch.cat([c.processed["image_sizes"] for c in rows])}


def _canvas_pixel(patches: np.ndarray, grid: int, side: int, patch: int) -> np.ndarray:
    """Canvas pixel of a coordinate in patches across tiles (``grid`` patches a tile of ``side`` pixels, each
    ``patch`` pixels: a tile's patches may cover less than its side)."""
    tile = np.floor(patches / grid)
    return tile * side + (patches - tile * grid) * patch


def _spacing(values: np.ndarray) -> float:
    """The step between a token grid's distinct coordinates along one axis (1 for a single row or column)."""
    distinct = np.unique(np.round(values, 6))
    return float(np.median(np.diff(distinct))) if len(distinct) > 1 else 1.0


def tile_views(image_processor, width: int, height: int, side: int,
               cover: int | None = None) -> tuple[list[tuple[tuple[int, int], ViewMap]], ViewMap]:
    """((row, column), view) of each tile, row-major, and the view of their whole canvas: the image resized by the
    processor's own ``get_patch_output_size`` to fit the resolution its ``select_best_resolution`` picks, padded in
    the middle (``(target − resized) // 2`` before, as its ``_get_padding_size``), cut into ``side``² tiles (of
    which the patches cover ``cover``² from the top left)."""
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    best_h, best_w = select_best_resolution((height, width), image_processor.image_grid_pinpoints)
    shape_only = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, height, width))
    new_h, new_w = get_patch_output_size(shape_only, (best_h, best_w), input_data_format=ChannelDimension.FIRST)
    pad_y, pad_x = (best_h - new_h) // 2, (best_w - new_w) // 2
    scale = (height / new_h, width / new_w)
    pad = (pad_y * scale[0], pad_x * scale[1])
    tiles = [((r, c), ViewMap((cover or side, cover or side), scale, (r * side, c * side), pad))
             for r in range(best_h // side) for c in range(best_w // side)]
    return tiles, ViewMap((best_h, best_w), scale, (0, 0), pad)


def packed_order(kind, model, height: int, width: int, views: int) -> np.ndarray:
    """[T, 3] float64: for each image token the model makes of a ``height`` × ``width`` image, in prompt order, a
    flag (:data:`BASE`, :data:`TILE` or :data:`NEWLINE`) and two coordinates: the base view's (row, column), or the
    point of the tile canvas (in patches, row then column) the token samples; from the model's own
    ``pack_image_features`` on index features (cached per model and size)."""
    cache = _PACKED.setdefault(model, {})
    if (height, width) not in cache:
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        row, col = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        tiles = views - 1
        columns = tile_columns(model, height, width) if tiles else 1
        index = np.zeros((views, grid * grid, 3))
        index[0] = np.stack([np.full(grid * grid, BASE), row.ravel(), col.ravel()], -1)
        for t in range(tiles):
            tile_row, tile_col = divmod(t, columns)
            index[1 + t] = np.stack([np.full(grid * grid, TILE), (tile_row * grid + row).ravel(),
                                     (tile_col * grid + col).ravel()], -1)
        newline = torch.full((3,), float(NEWLINE), dtype=torch.float64)
        with torch.no_grad():
            packed = kind.pack(model, torch.from_numpy(index), torch.tensor([[height, width]]), newline)
        cache[(height, width)] = torch.cat(packed).numpy()  # one image: one entry
    return cache[(height, width)]


def tile_columns(model, height: int, width: int) -> int:
    """Tiles a row of the canvas, as the model's own ``get_anyres_image_grid_shape`` reads it."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    _, columns = get_anyres_image_grid_shape((height, width), model.config.image_grid_pinpoints,
                                             model.config.vision_config.image_size)
    return int(columns)


@register_kind
class LlavaOnevision(LlavaNext):
    model_types = ("llava_onevision",)
    label = "LLaVA-OneVision"
    model_class = "LlavaOnevisionForConditionalGeneration"
    processor_class = "LlavaOnevisionProcessor"
    # llava-hf/llava-onevision-qwen2-*-ov-hf's chat template (Qwen2's turns) for one image then text
    default_template = Template("<|im_start|>user <image>\n", "<|im_end|><|im_start|>assistant\n", "<image>")
    settings = LlavaNext.settings + ("vision_aspect_ratio",)

    def check_config(self, model) -> None:
        """SigLIP towers have no CLS token: OneVision reads them ``full`` (every patch a token); a CLIP tower
        ``default``. Either gives one token a patch."""
        strategy = model.config.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: vision_feature_select_strategy {strategy!r}: "
                               "only 'default' or 'full' (one token a patch) is supported")

    def pack(self, model, index: torch.Tensor, image_sizes: torch.Tensor, newline: torch.Tensor) -> list[torch.Tensor]:
        core = getattr(model, "model", model)
        packed, _ = core.pack_image_features([index], image_sizes, image_newline=newline,
                                             vision_aspect_ratio=model.config.vision_aspect_ratio)
        return packed
