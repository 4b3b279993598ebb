"""InternVL (``internvl``: InternVL3 and later in transformers' own classes): dynamic tiles. The image is squashed to
the grid of 448² tiles whose aspect ratio is nearest its own (between ``min_patches`` and ``max_patches`` tiles),
cut row-major, and, when there is more than one tile, followed by a thumbnail of the whole image squashed to 448²;
each tile's 32 × 32 patches are pixel-shuffled 2 × 2 into 16 × 16 image tokens (256), row-major; every tile's
tokens, then the thumbnail's, stand between ``<img>`` and ``</img>``.

The trap: the whole image (the thumbnail) comes *last* in the prompt, and only when the image is tiled; a single
tile is the whole image. The mechanism: the grid comes from the image processor module's own
``get_optimal_tiled_canvas`` with the processor's settings, checked against the number of tiles it made; cells are
listed with the whole image first (the primary view) and each prompt position mapped to its cell; the order within
a tile (the pixel shuffle) is checked against the model's own ``pixel_shuffle`` in the tests. The cost: none beyond
the processor's call.
"""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, View, ViewMap, squashed_view, views_cells
from vb_probe.families.decoder.kinds.base import DecoderKind, register_kind
from vb_probe.families.decoder.prompts import Template


@register_kind
class InternVL(DecoderKind):
    model_types = ("internvl",)
    label = "InternVL"
    model_class = "InternVLForConditionalGeneration"
    processor_class = "InternVLProcessor"
    placeholder = "<IMG_CONTEXT>"
    image_text = "<IMG_CONTEXT>"  # the chat template renders an image so; the processor wraps it in <img>…</img>
    # Qwen2.5's turns with the image first, as InternVL3's chat template renders one image then text (a checkpoint's
    # own chat template is read when it has one; no system turn is assumed here)
    default_template = Template("<|im_start|>user\n<IMG_CONTEXT>\n", "<|im_end|>\n<|im_start|>assistant\n",
                                "<IMG_CONTEXT>")
    settings = ("size", "crop_to_patches", "min_patches", "max_patches", "resample")

    def tile_side(self, model) -> int:
        size = model.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def token_grid(self, model) -> int:
        """Image tokens a side of one tile: patches a side × the pixel shuffle's ``downsample_ratio``."""
        patch = model.config.vision_config.patch_size
        patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
        return int(self.tile_side(model) // patch * model.config.downsample_ratio)

    def check_processor(self, model) -> None:
        expected = self.token_grid(model) ** 2
        if int(model.processor.image_seq_length) != expected:
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor's image_seq_length is "
                               f"{model.processor.image_seq_length} but a tile makes {expected} tokens; pass the "
                               "processor saved with the model")

    def tiling(self, model, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) of tiles the processor cuts a ``width`` × ``height`` image into: the image processor
        module's own ``get_optimal_tiled_canvas`` with its settings ((1, 1) when it does not crop to patches)."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        image_processor = model.processor.image_processor
        defaults = type(model.processor).images_kwargs
        crop = getattr(image_processor, "crop_to_patches", None)
        if not (defaults.get("crop_to_patches", False) if crop is None else crop):
            return (1, 1)
        side = self.tile_side(model)
        return get_optimal_tiled_canvas((height, width), (side, side), image_processor.min_patches,
                                        image_processor.max_patches)

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side, grid = self.tile_side(model), self.token_grid(model)
        columns, rows = self.tiling(model, width, height)
        tiles = columns * rows
        made = int(processed["pixel_values"].shape[0])
        if made != (tiles + 1 if tiles > 1 else 1):
            raise VbProbeError(f"image {image_id}: InternVL's processor made {made} tiles where its canvas gives "
                               f"{columns} × {rows} and a thumbnail; the processor does not match")
        whole = View("image", squashed_view(width, height, (side, side)), (grid, grid))
        if tiles == 1:
            return views_cells(image_id, width, height, [whole], processed)
        scale = (height / (rows * side), width / (columns * side))
        views = [whole] + [View(f"tile {r + 1},{c + 1}", ViewMap((side, side), scale, (r * side, c * side)), (grid, grid))
                           for r in range(rows) for c in range(columns)]
        per_view = grid * grid
        # the prompt holds the tiles' tokens, then the thumbnail's: position → cell (the thumbnail's cells first)
        slots = np.concatenate([np.arange(per_view, per_view * (tiles + 1)), np.arange(per_view)])
        return views_cells(image_id, width, height, views, processed, slots)

    def token_count(self, model, width: int, height: int) -> int:
        columns, rows = self.tiling(model, width, height)
        return model.processor.image_seq_length * (columns * rows + (1 if columns * rows > 1 else 0))

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every image's tiles and thumbnail, one after another (the model reads them in the prompt's order)."""
        return {"pixel_values": torch.cat([c.processed["pixel_values"] for c in rows])}
