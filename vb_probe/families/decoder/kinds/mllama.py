"""Llama 3.2 Vision (``mllama``): a cross-attention decoder. The image is resized, keeping its aspect ratio, to fit
the canvas of up to ``max_image_tiles`` 560² tiles that suits it best, padded at the bottom and right, and cut
row-major into tiles; each tile's 40 × 40 patches and a class token are the vision states. The prompt holds one
``<|image|>`` token; the text reads the image only in the language model's cross-attention layers (every fifth),
whose keys are the vision states, a second site as LXMERT's cross layers are.

The trap: the image is not in the prompt, so the image tokens are keys of another sequence (tile-major, a class
token first in each tile), the self-attention layers never see it, and which text tokens may read which tiles is
the ``cross_attention_mask`` the processor builds for the prompt it was given, not for the longer prompt probed.
The mechanism: the site is the cross layers (their rows through the registered attention function, the model's
cross mask passed as it builds it); each cell is a patch of the canvas (the resized image and its padding, one
picture: the tiles do not overlap), listed row-major over the canvas, with its key index
``tile · (patches + 1) + 1 + patch``; the cross mask is rebuilt for the whole prompt with the processor module's own
``get_cross_attention_token_mask`` and ``convert_sparse_cross_attention_mask_to_dense``; the canvas from its image
processor module's own ``get_optimal_tiled_canvas`` and ``get_image_size_fit_to_canvas``. The cost: none beyond
the processor's call.
"""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, ViewMap, cell_boxes
from vb_probe.families.decoder.kinds.base import DecoderKind, register_kind
from vb_probe.families.decoder.prompts import Template


@register_kind
class Mllama(DecoderKind):
    model_types = ("mllama",)
    label = "Llama 3.2 Vision"
    model_class = "MllamaForConditionalGeneration"
    placeholder = "<|image|>"
    image_text = "<|image|>"
    # Llama 3.2 Vision Instruct's chat template for one user turn, the image first
    default_template = Template("<|start_header_id|>user<|end_header_id|>\n\n<|image|>",
                                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "<|image|>")
    plain_prompt = "{image}{caption}"
    settings = ("size", "max_image_tiles", "resample")

    def site(self, model):
        from vb_probe.families import Site

        text = model.config.get_text_config()
        return Site("cross", len(text.cross_attention_layers), text.num_attention_heads)

    def site_layers(self, model) -> list[int]:
        return list(model.config.get_text_config().cross_attention_layers)

    def tile_side(self, model) -> int:
        return int(model.processor.image_processor.size["height"])

    def check_processor(self, model) -> None:
        vision = model.config.vision_config
        tiles = model.processor.image_processor.max_image_tiles
        if self.tile_side(model) != vision.image_size or tiles > vision.max_num_tiles:
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor makes up to {tiles} tiles of "
                               f"{self.tile_side(model)} pixels but the vision tower takes up to "
                               f"{vision.max_num_tiles} of {vision.image_size}; pass the processor saved with the model")

    def canvas(self, model, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((rows, columns) of tiles, (height, width) the image is resized to) as the image processor module's own
        functions choose them."""
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_image_size_fit_to_canvas,
            get_optimal_tiled_canvas,
        )

        side, tiles = self.tile_side(model), model.processor.image_processor.max_image_tiles
        canvas_h, canvas_w = get_optimal_tiled_canvas(image_height=height, image_width=width, max_image_tiles=tiles,
                                                      tile_size=side)
        resized = get_image_size_fit_to_canvas(image_height=height, image_width=width, canvas_height=canvas_h,
                                               canvas_width=canvas_w, tile_size=side)
        return (canvas_h // side, canvas_w // side), tuple(int(v) for v in resized)

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side = self.tile_side(model)
        patches = side // model.config.vision_config.patch_size
        (rows, columns), (resized_h, resized_w) = self.canvas(model, width, height)
        made = int(processed["aspect_ratio_mask"][0, 0].sum())
        if made != rows * columns:
            raise VbProbeError(f"image {image_id}: Llama 3.2 Vision's processor made {made} tiles where its canvas "
                               f"gives {rows} × {columns}; the processor does not match")
        canvas = ViewMap((rows * side, columns * side), (height / resized_h, width / resized_w))
        grid = (rows * patches, columns * patches)
        boxes = cell_boxes(grid, canvas)  # row-major over the canvas
        r, c = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
        tile = (r // patches) * columns + c // patches
        keys = tile * (patches * patches + 1) + 1 + (r % patches) * patches + c % patches  # the class token first
        image = np.array([0.0, 0.0, float(width), float(height)])  # the padding is no part of the picture
        return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                          image, grid, canvas, processed, keys=keys)

    def key_positions(self, model, sequence: torch.Tensor, cells: ImageCells) -> torch.Tensor:
        return torch.from_numpy(cells.keys)

    def token_count(self, model, width: int, height: int) -> int:
        return 1  # the prompt holds one <|image|> token; the image is read through the cross layers

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tiles (padded to ``max_image_tiles`` by the processor), their aspect-ratio ids and masks, and the
        cross-attention mask of the whole prompt [B, T, 1, tiles], rebuilt by the processor module's own code."""
        from transformers.models.mllama.processing_mllama import (
            convert_sparse_cross_attention_mask_to_dense,
            get_cross_attention_token_mask,
        )

        image_id = self.image_token_id(model)
        sparse = [get_cross_attention_token_mask(ids, image_id) for ids in input_ids.tolist()]
        tiles = [[int(c.processed["aspect_ratio_mask"][0, 0].sum())] for c in rows]
        most = int(rows[0].processed["pixel_values"].shape[2])
        dense = convert_sparse_cross_attention_mask_to_dense(sparse, tiles, max_num_tiles=most,
                                                             length=input_ids.shape[1])
        return {"pixel_values": torch.cat([c.processed["pixel_values"] for c in rows]),
                "aspect_ratio_ids": torch.cat([c.processed["aspect_ratio_ids"] for c in rows]),
                "aspect_ratio_mask": torch.cat([c.processed["aspect_ratio_mask"] for c in rows]),
                "cross_attention_mask": torch.from_numpy(dense).long()}
