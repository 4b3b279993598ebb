"""Gemma 3 (``gemma3``): a SigLIP tower over the image squashed to 896², its 64 × 64 patches average-pooled to a
16 × 16 grid (``mm_tokens_per_image`` = 256), one image token a pooled cell, row-major; with pan and scan, the same
for each crop after the whole image. The language model reads its image tokens bidirectionally (one block per
image or crop, ``token_type_ids`` 1) and alternates sliding-window and global layers.

The trap: Gemma 3's processor puts ``<start_of_image>`` in the prompt and expands it to ``<image_soft_token>`` × 256
between ``<start_of_image>`` and ``<end_of_image>``: the token the model reads is not the placeholder; and without
``token_type_ids`` the forward builds a causal mask over the image, which is not the model. The mechanism: the
image token is the tokenizer's ``image_token``; ``token_type_ids`` marks every image token, so the model's own mask
code (registered beside row capture) makes the image blocks bidirectional, within the sliding window on its local
layers. Pan and scan runs when the image processor's saved settings ask for it (``do_pan_and_scan`` in
preprocessor_config.json); where its crops lie is read from the processor's own ``pan_and_scan`` run on an index
array (row and column of each pixel), never re-derived. The cost: one index array of the image's size per image
with pan and scan.
"""

from __future__ import annotations

import numpy as np
import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, View, ViewMap, squashed_view, views_cells
from vb_probe.families.decoder.kinds.base import DecoderKind, register_kind
from vb_probe.families.decoder.prompts import Template

PAN_AND_SCAN = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                "pan_and_scan_min_ratio_to_activate")


@register_kind
class Gemma3(DecoderKind):
    model_types = ("gemma3",)
    label = "Gemma 3"
    model_class = "Gemma3ForConditionalGeneration"
    placeholder = "<start_of_image>"
    image_text = "<start_of_image>"
    expanded_token = "<image_soft_token>"
    # Gemma 3's chat template for one user turn with an image then text
    default_template = Template("<start_of_turn>user\n<start_of_image>", "<end_of_turn>\n<start_of_turn>model\n",
                                "<start_of_image>")
    plain_prompt = "{image}{caption}"
    settings = ("size", "resample") + PAN_AND_SCAN

    def check_processor(self, model) -> None:
        side = int(round(model.config.mm_tokens_per_image ** 0.5))
        if int(model.processor.image_seq_length) != model.config.mm_tokens_per_image or side * side != \
                model.config.mm_tokens_per_image:
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor's image_seq_length is "
                               f"{model.processor.image_seq_length} but the model makes "
                               f"{model.config.mm_tokens_per_image} tokens an image (a square grid); pass the "
                               "processor saved with the model")

    def processor_options(self, model) -> dict:
        return self.pan_and_scan(model)

    def pan_and_scan(self, model) -> dict:
        """The pan-and-scan settings the image processor was saved with (empty: off, the processor's default, which
        a saved ``do_pan_and_scan`` does not change unless passed at the call)."""
        image_processor = model.processor.image_processor
        if not getattr(image_processor, "do_pan_and_scan", None):
            return {}
        defaults = type(model.processor).images_kwargs
        return {k: getattr(image_processor, k, None) if getattr(image_processor, k, None) is not None else defaults[k]
                for k in PAN_AND_SCAN}

    def notes(self, model) -> list[str]:
        if self.pan_and_scan(model):
            return ["Gemma 3 pans and scans (do_pan_and_scan in the processor's settings): a wide or tall image is "
                    "read as the whole image and up to "
                    f"{self.pan_and_scan(model)['pan_and_scan_max_num_crops']} crops, {model.config.mm_tokens_per_image} "
                    "tokens each"]
        return []

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side = int(round(model.config.mm_tokens_per_image ** 0.5))
        size = tuple(processed["pixel_values"].shape[-2:])
        views = [View("image", squashed_view(width, height, size), (side, side))]
        crops = crop_boxes(model.processor.image_processor, width, height, self.pan_and_scan(model))
        if len(crops) != processed["pixel_values"].shape[0] - 1:
            raise VbProbeError(f"image {image_id}: Gemma 3's processor made {processed['pixel_values'].shape[0] - 1} "
                               f"crops where its pan_and_scan gives {len(crops)}; the processor does not match")
        for i, (top, left, crop_h, crop_w) in enumerate(crops):
            crop_view = ViewMap(size, (crop_h / size[0], crop_w / size[1]), (0, 0), (-float(top), -float(left)))
            views.append(View(f"crop {i + 1}", crop_view, (side, side)))
        return views_cells(image_id, width, height, views, processed)

    def token_count(self, model, width: int, height: int) -> int:
        crops = crop_boxes(model.processor.image_processor, width, height, self.pan_and_scan(model))
        return model.config.mm_tokens_per_image * (1 + len(crops))

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pixels of every image and crop, and ``token_type_ids`` 1 on the image tokens: the model's mask code
        makes each image block bidirectional from them."""
        return {"pixel_values": torch.cat([c.processed["pixel_values"] for c in rows]),
                "token_type_ids": (input_ids == self.image_token_id(model)).long()}


def crop_boxes(image_processor, width: int, height: int, settings: dict) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each pan-and-scan crop of a ``width`` × ``height`` image, in the processor's
    order, from its own ``pan_and_scan`` run on an index array (channel 0 each pixel's row, 1 its column)."""
    if not settings:
        return []
    rows, cols = np.meshgrid(np.arange(height, dtype=np.int32), np.arange(width, dtype=np.int32), indexing="ij")
    crops = image_processor.pan_and_scan(np.stack([rows, cols]), settings["pan_and_scan_min_crop_size"],
                                         settings["pan_and_scan_max_num_crops"],
                                         settings["pan_and_scan_min_ratio_to_activate"])
    return [(int(c[0, 0, 0]), int(c[1, 0, 0]), int(c.shape[1]), int(c.shape[2])) for c in crops]
