"""Decoder vision-language models as one model family: LLaVA-1.5, LLaVA-NeXT and OneVision, the Qwen VL models,
PaliGemma, Gemma 3, InternVL, Idefics3 and SmolVLM, Llama 3.2 Vision; transformers' own ``*ForConditionalGeneration``
classes (not re-implemented), loaded from a folder, a hub id or an object.

The image comes first, then the caption in the model's own prompt template (:mod:`.prompts`), tokenized as one
string with the image placeholder expanded as the model's processor expands it; each caption word's last sub-word is
a query, the image tokens are the cells its processor makes (:mod:`.kinds`, one module a model). Attention is read by
row capture (:mod:`.rows`) on the language model only: sdpa's output unchanged, and only the query rows of every
layer through the model file's own eager code, so memory is ``queries × heads × sequence`` a layer, never the full
maps (a 7B model probes on one GPU in bf16; a larger one loads across devices with ``device_map``). Image tokens are
scored by the pointing rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vb_probe.errors import CheckpointError, DataError, VbProbeError
from vb_probe.families import FamilyBase, Site, items_image_tokens, pin, register_family
from vb_probe.families.base import settings_json
from vb_probe.families.decoder.geometry import ImageCells, ViewMap
from vb_probe.families.decoder.kinds import KINDS, kind_of
from vb_probe.families.decoder.localization import LocalizationTally
from vb_probe.families.decoder.processors import load_processor
from vb_probe.families.decoder.prompts import (
    Template,
    caption_tokens,
    preset_template,
    prompt_problem,
    prompt_tokens,
)
from vb_probe.families.decoder.rows import ablate, capture_rows, register
from vb_probe.families.decoder.sinks import SinkTally
from vb_probe.families.loading import load_pretrained
from vb_probe.probe_config import option

LONG_SEQUENCE = 4096  # image tokens an image beyond which a run is said to be long


@register_family
class DecoderFamily(FamilyBase):
    """Decoder VLMs (every model type of :data:`.kinds.KINDS`): one site, the language model's self-attention of
    every layer."""

    name = "decoder"
    model_type = "llava"
    model_types = tuple(KINDS)
    default_tokenizer = None  # a decoder checkpoint brings its own processor
    rule = "pointing"
    reads = "pixels"
    token_kind = "image tokens"
    loads_across_devices = True  # accepts dtype and device_map
    generates_text = True

    def load(self, source: Path | Any, *, dtype: torch.dtype | None = None, device_map: str | dict | None = None):
        """The model (``*ForConditionalGeneration``) from a folder, in ``dtype`` and across ``device_map``
        (accelerate), with its processor; or an object in memory (its ``processor`` attribute, else its folder's)."""
        import transformers

        if isinstance(source, (str, Path)):
            config = transformers.AutoConfig.from_pretrained(str(source))
            kind = kind_of(config.model_type)
            model_class = getattr(transformers, kind.model_class)
            options = {"dtype": dtype} if dtype is not None else {}
            if device_map is not None:
                try:
                    import accelerate  # noqa: F401
                except ImportError:
                    raise VbProbeError("--device-map: needs accelerate (pip install 'vb-probe[scale]')") from None
                options["device_map"] = device_map
            model, notes = load_pretrained(model_class, Path(source), attention="sdpa", **options)
            processor, note = load_processor(Path(source), config.model_type, kind.processor_class)
            pin(model, checkpoint_path=Path(source), load_notes=notes + ([note] if note else []), processor=processor)
        else:
            model = pin(source)
            kind = kind_of(model)
            if model.processor is None:
                if model.checkpoint_path is None:
                    raise CheckpointError(f"{type(model).__name__}: a model in memory needs its processor: set "
                                          "model.processor (transformers' AutoProcessor of its checkpoint)")
                model.processor, _ = load_processor(model.checkpoint_path, model.config.model_type,
                                                    kind.processor_class)
        if model.prompt_template is None:  # the model's own chat template, rendered once (--prompt sets another)
            self.use_prompt(model, None)
        model.set_attn_implementation(kind.attention_implementation(register()))
        return model.eval()

    def prompt_problem(self, model_type: str, prompt: str | None) -> str | None:
        return prompt_problem(kind_of(model_type), prompt)

    def use_prompt(self, model, prompt: str | None) -> None:
        """``chat`` (None) the processor's chat template, ``plain``, ``kang`` or a text with ``{image}`` and
        ``{caption}`` (:mod:`.prompts`); rendered once here, read by every image and caption after."""
        model.prompt_template = preset_template(kind_of(model), model.processor, prompt)
        if model.prompt_template.note and model.prompt_template.note not in model.load_notes:
            model.load_notes.append(model.prompt_template.note)

    query_rows = ("word", "end")
    maps_on_grid = True

    def views(self, model) -> tuple[str, ...]:
        return ("processor", *kind_of(model).views)

    def sink_tally(self, model, dims: tuple[int, ...]) -> SinkTally | None:
        """The language model's decoder layers, read at the image tokens; none for a cross-attention model (its
        image is keys of its own, not tokens of the stream)."""
        if kind_of(model).site(model).name != "self":
            return None
        return SinkTally(decoder_layers, dims)

    def use_view(self, model, view: str) -> None:
        """The kind's own (:meth:`.kinds.DecoderKind.use_view`): e.g. LLaVA padded to a square or centre-cropped,
        from the image processor as loaded; ``processor`` puts that one back (a view asked of one call does not
        stay for the next)."""
        super().use_view(model, view)
        if model.saved_image_processor is None:
            model.saved_image_processor = model.processor.image_processor
        model.processor.image_processor = model.saved_image_processor
        if view != "processor":
            kind_of(model).use_view(model, view)

    def ablate_heads(self, model, heads):
        """Through the registered attention function (:func:`.rows.ablate`): the heads' outputs zeroed before
        each layer's output projection."""
        from vb_probe.families.ablation import heads_by_layer

        by_layer = heads_by_layer(heads, self.sites(model)[0].shape)
        config = model.config.get_text_config()
        if config._attn_implementation != register():  # a model loaded elsewhere: its text attention ours
            model.set_attn_implementation(kind_of(model).attention_implementation(register()))
        return ablate(by_layer)

    def caption_log_probs(self, model, batch, precision: str = "fp32") -> torch.Tensor:
        """The model's own forward and LM head (its logit softcapping included) on the positions that predict the
        caption's tokens only (``logits_to_keep``: [B, L] positions, not [B, T, vocab])."""
        spans = batch.extras["caption_spans"]  # [B, 2] first and past-last caption token
        lengths = (spans[:, 1] - spans[:, 0]).clamp(min=0)
        width = max(1, int(lengths.max()))
        offsets = torch.arange(width)[None, :]
        valid = offsets < lengths[:, None]  # [B, L]
        targets = (spans[:, :1] + offsets).clamp(max=batch.inputs["input_ids"].shape[1] - 1)  # [B, L]
        predicting = (targets - 1).clamp(min=0)
        device = batch.inputs["input_ids"].device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(**batch.inputs, logits_to_keep=predicting.to(device)).logits  # [B, L, vocab]
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        token_ids = batch.inputs["input_ids"].gather(1, targets.to(device))
        picked = log_probs.gather(-1, token_ids[..., None])[..., 0].cpu() * valid
        return picked.sum(1) / lengths.clamp(min=1)

    def tokenizer_of(self, model):
        return model.processor.tokenizer

    def tally(self, model, options: dict, pass_name: str) -> LocalizationTally:
        """The fixed-position baseline on every pass; image shares and entropies for the first
        ``localization_prompts`` entity queries of the selection split (``select_on``; without one, the probed
        split), Kang et al.'s choice made from them (:mod:`.localization`)."""
        chooses = pass_name == ("select" if options["select_on"] else "main")
        return LocalizationTally(option(options, "localization_prompts") if chooses else 0, option(options, "entropy"))

    def summary_lines(self, result) -> list[str]:
        lines = []
        for tally in (LocalizationTally, SinkTally):
            if tally.key in result.extras:
                lines.extend(tally.lines(result.extras[tally.key]))
        return lines

    def page_marks(self, result) -> dict:
        """Kang et al.'s heads (chosen without boxes) and the fixed-position baseline's place."""
        block = result.extras.get(LocalizationTally.key)
        if not block:
            return {}
        fixed = block["fixed_position"]
        heads = block.get("unsupervised_selection", {}).get("heads", [])
        return {"selected_heads": [[h["layer"], h["head"], h["votes"]] for h in heads],
                "selected_by": "chosen without boxes (Kang et al. 2025)",
                "fixed_place": {"row": fixed["place"][0], "column": fixed["place"][1], "accuracy": fixed["accuracy"],
                                "chosen_on": fixed["chosen_on"]}}

    def sites(self, model) -> list[Site]:
        """The language model's self-attention of every layer; a cross-attention model's cross layers
        (:meth:`.kinds.DecoderKind.site`)."""
        return [kind_of(model).site(model)]

    def prepare(self, model, store, options: dict) -> dict:
        if store.kind != "pixels":
            raise DataError(f"{options.get('features') or store.source}: a {model.config.model_type} model reads "
                            "pixels, not region features; pass --images FOLDER")
        if options.get("mask", "posthoc") != "posthoc":
            raise VbProbeError(f"--mask {options['mask']}: decoder models are probed post hoc only; use --mask posthoc")
        kind = kind_of(model)
        kind.check_config(model)
        kind.check_fits(model)
        template = model.prompt_template
        processor = model.processor.image_processor
        facts = {"model_type": model.config.model_type,
                 "image_processor": {k: settings_json(getattr(processor, k)) for k in kind.settings
                                     if hasattr(processor, k)},
                 "prompt": {"preset": template.preset, "prefix": template.prefix, "suffix": template.suffix,
                            "caption_is_suffix": template.caption_is_suffix},
                 "attention": "row capture (sdpa output, query rows through the model's eager code)",
                 # the query row: the entity's word, or the prompt's last token (Kang et al.'s, under their prompt)
                 "query_row": query_row(option(options, "query_row"), template),
                 "view": option(options, "view")}
        for note in kind.notes(model):
            if note not in model.load_notes:
                model.load_notes.append(note)
        return facts

    def text_limit(self, model) -> int:
        return int(getattr(model.config.get_text_config(), "max_position_embeddings", 4096))

    def image_size_problem(self, model, width: int, height: int) -> str | None:
        """Asked of the model's own processor sizing (:meth:`.kinds.DecoderKind.size_problem`)."""
        return kind_of(model).size_problem(model, width, height)

    def sequence_note(self, model, sizes: list[tuple[int, int]]) -> str | None:
        """The longest prompt the images make (image tokens + the template + a caption of up to 64 tokens),
        estimated before the first forward from the processor's own sizing: refused past the model's positions, a
        note past :data:`LONG_SEQUENCE` tokens."""
        if not sizes:
            return None
        tokens = max(kind_of(model).token_count(model, width, height) for width, height in sizes)
        longest = tokens + 64 + len(model.prompt_template.prefix) // 2
        if longest > self.text_limit(model):
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: its processor makes up to {tokens} image tokens "
                               f"an image, more than the model's {self.text_limit(model)} positions; lower the "
                               "processor's max_pixels (or min_pixels) in preprocessor_config.json")
        if tokens > LONG_SEQUENCE:
            return (f"the processor makes up to {tokens} image tokens an image (its min_pixels/max_pixels or size): "
                    f"each forward reads about {longest} tokens a caption; expect it to be slow, or lower "
                    "--batch-size if memory runs out")
        return None

    # ------------------------------------------------------------------------------------------- the image

    def image_tokens(self, model, store, image_id: str) -> ImageCells:
        """One image through the model's processor, in the prompt's prefix: the image tokens' cells (original
        pixels), the prefix's token ids and the pixels."""
        return image_cells(model, store.image(image_id), image_id)

    def collate(self, model, items, tokenizer, facts: dict, max_text_len: int, store=None):
        from vb_probe.batching import layout

        tokenizer = tokenizer if tokenizer is not None else self.tokenizer_of(model)
        kind = kind_of(model)
        template = model.prompt_template
        query_at = query_row(facts.get("query_row"), template)  # prepare's facts hold it; a caller's own may not
        rows = items_image_tokens(self, model, items, store, ImageCells)
        sequences, token_types, word_positions, caption_spans = [], [], [], []
        for item, cells in zip(items, rows):
            prefix = cells.processed["input_ids"][0].tolist()
            if template.caption_is_suffix:  # PaliGemma: the caption is a second sequence, as its processor makes it
                caption = caption_tokens(tokenizer, list(item.words), max_text_len)
                tokens = prefix + caption.input_ids + [tokenizer.eos_token_id]
                positions = [None if p is None else len(prefix) + p for p in caption.word_last]
                types = [0] * len(prefix) + [1] * (len(tokens) - len(prefix))
                span = (len(prefix) + caption.caption[0], len(prefix) + caption.caption[1])
            else:  # one string: the prefix as the processor expanded it, the caption, the suffix
                prompt = prompt_tokens(tokenizer, cells.processed["prefix_text"], list(item.words), template.suffix,
                                       max_text_len)
                tokens, positions, types = prompt.input_ids, prompt.word_last, [0] * len(prompt.input_ids)
                span = prompt.caption
            if query_at == "end":  # every query reads the prompt's last token (Kang et al.'s "." )
                positions = [None if p is None else len(tokens) - 1 for p in positions]
            caption_spans.append(span)
            sequences.append(tokens)
            word_positions.append(positions)
            token_types.append(types)
        inputs = pad_sequences(sequences, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        if template.caption_is_suffix:
            inputs["token_type_ids"] = pad_sequences(token_types, 1)["input_ids"]
        inputs.update(kind.pixel_inputs(model, rows, inputs["input_ids"]))
        positions = [kind.key_positions(model, torch.tensor(s), cells) for s, cells in zip(sequences, rows)]
        r_max = max(len(p) for p in positions)
        image_positions = torch.zeros(len(rows), r_max, dtype=torch.long)
        places = torch.zeros(len(rows), r_max, dtype=torch.long)  # each cell's place on the primary view
        view_index = torch.zeros(len(rows), r_max, dtype=torch.long)  # 0 the primary view, i the i-th after it
        for b, (p, cells) in enumerate(zip(positions, rows)):
            image_positions[b, :len(p)] = p
            places[b, :len(p)] = torch.from_numpy(cells.places())
            if cells.view_of is not None:
                view_index[b, :len(p)] = torch.from_numpy(cells.view_of)
        return layout(items, word_positions, [c.boxes for c in rows], [None] * len(rows), inputs,
                      views=[c.seen for c in rows], cell_views=[c.view_of for c in rows], places=places,
                      view_index=view_index, view_names=[c.views for c in rows],
                      grids=torch.tensor([c.grid for c in rows], dtype=torch.long), image_positions=image_positions,
                      image_sizes=torch.tensor([[c.image_w, c.image_h] for c in rows], dtype=torch.float64),
                      image_counts=torch.tensor([len(p) for p in positions], dtype=torch.long),
                      caption_spans=torch.tensor(caption_spans, dtype=torch.long))

    def rows(self, model, batch, site: Site, mask: str = "posthoc", precision: str = "fp32") -> torch.Tensor:
        """Each query's attention on its image's tokens, in row-major cell order: [layer, n, head, R] fp32 on the
        CPU (padding cells 0). One forward with row capture; the rows are over the whole sequence, so their sum over
        the image tokens is the query's image share."""
        n_rows = batch.inputs["input_ids"].shape[0]
        batch_index, query_index = batch.batch_index.cpu(), batch.query_index.cpu()
        slots = torch.zeros_like(batch_index)
        per_row = [[] for _ in range(n_rows)]
        for i, (b, q) in enumerate(zip(batch_index.tolist(), query_index.tolist())):
            slots[i] = len(per_row[b])
            per_row[b].append(q)
        width = max(1, max(len(p) for p in per_row))
        positions = torch.zeros(n_rows, width, dtype=torch.long)
        keep = torch.zeros(n_rows, width, dtype=torch.bool)
        for b, wanted in enumerate(per_row):
            positions[b, :len(wanted)] = torch.tensor(wanted, dtype=torch.long) if wanted else 0
            keep[b, :len(wanted)] = True
        core = getattr(model, "model", model)  # the language model's hidden states suffice: no LM head
        device_type = batch.inputs["input_ids"].device.type
        with capture_rows(positions, keep) as plan, torch.autocast(device_type, dtype=torch.bfloat16,
                                                                   enabled=precision == "bf16"):
            core(**batch.inputs)
        image_positions = batch.extras["image_positions"]  # [B, R_max]
        r_max = batch.region_valid.shape[1]
        out = []
        for layer in kind_of(model).site_layers(model):
            rows = plan.rows[layer]  # [B, H, P, K]
            index = image_positions.to(rows.device)[:, None, None, :].expand(-1, rows.shape[1], rows.shape[2], -1)
            on_image = rows.gather(-1, index)  # [B, H, P, R_max]
            picked = on_image[batch_index.to(rows.device), :, slots.to(rows.device)]  # [n, H, R_max]
            out.append(picked.float().cpu())
        stacked = torch.stack(out) if out else torch.zeros(0, len(batch_index), site.heads, r_max)
        return stacked * batch.region_valid[None, :, None, :].float()

    def twin(self, model, seed: int):
        torch.manual_seed(seed)
        parameter = next(model.parameters())
        twin = pin(type(model)(model.config).to(device=parameter.device, dtype=parameter.dtype).eval(),
                   checkpoint_path=None, load_notes=[], processor=model.processor, prompt_template=model.prompt_template)
        twin.set_attn_implementation(kind_of(model).attention_implementation(register()))
        return twin


def query_row(asked: str | None, template: Template) -> str:
    """Where a query's row is read: as asked (``word`` or ``end``), else the prompt's last token under Kang et al.'s
    prompt (their query row) and the entity's word under any other."""
    return asked or ("end" if template.preset == "kang" else "word")


def decoder_layers(model) -> list[torch.nn.Module]:
    """The language model's decoder layers, whose outputs are the residual stream."""
    return list(model.get_decoder().layers)


def image_cells(model, image, image_id: str) -> ImageCells:
    """``image`` (RGB PIL) in the model's prompt prefix through its processor: the cells of its image tokens in the
    original pixels, the view, and the processor's output (prefix ids, pixels)."""
    return kind_of(model).cells(model, image, image_id)


def pad_sequences(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` [B, T_max]."""
    t_max = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), t_max), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), t_max, dtype=torch.long)
    for b, sequence in enumerate(sequences):
        ids[b, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[b, :len(sequence)] = 1
    return {"input_ids": ids, "attention_mask": mask}


__all__ = ["DecoderFamily", "ImageCells", "ViewMap", "Template", "image_cells", "load_processor"]
