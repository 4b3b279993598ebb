"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (native resolution): the image ``smart_resize``-d to multiples of patch × merge
(28 for 14-pixel patches, 32 for Qwen3-VL's 16), one image token a merge × merge block of patches, row-major over the
grid the processor reports in ``image_grid_thw`` (the token order is checked against the model's own rotary position
ids in the tests). Qwen2.5-VL's window attention inside the vision tower reorders patches and puts them back: the
language model reads them in the same order.
"""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, cell_boxes, squashed_view
from vb_probe.families.decoder.kinds.base import DecoderKind, register_kind
from vb_probe.families.decoder.prompts import Template

VISION = "<|vision_start|><|image_pad|><|vision_end|>"


class QwenVL(DecoderKind):
    """The Qwen VL family's shared geometry; each generation its classes, template and system turn."""

    placeholder = "<|image_pad|>"
    image_text = VISION
    plain_prompt = "{image}{caption}"
    settings = ("size", "patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels", "resample")

    def check_processor(self, model) -> None:
        image_processor = model.processor.image_processor
        vision = model.config.vision_config
        theirs = (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size)
        ours = (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size)
        if tuple(theirs) != tuple(ours):
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor's patch, merge and temporal "
                               f"sizes are {theirs} but the vision tower's are {ours}; pass the processor saved with "
                               "the model")

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        image_processor = model.processor.image_processor
        _, grid_h, grid_w = (int(v) for v in processed["image_grid_thw"][0])
        merge, patch = image_processor.merge_size, image_processor.patch_size
        grid = (grid_h // merge, grid_w // merge)
        view = squashed_view(width, height, (grid_h * patch, grid_w * patch))
        boxes = cell_boxes(grid, view)
        return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                          view.seen(), grid, view, processed)

    def size_problem(self, model, width: int, height: int) -> str | None:
        """``smart_resize`` refuses aspect ratios beyond 200:1 (asked of its own code)."""
        try:
            qwen_grid(model.processor.image_processor, width, height)
        except ValueError as exc:
            return f"{self.label}'s processor cannot take it ({' '.join(str(exc).split())[:100]}); crop it nearer a square"
        return None

    def token_count(self, model, width: int, height: int) -> int:
        rows, cols = qwen_grid(model.processor.image_processor, width, height)
        return rows * cols // model.processor.image_processor.merge_size ** 2

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": torch.cat([c.processed["pixel_values"] for c in rows]),
                "image_grid_thw": torch.cat([c.processed["image_grid_thw"] for c in rows]),
                "mm_token_type_ids": (input_ids == self.image_token_id(model)).long()}


def qwen_grid(image_processor, width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of a Qwen VL model's patches for a ``width`` × ``height`` image: the processor module's own
    ``smart_resize`` with the processor's factor and pixel bounds (no pixels made)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision needed

    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"],
                                        max_pixels=size["longest_edge"])
    return resized_h // image_processor.patch_size, resized_w // image_processor.patch_size


def _instruct(system: str | None) -> Template:
    """The Qwen VL Instruct chat template's prompt for one image and a caption, with ``system`` as its system turn."""
    turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return Template(f"{turn}<|im_start|>user\n{VISION}", "<|im_end|>\n<|im_start|>assistant\n", "<|image_pad|>")


@register_kind
class Qwen2VL(QwenVL):
    model_types = ("qwen2_vl",)
    label = "Qwen2-VL"
    model_class = "Qwen2VLForConditionalGeneration"
    processor_class = "Qwen2VLProcessor"
    system_prompt = "You are a helpful assistant."  # the turn its chat template adds when none is given
    default_template = _instruct(system_prompt)


@register_kind
class Qwen25VL(QwenVL):
    model_types = ("qwen2_5_vl",)
    label = "Qwen2.5-VL"
    model_class = "Qwen2_5_VLForConditionalGeneration"
    processor_class = "Qwen2_5_VLProcessor"
    system_prompt = "You are a helpful assistant."
    default_template = _instruct(system_prompt)


@register_kind
class Qwen3VL(QwenVL):
    model_types = ("qwen3_vl",)
    label = "Qwen3-VL"
    model_class = "Qwen3VLForConditionalGeneration"
    processor_class = "Qwen3VLProcessor"
    system_prompt = None  # Qwen3-VL's chat template adds no system turn of its own
    default_template = _instruct(None)
