"""Decoder vision-language models as one model family: LLaVA-1.5, Qwen2-VL and PaliGemma, transformers' own
``*ForConditionalGeneration`` classes (not re-implemented), loaded from a folder, a hub id or an object.

The image comes first, then the caption in the model's own prompt template (:mod:`.prompts`); each caption word's
last sub-word is a query, the image tokens are the grid cells its processor makes (:mod:`.geometry`). Attention is
read by row capture (:mod:`.rows`) on the language model only: sdpa's output unchanged, and only the query rows of
every layer through the model file's own eager code, so memory is ``queries × heads × sequence`` a layer, never the
full maps (a 7B model probes on one GPU in bf16; a larger one loads across devices with ``device_map``). Patches are
scored by the pointing rule.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vb_probe.errors import CheckpointError, DataError, VbProbeError
from vb_probe.families import FamilyBase, Site, items_image_tokens, pin, register_family
from vb_probe.families.base import settings_json
from vb_probe.families.decoder.geometry import ImageCells, ViewMap, cell_boxes, llava_view, squashed_view
from vb_probe.families.decoder.localization import LocalizationTally
from vb_probe.families.decoder.prompts import (
    Qwen2VLPrompts,
    Template,
    caption_tokens,
    preset_template,
    prompt_problem,
    prompt_tokens,
)
from vb_probe.families.decoder.rows import ablate, capture_rows, register
from vb_probe.families.loading import load_pretrained

MODEL_CLASSES = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
                 "paligemma": "PaliGemmaForConditionalGeneration"}


def load_processor(folder: Path, model_type: str):
    """The checkpoint's own processor. Qwen2-VL's full processor needs torchvision (its video half); without it,
    its image processor and tokenizer with the same prompt expansion (:class:`Qwen2VLPrompts`)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(str(folder)), None
    except Exception as exc:  # many types: a missing file, a missing optional dependency
        if "torchvision" in repr(exc) or "torchvision" in repr(exc.__cause__):
            raise CheckpointError(f"{folder}: its processor cannot load: the installed torchvision does not match "
                                  "torch (a CUDA build beside a CPU torch, or another release); uninstall torchvision "
                                  "or install the one built for this torch") from None
        if model_type != "qwen2_vl":
            raise CheckpointError(f"{folder}: cannot load its processor ({type(exc).__name__}); a {model_type} "
                                  "checkpoint needs its preprocessor_config.json and tokenizer files") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        prompts = Qwen2VLPrompts(AutoImageProcessor.from_pretrained(str(folder)), tokenizer,
                                 getattr(tokenizer, "chat_template", None))
    except Exception as exc:
        raise CheckpointError(f"{folder}: cannot load its image processor and tokenizer ({type(exc).__name__}); a "
                              "qwen2_vl checkpoint needs preprocessor_config.json and tokenizer files") from None
    return prompts, ("Qwen2-VL's full processor needs torchvision (pip install 'vb-probe[qwen2vl]'); its image "
                     "processor and tokenizer are used, with the processor's own image-token expansion")


@register_family
class DecoderFamily(FamilyBase):
    """LLaVA-1.5, Qwen2-VL, PaliGemma: one site, the language model's self-attention of every layer."""

    name = "decoder"
    model_type = "llava"
    model_types = tuple(MODEL_CLASSES)
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
            model_class = getattr(transformers, MODEL_CLASSES[config.model_type])
            options = {"dtype": dtype} if dtype is not None else {}
            if device_map is not None:
                try:
                    import accelerate  # noqa: F401
                except ImportError:
                    raise VbProbeError("--device-map: needs accelerate (pip install 'vb-probe[scale]')") from None
                options["device_map"] = device_map
            model, notes = load_pretrained(model_class, Path(source), attention="sdpa", **options)
            processor, note = load_processor(Path(source), config.model_type)
            pin(model, checkpoint_path=Path(source), load_notes=notes + ([note] if note else []), processor=processor)
        else:
            model = pin(source)
            if model.processor is None:
                if model.checkpoint_path is None:
                    raise CheckpointError(f"{type(model).__name__}: a model in memory needs its processor: set "
                                          "model.processor (transformers' AutoProcessor of its checkpoint)")
                model.processor, _ = load_processor(model.checkpoint_path, model.config.model_type)
        if model.prompt_template is None:  # the model's own chat template, rendered once (--prompt sets another)
            self.use_prompt(model, None)
        model.set_attn_implementation({"text_config": register(), "vision_config": "sdpa"})
        return model.eval()

    def prompt_problem(self, model_type: str, prompt: str | None) -> str | None:
        return prompt_problem(model_type, prompt)

    def use_prompt(self, model, prompt: str | None) -> None:
        """``chat`` (None) the processor's chat template, ``plain``, ``kang`` or a text with ``{image}`` and
        ``{caption}`` (:mod:`.prompts`); rendered once here, read by every image and caption after."""
        model.prompt_template = preset_template(model.config.model_type, model.processor, prompt)
        if model.prompt_template.note and model.prompt_template.note not in model.load_notes:
            model.load_notes.append(model.prompt_template.note)

    def ablate_heads(self, model, heads):
        """Through the registered attention function (:func:`.rows.ablate`): the heads' outputs zeroed before
        each layer's output projection."""
        from vb_probe.families.ablation import heads_by_layer

        by_layer = heads_by_layer(heads, self.sites(model)[0].shape)
        config = model.config.get_text_config()
        if config._attn_implementation != register():  # a model loaded elsewhere: its text attention ours
            model.set_attn_implementation({"text_config": register(), "vision_config": "sdpa"})
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
        ``localization_prompts`` entity queries of the probed split (:mod:`.localization`)."""
        return LocalizationTally(options.get("localization_prompts", 500) if pass_name == "main" else 0)

    def summary_lines(self, result) -> list[str]:
        block = result.extras.get(LocalizationTally.key)
        return LocalizationTally.lines(block) if block else []

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
        text = model.config.text_config
        return [Site("self", text.num_hidden_layers, text.num_attention_heads)]

    def prepare(self, model, store, options: dict) -> dict:
        if store.kind != "pixels":
            raise DataError(f"{options.get('features') or store.source}: a {model.config.model_type} model reads "
                            "pixels, not region features; pass --images FOLDER")
        if options.get("mask", "posthoc") != "posthoc":
            raise VbProbeError(f"--mask {options['mask']}: decoder models are probed post hoc only; use --mask posthoc")
        kind = model.config.model_type
        if kind == "llava" and getattr(model.config, "vision_feature_select_strategy", "default") != "default":
            raise VbProbeError(f"{model.checkpoint_path or 'the model'}: vision_feature_select_strategy "
                               f"{model.config.vision_feature_select_strategy!r}: only 'default' (LLaVA-1.5's, one token "
                               "per patch) is supported")
        check_processor_fits(model)
        template = model.prompt_template
        processor = model.processor.image_processor
        keep = ("size", "crop_size", "do_center_crop", "do_pad", "patch_size", "merge_size", "min_pixels",
                "max_pixels", "resample")
        facts = {"model_type": kind,
                 "image_processor": {k: settings_json(getattr(processor, k)) for k in keep if hasattr(processor, k)},
                 "prompt": {"preset": template.preset, "prefix": template.prefix, "suffix": template.suffix,
                            "caption_is_suffix": template.caption_is_suffix},
                 "attention": "row capture (sdpa output, query rows through the model's eager code)"}
        if kind == "llava" and getattr(processor, "do_center_crop", True) and not getattr(processor, "do_pad", False):
            note = ("LLaVA's processor centre-crops the image to a square: phrases whose gold boxes all lie in the "
                    "cropped-away band are skipped as outside_view (set do_pad in the processor to see it all)")
            if note not in model.load_notes:
                model.load_notes.append(note)
        return facts

    def text_limit(self, model) -> int:
        return int(getattr(model.config.text_config, "max_position_embeddings", 4096))

    def image_size_problem(self, model, width: int, height: int) -> str | None:
        """Qwen2-VL's ``smart_resize`` refuses aspect ratios beyond 200:1 (asked of its own code); LLaVA's processor
        resizes the short side to 336 before its crop, so a 20000 × 10 image becomes 672000 × 336 pixels (2.5 GB):
        refused above :data:`MAX_RESIZED_PIXELS`."""
        kind = model.config.model_type
        if kind == "qwen2_vl":
            try:
                qwen_grid(model.processor.image_processor, width, height)
            except ValueError as exc:
                return f"Qwen2-VL's processor cannot take it ({' '.join(str(exc).split())[:100]}); crop it nearer a square"
        if kind == "llava":
            resized_h, resized_w = _resized_size(model.processor.image_processor, width, height)
            if resized_h * resized_w > MAX_RESIZED_PIXELS or min(resized_h, resized_w) < 1:
                return (f"LLaVA's processor would resize it to {resized_w} × {resized_h} pixels "
                        f"({resized_w * resized_h * 12 / 2**30:.1f} GB) before its crop; crop it nearer a square")
        return None

    def sequence_note(self, model, sizes: list[tuple[int, int]]) -> str | None:
        """The longest prompt the images make (image tokens + the template + a caption of up to 64 tokens),
        estimated before the first forward from the processor's own sizing: refused past the model's positions, a
        note past :data:`LONG_SEQUENCE` tokens."""
        if not sizes:
            return None
        tokens = max(image_token_count(model, width, height) for width, height in sizes)
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
        template = model.prompt_template
        rows = items_image_tokens(self, model, items, store, ImageCells)
        sequences, token_types, word_positions, caption_spans = [], [], [], []
        for item, cells in zip(items, rows):
            if template.caption_is_suffix:  # PaliGemma: the caption is a second sequence, as its processor makes it
                prefix = cells.processed["input_ids"][0].tolist()
                caption = caption_tokens(tokenizer, list(item.words), max_text_len)
                tokens = prefix + caption.input_ids + [tokenizer.eos_token_id]
                positions = [None if p is None else len(prefix) + p for p in caption.word_last]
                types = [0] * len(prefix) + [1] * (len(tokens) - len(prefix))
                span = (len(prefix) + caption.caption[0], len(prefix) + caption.caption[1])
            else:  # one string, the image placeholder expanded to the image's tokens as the processor expands it
                expanded = template.prefix.replace(template.placeholder, template.placeholder * len(cells.boxes))
                prompt = prompt_tokens(tokenizer, expanded, list(item.words), template.suffix, max_text_len)
                tokens, positions, types = prompt.input_ids, prompt.word_last, [0] * len(prompt.input_ids)
                span = prompt.caption
            caption_spans.append(span)
            sequences.append(tokens)
            word_positions.append(positions)
            token_types.append(types)
        inputs = pad_sequences(sequences, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        kind = model.config.model_type
        if kind == "paligemma":
            inputs["token_type_ids"] = pad_sequences(token_types, 1)["input_ids"]
        image_id = image_token_id(model)
        if kind == "qwen2_vl":
            inputs["pixel_values"] = torch.cat([c.processed["pixel_values"] for c in rows])
            inputs["image_grid_thw"] = torch.cat([c.processed["image_grid_thw"] for c in rows])
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
        else:
            inputs["pixel_values"] = torch.cat([c.processed["pixel_values"] for c in rows])
        positions = [(torch.tensor(s) == image_id).nonzero().flatten() for s in sequences]
        r_max = max(len(p) for p in positions)
        image_positions = torch.zeros(len(rows), r_max, dtype=torch.long)
        for b, (p, cells) in enumerate(zip(positions, rows)):
            if len(p) != len(cells.boxes):
                raise DataError(f"image {cells.image_id}: the prompt holds {len(p)} image tokens but the processor's "
                                f"grid has {len(cells.boxes)} cells; the processor does not match the model")
            image_positions[b, :len(p)] = p
        return layout(items, word_positions, [c.boxes for c in rows], [None] * len(rows), inputs,
                      views=[c.seen for c in rows],
                      grids=torch.tensor([c.grid for c in rows], dtype=torch.long), image_positions=image_positions,
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
        for layer in range(site.layers):
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
        twin.set_attn_implementation({"text_config": register(), "vision_config": "sdpa"})
        return twin


MAX_RESIZED_PIXELS = 1 << 26  # 67 M pixels (0.8 GB in float32 RGB): the most a processor may make of one image
LONG_SEQUENCE = 4096  # image tokens an image beyond which a run is said to be long


def check_processor_fits(model) -> None:
    """The processor makes what the model takes, checked before the first forward (one line naming the setting):
    the prompt's image placeholder is the model's image token, LLaVA's pixels are the vision tower's square,
    PaliGemma's ``image_seq_length`` is its tower's patch count, Qwen2-VL's patch and merge sizes are its tower's."""
    from PIL import Image

    config, kind = model.config, model.config.model_type
    where = model.checkpoint_path or "the model"
    processor = model.processor
    tokenizer = processor.tokenizer
    placeholder = model.prompt_template.placeholder
    token = tokenizer.convert_tokens_to_ids(placeholder)
    if token != image_token_id(model):
        raise VbProbeError(f"{where}: the config's image token id is {image_token_id(model)} but the tokenizer's "
                           f"{placeholder} is {token}; pass the config.json and tokenizer files saved together")
    image_processor = processor.image_processor
    vision = config.vision_config
    if kind == "llava":
        pixels = tuple(image_cells_pixels(processor, Image.new("RGB", (400, 300))))
        if pixels != (vision.image_size, vision.image_size):
            raise VbProbeError(f"{where}: its processor makes {pixels[1]} × {pixels[0]} pixels of a 400 × 300 image but "
                               f"the vision tower takes {vision.image_size} × {vision.image_size} (do_center_crop, "
                               "crop_size or do_pad in preprocessor_config.json); pass the processor saved with the "
                               "model")
    elif kind == "paligemma":
        expected = (vision.image_size // vision.patch_size) ** 2
        if int(processor.image_seq_length) != expected:
            raise VbProbeError(f"{where}: its processor's image_seq_length is {processor.image_seq_length} but the vision "
                               f"tower makes {expected} tokens ({vision.image_size}² / {vision.patch_size}²); pass the "
                               "processor saved with the model")
    elif kind == "qwen2_vl":
        theirs = (image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size)
        ours = (vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size)
        if tuple(theirs) != tuple(ours):
            raise VbProbeError(f"{where}: its processor's patch, merge and temporal sizes are {theirs} but the vision "
                               f"tower's are {ours}; pass the processor saved with the model")


def image_cells_pixels(processor, image) -> tuple[int, int]:
    """(height, width) of the pixels the processor makes of ``image``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tuple(processor.image_processor(image, return_tensors="pt")["pixel_values"].shape[-2:])


def qwen_grid(image_processor, width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of Qwen2-VL's patches for a ``width`` × ``height`` image: the processor module's own
    ``smart_resize`` with the processor's factor and pixel bounds (no pixels made)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize  # no torchvision needed

    factor = image_processor.patch_size * image_processor.merge_size
    size = image_processor.size
    resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"],
                                        max_pixels=size["longest_edge"])
    return resized_h // image_processor.patch_size, resized_w // image_processor.patch_size


def image_token_count(model, width: int, height: int) -> int:
    """How many image tokens the processor makes of a ``width`` × ``height`` image, from its own sizing."""
    kind = model.config.model_type
    if kind == "qwen2_vl":
        rows, cols = qwen_grid(model.processor.image_processor, width, height)
        return rows * cols // model.processor.image_processor.merge_size ** 2
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def image_token_id(model) -> int:
    config = model.config
    value = getattr(config, "image_token_id", None)
    return int(value if value is not None else config.image_token_index)


def pad_sequences(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` [B, T_max]."""
    t_max = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), t_max), pad_id, dtype=torch.long)
    mask = torch.zeros(len(sequences), t_max, dtype=torch.long)
    for b, sequence in enumerate(sequences):
        ids[b, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[b, :len(sequence)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def image_cells(model, image, image_id: str) -> ImageCells:
    """``image`` (RGB PIL) in the model's prompt prefix through its processor: the grid cells of its image tokens
    in the original pixels, the view, and the processor's output (prefix ids, pixels)."""
    kind = model.config.model_type
    processor = model.processor
    template = model.prompt_template
    with warnings.catch_warnings():  # PaliGemma's processor trips numpy 2's copy-keyword deprecation: not ours
        warnings.simplefilter("ignore", DeprecationWarning)
        processed = dict(processor(images=image, text=template.prefix, return_tensors="pt"))
    width, height = image.size
    image_processor = processor.image_processor
    if kind == "qwen2_vl":
        _, grid_h, grid_w = (int(v) for v in processed["image_grid_thw"][0])
        merge, patch = image_processor.merge_size, image_processor.patch_size
        grid = (grid_h // merge, grid_w // merge)
        view = squashed_view(width, height, (grid_h * patch, grid_w * patch))
    else:
        side = int(round(_count_image_tokens(processed, model) ** 0.5))
        grid = (side, side)
        if kind == "llava":
            view = llava_view(image_processor, width, height, _resized_size(image_processor, width, height))
        else:
            view = squashed_view(width, height, tuple(processed["pixel_values"].shape[-2:]))
    boxes = cell_boxes(grid, view)
    return ImageCells(image_id, boxes, np.zeros((len(boxes), 0), np.float32), None, float(width), float(height),
                      view.seen(), grid, view, processed)


def _count_image_tokens(processed: dict, model) -> int:
    return int((processed["input_ids"][0] == image_token_id(model)).sum())


_RESIZED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # processor → (width, height) → size


def _resized_size(image_processor, width: int, height: int) -> tuple[int, int]:
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


__all__ = ["DecoderFamily", "ImageCells", "ViewMap", "Template", "image_cells", "load_processor"]
