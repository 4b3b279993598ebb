"""The prompt a decoder VLM reads for one caption: the image first, then the caption in the model's own template,
so every caption token can attend to every image token; and where each caption word's last sub-word lands.

The trap: a prompt tokenized in pieces is not the token sequence the model was trained on. Llama's tokenizer
prepends ``▁`` to the start of every string it is given, so a caption tokenized apart begins with ``▁a`` where the
model, after the template's newline, reads ``a``, and the text after it gains a ``▁`` of its own; and a caption
whose words spell a special token (``<image>``, ``<|im_end|>``, ``</s>``) becomes that control token if the whole
prompt goes through the tokenizer as it is. The mechanism: the prompt is tokenized as one string, the way the
model's processor tokenizes it (its image placeholder expanded to the image's tokens, the template's special tokens
matched), and the caption's words are mapped to tokens by their character offsets in that string. Where the caption
spells a special token, its tokens come from the same string tokenized with special tokens split (data text is
text), the template's from the string as it is. PaliGemma's processor tokenizes its output part (the caption) as
a second sequence of its own: there the caption is tokenized alone, as the processor does, special tokens split.
The cost: one tokenizer call per caption (two when it spells a special token).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    note: str = ""  # why the model's own chat template was not used, when it was not
    preset: str = "chat"  # which --prompt made it: chat, plain, kang or custom


PROMPT_PRESETS = ("chat", "plain", "kang")
KANG_PROMPT = "{system}\n{image}\n{caption}."  # Kang et al. (2025): the query row is this prompt's last token


def prompt_problem(kind, prompt: str | None) -> str | None:
    """Why ``prompt`` (a preset of :data:`PROMPT_PRESETS`, or a text holding ``{image}`` then ``{caption}`` once
    each) cannot be the prompt of a model of ``kind`` (its :class:`~.kinds.DecoderKind`); None when it can. Asked
    before the model loads."""
    if prompt is None or prompt in ("chat", "plain"):
        return None
    if prompt == "kang":
        if kind.default_template.caption_is_suffix:
            return (f"Kang et al.'s prompt opens with the model's system turn, and {kind.model_types[0]} has none (its "
                    "caption is its output part); use --prompt chat or plain, or a prompt of your own ending in "
                    "{caption}")
        return None
    images, captions = prompt.count("{image}"), prompt.count("{caption}")
    if images != 1 or captions != 1:
        return (f"{prompt!r} holds {{image}} {images} and {{caption}} {captions} times; a prompt of your own holds "
                f"{{image}} once, then {{caption}} once (or use a preset: {', '.join(PROMPT_PRESETS)})")
    if prompt.index("{image}") > prompt.index("{caption}"):
        return (f"{prompt!r} puts {{caption}} before {{image}}; the image comes first, so that every caption token "
                "can attend to it")
    if kind.default_template.caption_is_suffix and (not prompt.startswith("{image}") or
                                                    not prompt.endswith("{caption}")):
        return (f"{kind.label}'s processor puts the image first and reads the caption as its output part, after the "
                f"prompt: a {kind.label} prompt starts with {{image}} and ends with {{caption}}, e.g. "
                "'{image}caption en{caption}'")
    return None


def preset_template(kind, processor, prompt: str | None) -> Template:
    """The template ``prompt`` asks for: ``chat`` (None) the model's own chat template (:func:`template_for`),
    ``plain`` the image then the caption, ``kang`` Kang et al.'s ``<system>\n<image>\n<caption>.``, any other text
    a prompt of the user's own with ``{image}`` and ``{caption}`` (checked by :func:`prompt_problem` first)."""
    from vb_probe.errors import VbProbeError

    problem = prompt_problem(kind, prompt)
    if problem:
        raise VbProbeError(f"--prompt: {problem}")
    if prompt is None or prompt == "chat":
        return template_for(kind, processor)
    preset = prompt if prompt in PROMPT_PRESETS else "custom"
    text = {"plain": kind.plain_prompt, "kang": KANG_PROMPT}.get(prompt, prompt)
    # a model without a default system turn (Qwen3-VL): Kang et al.'s prompt from the image on
    text = text.replace("{system}\n", f"{kind.system_prompt}\n" if kind.system_prompt else "")
    before, after = text.split("{caption}")
    default = kind.default_template
    prefix = before.replace("{image}", kind.image_text)
    if default.caption_is_suffix:  # PaliGemma: its processor adds the newline that ends the prompt
        prefix = prefix[:-1] if prefix.endswith("\n") else prefix
    return Template(prefix, after, default.placeholder, default.caption_is_suffix, preset=preset)


def template_for(kind, processor) -> Template:
    """The model's own chat template when its processor has one (the caption as the user's text after the image),
    else the model's documented default (``kind.default_template``); a chat template that raises, leaves the image
    out or places it more than once is not used, and the template's ``note`` says so."""
    from dataclasses import replace

    default = kind.default_template
    chat = getattr(processor, "chat_template", None)
    if not kind.reads_chat_template or not chat:
        return default
    documented = f"the documented prompt {(default.prefix + '…' + default.suffix)!r} is used instead"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": MARKER}]}]
    try:
        rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that cannot render this message (jinja raises many types)
        reason = " ".join(str(exc).split())[:80] or type(exc).__name__
        return replace(default, note=f"the processor's chat template raises ({type(exc).__name__}: {reason}); "
                                     f"{documented}")
    if not isinstance(rendered, str) or rendered.count(MARKER) != 1:
        return replace(default, note=f"the processor's chat template does not place the caption once; {documented}")
    prefix, suffix = rendered.split(MARKER)
    images = prefix.count(default.placeholder) + suffix.count(default.placeholder)
    if images != 1 or default.placeholder not in prefix:
        where = "leaves the image out" if images == 0 else \
            f"places the image {images} times" if images > 1 else "places the image after the caption"
        return replace(default, note=f"the processor's chat template {where}; {documented}")
    return Template(prefix, suffix, default.placeholder)


@dataclass
class PromptTokens:
    """``input_ids`` of one whole prompt; ``word_last[w]`` the position of caption word w's last token (None: cut
    by ``max_caption``); ``caption`` the (start, end) positions of the caption's tokens."""

    input_ids: list[int]
    word_last: list[int | None]
    caption: tuple[int, int]


def _word_spans(words: list[str], start: int) -> list[tuple[int, int]]:
    """Character (start, end) of each word of ``" ".join(words)`` placed at ``start`` of a string."""
    spans, at = [], start
    for word in words:
        spans.append((at, at + len(word)))
        at += len(word) + 1
    return spans


def _encode(tokenizer, text: str, add_special_tokens: bool, split_special_tokens: bool) -> tuple[list[int], list]:
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=split_special_tokens,
                         return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]]


def _first_at(offsets: list, position: int, after: int = 0) -> int:
    """Index of the first token from ``after`` on that starts at or past character ``position`` (tokens of no
    width, added by the tokenizer's post-processor, never start a part)."""
    for index in range(after, len(offsets)):
        start, end = offsets[index]
        if end > start and start >= position:
            return index
    return len(offsets)


def prompt_tokens(tokenizer, before: str, words: list[str], after: str, max_caption: int, *,
                  add_special_tokens: bool = True) -> PromptTokens:
    """``before + caption + after`` tokenized as one string (``before`` with the image placeholder already
    expanded, as the processor expands it), the caption's special-token spellings kept as text; the caption cut to
    ``max_caption`` tokens. Each word's last token is the last one overlapping its characters."""
    caption = " ".join(words)
    text = before + caption + after
    c0, c1 = len(before), len(before) + len(caption)
    ids, offsets = _encode(tokenizer, text, add_special_tokens, split_special_tokens=False)
    head, tail = _first_at(offsets, c0), _first_at(offsets, c1)
    head_ids, tail_ids = ids[:head], ids[tail:]
    middle_ids, middle_offsets = ids[head:tail], offsets[head:tail]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    if any(i in special for i in middle_ids):  # the caption spells a control token: its text as text
        split_ids, split_offsets = _encode(tokenizer, text, add_special_tokens, split_special_tokens=True)
        first = _first_at(split_offsets, c0)
        last = _first_at(split_offsets, c1, first)
        middle_ids, middle_offsets = split_ids[first:last], split_offsets[first:last]
    kept = min(len(middle_ids), max_caption)
    word_last: list[int | None] = [None] * len(words)
    for w, (start, end) in enumerate(_word_spans(words, c0)):
        for index in range(kept):
            token_start, token_end = middle_offsets[index]
            if token_start < end and token_end > start:
                word_last[w] = len(head_ids) + index
    return PromptTokens(head_ids + middle_ids[:kept] + tail_ids, word_last, (len(head_ids), len(head_ids) + kept))


def caption_tokens(tokenizer, words: list[str], max_length: int) -> PromptTokens:
    """The caption as a sequence of its own (no special tokens added, special-token spellings kept as text), at most
    ``max_length`` tokens: PaliGemma's output part, which its processor tokenizes apart from the prefix."""
    return prompt_tokens(tokenizer, "", words, "", max_length, add_special_tokens=False)

