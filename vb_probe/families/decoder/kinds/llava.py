"""LLaVA-1.5 (``llava``): a CLIP tower's 24 × 24 patches (at 336²) over a centre crop of the image resized to a short
side of 336 (or, with ``do_pad``, over the image padded to a square first), one image token a patch, row-major.

The trap: LLaVA's own code pads to a square; transformers' CLIP processor crops, so a wide image's sides are never
seen. The mechanism: the view is read from the processor's own resize (transformers' ``get_resize_output_image_size``
for its ``shortest_edge``), its crop or pad; a phrase whose gold lies in the cropped band is skipped as
``outside_view``. The cost: one call of that function per image size (cached per processor).
"""

from __future__ import annotations

import weakref

import numpy as np

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, ViewMap, cell_boxes
from vb_probe.families.decoder.kinds.base import DecoderKind, register_kind
from vb_probe.families.decoder.prompts import Template

MAX_RESIZED_PIXELS = 1 << 26  # 67 M pixels (0.8 GB in float32 RGB): the most a processor may make of one image


@register_kind
class Llava(DecoderKind):
    model_types = ("llava",)
    label = "LLaVA"
    model_class = "LlavaForConditionalGeneration"
    # LLaVA-1.5's conversation format (llava-hf's chat template renders the same)
    default_template = Template("USER: <image>\n", " ASSISTANT:", "<image>")
    # the system turn of LLaVA-1.5's conversation template
    system_prompt = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                     "helpful, detailed, and polite answers to the human's questions.")
    # LLaVA's own code pads the image to a square (its mean colour) before the CLIP processor; transformers' CLIP
    # processor centre-crops. Kang et al. report on LLaVA's own view; llava-hf checkpoints save the crop.
    views = ("pad", "crop")

    def use_view(self, model, view: str) -> None:
        """A fresh image processor of the same settings that pads to a square (``pad``: LLaVA's image processor
        with ``do_pad``) or centre-crops (``crop``); fresh, so nothing cached for the old one is read for it."""
        from transformers import LlavaImageProcessorPil

        settings = model.processor.image_processor.to_dict()
        settings.pop("image_processor_type", None)
        model.processor.image_processor = LlavaImageProcessorPil.from_dict(settings, do_pad=view == "pad",
                                                                          do_center_crop=True)

    def check_config(self, model) -> None:
        if model.config.vision_config.model_type == "pixtral":  # mistral-community/pixtral-12b is a `llava`
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: a LLaVA checkpoint with a Pixtral vision tower "
                               "(variable size, break tokens): not supported yet; its processor's geometry is "
                               "untested here (its module needs torchvision)")
        strategy = getattr(model.config, "vision_feature_select_strategy", "default")
        if strategy != "default":
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: vision_feature_select_strategy {strategy!r}: "
                               "only 'default' (LLaVA-1.5's, one token per patch) is supported")

    def check_processor(self, model) -> None:
        from PIL import Image

        vision = model.config.vision_config
        pixels = tuple(pixel_size(model.processor, Image.new("RGB", (400, 300))))
        if pixels != (vision.image_size, vision.image_size):
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor makes {pixels[1]} × {pixels[0]} "
                               f"pixels of a 400 × 300 image but the vision tower takes {vision.image_size} × "
                               f"{vision.image_size} (do_center_crop, crop_size or do_pad in preprocessor_config.json); "
                               "pass the processor saved with the model")

    def notes(self, model) -> list[str]:
        processor = model.processor.image_processor
        if getattr(processor, "do_center_crop", True) and not getattr(processor, "do_pad", False):
            return ["LLaVA's processor centre-crops the image to a square: phrases whose gold boxes all lie in the "
                    "cropped-away band are skipped as outside_view (set do_pad in the processor to see it all)"]
        return []

    def cells(self, model, image, image_id: str) -> ImageCells:
        processed = self.process(model, image)
        width, height = image.size
        side = int(round(int((processed["input_ids"][0] == self.image_token_id(model)).sum()) ** 0.5))
        processor = model.processor.image_processor
        view = llava_view(processor, width, height, resized_size(processor, width, height))
        boxes = cell_boxes((side, side), view)
        return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                          view.seen(), (side, side), view, processed)

    def size_problem(self, model, width: int, height: int) -> str | None:
        """The processor resizes the short side to 336 before its crop: a 20000 × 10 image would become
        672000 × 336 pixels (2.5 GB); refused above :data:`MAX_RESIZED_PIXELS`."""
        resized_h, resized_w = resized_size(model.processor.image_processor, width, height)
        if resized_h * resized_w > MAX_RESIZED_PIXELS or min(resized_h, resized_w) < 1:
            return (f"LLaVA's processor would resize it to {resized_w} × {resized_h} pixels "
                    f"({resized_w * resized_h * 12 / 2**30:.1f} GB) before its crop; crop it nearer a square")
        return None


def pixel_size(processor, image) -> tuple[int, int]:
    """(height, width) of the pixels the processor makes of ``image``."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tuple(processor.image_processor(image, return_tensors="pt")["pixel_values"].shape[-2:])


def llava_view(image_processor, width: int, height: int, resized: tuple[int, int]) -> ViewMap:
    """LLaVA-1.5's CLIP processor: (optionally) pad to a square in the middle, resize the short side, centre-crop.
    ``resized`` (height, width) is what the processor's resize gave (read from its output without the crop)."""
    crop = image_processor.crop_size
    crop_h, crop_w = (crop["height"], crop["width"]) if getattr(image_processor, "do_center_crop", True) else resized
    pad_y = pad_x = 0.0
    base_w, base_h = width, height
    if getattr(image_processor, "do_pad", False) and width != height:
        side = max(width, height)
        # the processor puts the image at (side − short) // 2 of the square
        pad_y, pad_x = ((side - height) // 2, 0) if width > height else (0, (side - width) // 2)
        base_w = base_h = side
    top, left = (resized[0] - crop_h) // 2, (resized[1] - crop_w) // 2  # transformers' centre crop
    return ViewMap((crop_h, crop_w), (base_h / resized[0], base_w / resized[1]), (top, left), (float(pad_y), float(pad_x)))


_RESIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor → (width, height) → size


def resized_size(image_processor, width: int, height: int) -> tuple[int, int]:
    """(height, width) the processor resizes a ``width`` × ``height`` image to before its crop, from the function its
    resize calls for a ``shortest_edge`` size (transformers' ``get_resize_output_image_size``, given an array of
    that shape that takes no memory), else read from its own output for a blank image with the crop off (cached per
    processor, as long as it lives, and size)."""
    from PIL import Image

    sizes = _RESIZED.setdefault(image_processor, {})
    if (width, height) not in sizes:
        size = image_processor.size
        shortest = size.get("shortest_edge") if hasattr(size, "get") else None
        padded = getattr(image_processor, "do_pad", False)  # padded to a square first: the blank run is small
        if shortest and not padded and not (size.get("longest_edge") if hasattr(size, "get") else None):
            from transformers.image_transforms import get_resize_output_image_size
            from transformers.image_utils import ChannelDimension

            shape_only = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (3, height, width))
            sizes[(width, height)] = tuple(int(v) for v in get_resize_output_image_size(
                shape_only, size=shortest, default_to_square=False, input_data_format=ChannelDimension.FIRST))
        else:
            out = image_processor(Image.new("RGB", (width, height)), do_center_crop=False, do_normalize=False,
                                  do_rescale=False, return_tensors="np")
            sizes[(width, height)] = tuple(int(v) for v in out["pixel_values"].shape[-2:])
    return sizes[(width, height)]
