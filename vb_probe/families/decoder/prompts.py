"""The prompt a decoder VLM reads for one caption: the image first, then the caption in the model's own template,
so every caption token can attend to every image token; and where each caption word's last sub-word lands.

The part before the caption goes through the model's own processor (it expands the image placeholder into the
image tokens and makes the pixels); the caption's words through the fast tokenizer with ``is_split_into_words``
and ``word_ids()``, in the form whose ids are those of the caption tokenized as one string (byte-level BPE, as
GPT-2's and Qwen2's, and Gemma's tokenizer give a pre-split word no space of its own: there every word after the
first carries its space; Llama's Metaspace adds one itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MARKER = "VBPROBECAPTION"  # stands for the caption when a chat template is rendered, then split on


@dataclass(frozen=True)
class Template:
    """The text around the caption: ``prefix`` (holding ``placeholder``, where the processor puts the image
    tokens) and ``suffix``; ``caption_is_suffix``: the caption is the model's output part (PaliGemma: token type
    1, attending causally; its prefix attends both ways)."""

    prefix: str
    suffix: str
    placeholder: str
    caption_is_suffix: bool = False


DEFAULT_TEMPLATES = {
    # LLaVA-1.5's conversation format (llava-hf's chat template renders the same)
    "llava": Template("USER: <image>\n", " ASSISTANT:", "<image>"),
    # Qwen2-VL-Instruct's chat template with its default system turn
    "qwen2_vl": Template("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                         "<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>\n<|im_start|>assistant\n",
                         "<|image_pad|>"),
    # PaliGemma's captioning task: the processor adds the image tokens, <bos> and the newline; the caption follows
    "paligemma": Template("<image>caption en", "", "<image>", caption_is_suffix=True),
}


def template_for(model_type: str, processor) -> Template:
    """The model's own chat template when its processor has one (the caption as the user's text after the image),
    else the model's documented default (:data:`DEFAULT_TEMPLATES`)."""
    default = DEFAULT_TEMPLATES[model_type]
    chat = getattr(processor, "chat_template", None)
    if model_type == "paligemma" or not chat:
        return default
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": MARKER}]}]
    try:
        rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # a template that cannot render this message: the documented format instead
        return default
    if rendered.count(MARKER) != 1 or default.placeholder not in rendered.split(MARKER)[0]:
        return default
    prefix, suffix = rendered.split(MARKER)
    return Template(prefix, suffix, default.placeholder)


@dataclass
class CaptionTokens:
    """``input_ids`` of the caption alone; ``word_last[w]`` the index of word w's last token (None: cut)."""

    input_ids: list[int]
    word_last: list[int | None]


def caption_tokens(tokenizer, words: list[str], max_length: int) -> CaptionTokens:
    """The caption's tokens (no special tokens), at most ``max_length``: the ids of the caption as one string, each
    word's last token found through ``word_ids()`` of the pre-split words. Tokenizers differ in where a word's
    space goes (byte-level BPE and Gemma's keep it in the word's first token and give a pre-split word none; Llama's
    Metaspace adds it to every word), so the words are given as they are and, after the first, with their space,
    and the form whose ids equal the caption's own is used; if neither does, the caption's character offsets."""
    whole = tokenizer(" ".join(words), add_special_tokens=False, return_offsets_mapping=True)
    ids = list(whole["input_ids"])
    last: list[int | None] = [None] * len(words)
    for form in (list(words), [words[0]] + [" " + w for w in words[1:]]):
        encoding = tokenizer(form, is_split_into_words=True, add_special_tokens=False)
        if list(encoding["input_ids"]) == ids:
            for position, word in enumerate(encoding.word_ids()):
                if word is not None:
                    last[word] = position
            break
    else:  # the caption's own tokens, each word's last one by where it ends in the text
        ends = np.cumsum([len(w) + 1 for w in words]) - 1  # the character after each word
        starts = ends - np.array([len(w) for w in words])
        for position, (start, end) in enumerate(whole["offset_mapping"]):
            for word in np.flatnonzero((starts < end) & (start < ends)):
                last[int(word)] = position
    kept = ids[:max_length]
    return CaptionTokens(kept, [p if p is not None and p < len(kept) else None for p in last])


class Qwen2VLPrompts:
    """Qwen2-VL's processor without its video half (transformers builds the full one only with torchvision): the
    model's own image processor (``smart_resize``, ``image_grid_thw``) and tokenizer, each ``<|image_pad|>``
    expanded to ``t·h·w / merge²`` tokens exactly as ``Qwen2VLProcessor.replace_image_token`` does, and
    ``mm_token_type_ids`` (1 on image tokens) as the processor returns them."""

    image_token = "<|image_pad|>"

    def __init__(self, image_processor, tokenizer, chat_template: str | None = None):
        self.image_processor, self.tokenizer, self.chat_template = image_processor, tokenizer, chat_template

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)

    def __call__(self, images=None, text: str = "", return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        processed = dict(self.image_processor(images=images, return_tensors="pt"))
        merge = self.image_processor.merge_size ** 2
        count = int(processed["image_grid_thw"][0].prod()) // merge
        ids = self.tokenizer(text.replace(self.image_token, self.image_token * count), return_tensors="pt")
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        return {**processed, "input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"],
                "mm_token_type_ids": (ids["input_ids"] == image_id).long()}
