"""What differs between decoder VLMs: :class:`DecoderKind` declares it, one module a model overrides it.

The decoder family (:mod:`vb_probe.families.decoder`) is the protocol for all of them: the prompt tokenized as one
string, row capture on the language model, the pointing rule over image tokens. A kind says the rest: transformers'
class, the processor's image placeholder and how a prompt names the image, the model's documented prompt and system
turn, where each image token's pixels come from (:meth:`DecoderKind.cells`), which image sizes its processor
refuses, how many tokens an image makes, and the pixel inputs its forward takes. Adding a model is one module here,
registered with :func:`register_kind`, and its tests.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import torch

from vb_probe.errors import VbProbeError
from vb_probe.families.decoder.geometry import ImageCells, image_slots
from vb_probe.families.decoder.prompts import Template


class DecoderKind:
    """One decoder VLM's specifics; the defaults fit a model whose processor puts one image token per cell of one
    grid (LLaVA-1.5)."""

    model_types: ClassVar[tuple[str, ...]]  # config.json's model_type values
    label: ClassVar[str]  # how messages name it
    model_class: ClassVar[str]  # transformers' *ForConditionalGeneration class
    processor_class: ClassVar[str | None] = None  # where its processor holds a video part (needs torchvision)
    placeholder: ClassVar[str] = "<image>"  # the processor's image placeholder in a prompt
    expanded_token: ClassVar[str | None] = None  # the image token it expands to, where not the placeholder (Gemma 3)
    image_text: ClassVar[str] = "<image>"  # what {image} stands for in a prompt (the placeholder and delimiters)
    default_template: ClassVar[Template]  # the documented prompt, where the processor has no chat template
    reads_chat_template: ClassVar[bool] = True
    system_prompt: ClassVar[str | None] = None  # its default system turn (Kang et al.'s prompt opens with it)
    plain_prompt: ClassVar[str] = "{image}\n{caption}"
    settings: ClassVar[tuple[str, ...]] = ("size", "crop_size", "do_center_crop", "do_pad", "patch_size",
                                           "resample")  # the image processor's settings run.json records

    def image_token_id(self, model) -> int:
        config = model.config
        value = getattr(config, "image_token_id", None)
        return int(value if value is not None else config.image_token_index)

    def check_fits(self, model) -> None:
        """The processor makes what the model takes (one line naming the setting), before the first forward: the
        placeholder is the model's image token, then :meth:`check_processor`."""
        where = model.checkpoint_path or "the model"
        name = self.expanded_token or self.placeholder
        token = model.processor.tokenizer.convert_tokens_to_ids(name)
        if token != self.image_token_id(model):
            raise VbProbeError(f"{where}: the config's image token id is {self.image_token_id(model)} but the "
                               f"tokenizer's {name} is {token}; pass the config.json and tokenizer files "
                               "saved together")
        self.check_processor(model)

    def check_processor(self, model) -> None:
        """The kind's own checks of its processor against its model."""

    def check_config(self, model) -> None:
        """Settings of the model vb-probe cannot read right (refused in one line)."""

    def notes(self, model) -> list[str]:
        """What the run should say about how this model sees images."""
        return []

    def process(self, model, image) -> dict:
        """``image`` in the prompt's prefix through the model's own processor: its output, and under ``prefix_text``
        the prefix as the processor expanded it (the text it gave its tokenizer)."""
        from vb_probe.families.decoder.processors import process_with_text

        with warnings.catch_warnings():  # some processors trip numpy 2's copy-keyword deprecation: not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            out, text = process_with_text(model.processor, images=image, text=model.prompt_template.prefix,
                                          return_tensors="pt", **self.processor_options(model))
        out["prefix_text"] = text
        return out

    views: ClassVar[tuple[str, ...]] = ()  # image views other than the processor's own it can be set to

    def use_view(self, model, view: str) -> None:
        """Set ``model``'s processor to read images through ``view`` (one of :attr:`views`)."""
        raise NotImplementedError

    def processor_options(self, model) -> dict:
        """Options the processor is called with for every image (settings of its own it does not apply unasked)."""
        return {}

    def cells(self, model, image, image_id: str) -> ImageCells:
        """``image`` (RGB PIL) as the model sees it: each image token's cell in the original pixels, and the
        processor's output (:meth:`process`)."""
        raise NotImplementedError

    def size_problem(self, model, width: int, height: int) -> str | None:
        """Why the processor cannot take a ``width`` × ``height`` image (None: it can), from its own sizing."""
        return None

    def token_count(self, model, width: int, height: int) -> int:
        """How many image tokens the processor makes of a ``width`` × ``height`` image, without making pixels."""
        vision = model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def site(self, model):
        """Where its text reads the image: the language model's self-attention, every layer (the image tokens are
        in the prompt)."""
        from vb_probe.families import Site

        text = model.config.get_text_config()
        return Site("self", text.num_hidden_layers, text.num_attention_heads)

    def site_layers(self, model) -> list[int]:
        """The language model's layer indices whose attention rows make the site, in order."""
        return list(range(self.site(model).layers))

    def key_positions(self, model, sequence: torch.Tensor, cells: ImageCells) -> torch.Tensor:
        """[R] where each cell's key stands among the keys the site's queries read: here the prompt positions of
        its image tokens (``sequence`` [T] one prompt's ids), in cell order."""
        return image_slots((sequence == self.image_token_id(model)).nonzero().flatten(), cells)

    def attention_implementation(self, row_capture: str) -> dict[str, str]:
        """The attention implementation of each sub-model: row capture on the language model, sdpa elsewhere."""
        return {"text_config": row_capture, "vision_config": "sdpa"}

    def pixel_inputs(self, model, rows: list[ImageCells], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """The forward's image inputs for a batch of images, one a row, from each one's processed output."""
        return {"pixel_values": torch.cat([c.processed["pixel_values"] for c in rows])}


KINDS: dict[str, DecoderKind] = {}


def pad_views(per_image: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Each image's views [V_b, ...] stacked into [B, max V_b, ...], zero-filled past an image's own views, as the
    processors batch tiled images (the models skip all-zero views or read how many are real elsewhere)."""
    most = max(v.shape[0] for v in per_image)
    batch = torch.zeros(len(per_image), most, *per_image[0].shape[1:], dtype=dtype or per_image[0].dtype)
    for b, views in enumerate(per_image):
        batch[b, :views.shape[0]] = views
    return batch


def register_kind(cls: type[DecoderKind]) -> type[DecoderKind]:
    """Class decorator: every model type of ``cls`` is read by an instance of it."""
    for model_type in cls.model_types:
        KINDS[model_type] = cls()
    return cls


def kind_of(model_or_type) -> DecoderKind:
    """The kind of a model (its ``config.model_type``) or of a model type."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    return KINDS[model_type]


__all__ = ["DecoderKind", "KINDS", "kind_of", "register_kind"]
