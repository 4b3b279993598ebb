"""PaliGemma: a SigLIP tower's 16 × 16 patches (at 224²) over the image squashed to its square, one image token a
patch; the image and the task prompt form a bidirectional prefix, and the caption is the output part (token type 1,
tokenized as a sequence of its own, as the processor does, then ``<eos>``)."""

from __future__ import annotations

import numpy as np

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, cell_boxes, squashed_view
from vb_probe.families.decoder.kinds.base import DecoderKind, register_kind
from vb_probe.families.decoder.prompts import Template


@register_kind
class PaliGemma(DecoderKind):
    model_types = ("paligemma",)
    label = "PaliGemma"
    model_class = "PaliGemmaForConditionalGeneration"
    # its captioning task: the processor adds the image tokens, <bos> and the newline; the caption follows
    default_template = Template("<image>caption en", "", "<image>", caption_is_suffix=True)
    reads_chat_template = False  # a task prompt, not a conversation
    plain_prompt = "{image}{caption}"
    settings = ("size", "resample", "image_seq_length")

    def check_processor(self, model) -> None:
        vision = model.config.vision_config
        expected = (vision.image_size // vision.patch_size) ** 2
        if int(model.processor.image_seq_length) != expected:
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor's image_seq_length is "
                               f"{model.processor.image_seq_length} but the vision tower makes {expected} tokens "
                               f"({vision.image_size}² / {vision.patch_size}²); pass the processor saved with the model")

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side = int(round(int((processed["input_ids"][0] == self.image_token_id(model)).sum()) ** 0.5))
        view = squashed_view(width, height, tuple(processed["pixel_values"].shape[-2:]))
        boxes = cell_boxes((side, side), view)
        return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                          view.seen(), (side, side), view, processed)
