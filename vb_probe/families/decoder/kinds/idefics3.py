"""Idefics3 (``idefics3``) and SmolVLM (``smolvlm``): the image resized to a longest edge (``size``), then to
multiples of the tile side (``max_image_size``: 364 for Idefics3, 384 or 512 for SmolVLM), cut row-major into
tiles, followed by the whole image squashed to one tile (the global image); each tile's patches are pixel-shuffled
by ``scale_factor`` into a square grid of image tokens (169, 81 or 64), row-major. The prompt writes each tile as
``<fake_token_around_image><row_r_col_c>`` and its ``<image>`` tokens, a newline after each row of tiles, then
``<fake_token_around_image><global-img>`` and the global image's tokens; an image no larger than a tile is the
global image alone.

The trap: the marker tokens sit inside the image span and carry no pixels; the global image (the whole picture)
comes last; the processor drops its row and column counts from its output. The mechanism: image tokens are the
``<image>`` id only; the tile grid is read from the row/column markers in the prompt as the processor expanded it,
and the tiles' cells are over the image resized to that grid of tiles (``resize_for_vision_encoder`` makes the
sizes exact multiples, so the tiles cover it with no padding); the global image is the primary view, first among
the cells; the order within a tile is the connector's own ``pixel_shuffle``, checked in the tests. The cost: one
regular expression over the prompt prefix per image.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, View, ViewMap, patch_cover, squashed_view, views_cells
from vb_probe.families.decoder.kinds.base import DecoderKind, pad_views, register_kind
from vb_probe.families.decoder.prompts import Template

TILE_MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")


@register_kind
class Idefics3(DecoderKind):
    model_types = ("idefics3",)
    label = "Idefics3"
    model_class = "Idefics3ForConditionalGeneration"
    # Idefics3's chat template for one user turn, the image first
    default_template = Template("User:<image>", "<end_of_utterance>\nAssistant:", "<image>")
    plain_prompt = "{image}{caption}"
    settings = ("size", "max_image_size", "do_image_splitting", "resample")

    def tile_side(self, model) -> int:
        return int(model.processor.image_processor.max_image_size["longest_edge"])

    def token_grid(self, model) -> int:
        vision = model.config.vision_config
        return vision.image_size // vision.patch_size // model.config.scale_factor

    def check_processor(self, model) -> None:
        expected = self.token_grid(model) ** 2
        side = model.config.vision_config.image_size
        if int(model.processor.image_seq_len) != expected or self.tile_side(model) != side:
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor makes tiles of "
                               f"{self.tile_side(model)} pixels and {model.processor.image_seq_len} tokens but the "
                               f"vision tower takes {side} pixels and makes {expected}; pass the processor saved "
                               "with the model")

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side, grid = self.tile_side(model), self.token_grid(model)
        cover = patch_cover(side, model.config.vision_config.patch_size)  # (SmolVLM 384/14: 378 pixels)
        markers = [(int(r), int(c)) for r, c in TILE_MARKER.findall(processed["prefix_text"])]
        rows, columns = (max(r for r, _ in markers), max(c for _, c in markers)) if markers else (0, 0)
        made = int(processed["pixel_values"].shape[1])
        if made != rows * columns + 1:
            raise VbProbeError(f"image {image_id}: {self.label}'s processor made {made} images where its prompt names "
                               f"{rows} × {columns} tiles and the global image; the processor does not match")
        whole = View("image", squashed_view(width, height, (side, side), (cover, cover)), (grid, grid))
        if not markers:
            return views_cells(image_id, width, height, [whole], processed)
        scale = (height / (rows * side), width / (columns * side))
        views = [whole] + [View(f"tile {r + 1},{c + 1}", ViewMap((cover, cover), scale, (r * side, c * side)),
                                (grid, grid)) for r in range(rows) for c in range(columns)]
        per_view, tiles = grid * grid, rows * columns
        # the prompt holds the tiles' tokens, then the global image's: position → cell (the global image's first)
        slots = np.concatenate([np.arange(per_view, per_view * (tiles + 1)), np.arange(per_view)])
        return views_cells(image_id, width, height, views, processed, slots)

    def token_count(self, model, width: int, height: int) -> int:
        return int(model.processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0])

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each image's tiles and global image [N_b, 3, S, S], zero-padded to the batch's most (the model skips
        all-zero images), with the processor's pixel masks padded alike."""
        pixels = pad_views([c.processed["pixel_values"][0] for c in rows])
        masks = pad_views([c.processed["pixel_attention_mask"][0] for c in rows], dtype=torch.bool)
        return {"pixel_values": pixels, "pixel_attention_mask": masks}


@register_kind
class SmolVLM(Idefics3):
    model_types = ("smolvlm",)
    label = "SmolVLM"
    model_class = "SmolVLMForConditionalGeneration"
    processor_class = "SmolVLMProcessor"
    # SmolVLM's chat template for one user turn, the image first
    default_template = Template("<|im_start|>User:<image>", "<end_of_utterance>\nAssistant:", "<image>")
