"""Tiny random models of every family, built with transformers' own classes and processors: the decoder VLMs
(LLaVA, Qwen2-VL, PaliGemma: hidden size 32, 2 layers, a byte-level BPE tokenizer trained here) and, through
:func:`write_tiny`, a checkpoint folder of any family (``vb-train tiny --family llava --out DIR``) with the public
checkpoints' processor settings, for trying the commands offline. Random weights: the pipeline is exercised, not the
science. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a man in a red shirt rides a brown horse near the blue car on the street two dogs play with the ball "
         "woman girl boy sits stands holds dog cat grass water snow tree building").split()
SPECIAL = ["<pad>", "<s>", "</s>", "<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>",
           "<|im_end|>", "<unk>"]


def byte_level_tokenizer(words: tuple[str, ...] | list[str] = WORDS, named: dict[str, str] | None = None):
    """A GPT-2-style byte-level BPE fast tokenizer over ``words`` (ids 0–9 the special tokens); ``named`` special
    tokens a model's processor reads by attribute (Gemma 3's ``image_token``, ``boi_token`` …) added after the
    vocabulary, so the other ids stay where they are."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(words)] * 20 + ["USER: ASSISTANT: caption en system user assistant "
                                                          "You are a helpful assistant.\n"] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[3:9]})
    if named:
        tokenizer.add_special_tokens({"additional_special_tokens": list(named.values())}, replace_extra_special_tokens=False)
        tokenizer._set_model_specific_special_tokens(special_tokens=named)  # what extra_special_tokens={…} sets on load
    return tokenizer


def token(tokenizer, text: str) -> int:
    return tokenizer.convert_tokens_to_ids(text)


TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)


def tiny_llava(image_size: int = 56, patch: int = 14, pad: bool = False, layers: int = 2, heads: int = 4,
               hidden: int | None = None):
    """LLaVA with a CLIP tower over ``image_size``² (a (image_size/patch)² grid) and its real processor; its
    language model ``layers`` × ``heads`` (width 8 a head, 32 at least: a 40 × 40 model is 1,600 heads of 2), or
    ``hidden`` wide (a residual stream wide enough for a 20 × RMS massive value: √D ≥ 20 needs D ≥ 400)."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=32)
    text = dict(TEXT, model_type="llama", vocab_size=len(tokenizer), num_hidden_layers=layers)
    if heads != TEXT["num_attention_heads"]:
        text.update(num_attention_heads=heads, num_key_value_heads=heads, hidden_size=max(32, 2 * heads))
    if hidden is not None:
        text.update(hidden_size=hidden)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=token(tokenizer, "<image>"), vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    if pad:
        from transformers import LlavaImageProcessorPil

        image_processor = LlavaImageProcessorPil(size={"shortest_edge": image_size}, do_pad=True,
                                                 crop_size={"height": image_size, "width": image_size})
    model.processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                     vision_feature_select_strategy="default", image_token="<image>",
                                     num_additional_image_tokens=1)
    return model


def tiny_qwen2_vl(max_pixels: int = 112 * 112, layers: int = 2):
    """Qwen2-VL (patch 14, merge 2: a token per 28 × 28 cell) with its image processor and the prompt expansion."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil, Qwen2VLProcessor

    from vb_probe.families.decoder.processors import images_only

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=len(tokenizer), num_hidden_layers=layers, bos_token_id=1, eos_token_id=2,
                rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, in_chans=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=token(tokenizer, "<|image_pad|>"),
                           video_token_id=token(tokenizer, "<|im_end|>"),
                           vision_start_token_id=token(tokenizer, "<|vision_start|>"))
    model = Qwen2VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=max_pixels)
    model.processor = images_only(Qwen2VLProcessor)(image_processor=processor, tokenizer=tokenizer, video_processor=None)
    return model


def tiny_qwen2_5_vl(max_pixels: int = 112 * 112, layers: int = 2):
    """Qwen2.5-VL (patch 14, merge 2; window attention in its vision tower, one full-attention block) with its own
    processor, without its video half."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    from vb_probe.families.decoder.processors import images_only

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=len(tokenizer), num_hidden_layers=layers, bos_token_id=1, eos_token_id=2,
                rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
    vision = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=token(tokenizer, "<|image_pad|>"),
                              video_token_id=token(tokenizer, "<|im_end|>"),
                              vision_start_token_id=token(tokenizer, "<|vision_start|>"))
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=max_pixels)
    model.processor = images_only(Qwen2_5_VLProcessor)(image_processor=processor, tokenizer=tokenizer,
                                                       video_processor=None)
    return model


def tiny_qwen3_vl(max_pixels: int = 128 * 128, layers: int = 2):
    """Qwen3-VL (patch 16, merge 2: a token per 32 × 32 cell; DeepStack features into the first layers) with its own
    processor, without its video half."""
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor

    from vb_probe.families.decoder.processors import images_only

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=len(tokenizer), num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, head_dim=8,
                rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [2, 1, 1],
                                 "mrope_interleaved": True})
    vision = dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                  deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=token(tokenizer, "<|image_pad|>"),
                           video_token_id=token(tokenizer, "<|im_end|>"),
                           vision_start_token_id=token(tokenizer, "<|vision_start|>"),
                           vision_end_token_id=token(tokenizer, "<|vision_end|>"))
    model = Qwen3VLForConditionalGeneration(config).eval()
    processor = Qwen2VLImageProcessorPil(patch_size=16, min_pixels=32 * 32, max_pixels=max_pixels)
    model.processor = images_only(Qwen3VLProcessor)(image_processor=processor, tokenizer=tokenizer,
                                                    video_processor=None)
    return model


def tiny_paligemma(image_size: int = 32, patch: int = 8, layers: int = 2):
    """PaliGemma with a SigLIP tower over ``image_size``² and its real processor."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessorPil

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=len(tokenizer), head_dim=8, model_type="gemma", num_hidden_layers=layers)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  image_size=image_size, patch_size=patch)
    config = PaliGemmaConfig(text_config=text, vision_config=vision, image_token_id=token(tokenizer, "<image>"),
                             projection_dim=32)
    model = PaliGemmaForConditionalGeneration(config).eval()
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch) ** 2
    model.processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model


# llava-hf/llava-v1.6-*'s image_grid_pinpoints, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
# scaled with the tower (336 → image_size)
LLAVA_NEXT_PINPOINTS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))


def tiny_llava_next(image_size: int = 56, patch: int = 14, layers: int = 2):
    """LLaVA-NeXT with a CLIP tower over ``image_size``² (a (image_size/patch)² grid a view), anyres over the
    public checkpoints' pinpoints scaled to it, and its real processor (LlavaNextImageProcessor)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    pinpoints = [[h * image_size, w * image_size] for h, w in LLAVA_NEXT_PINPOINTS]
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=32)
    text = dict(TEXT, model_type="llama", vocab_size=len(tokenizer), num_hidden_layers=layers,
                max_position_embeddings=2048)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=token(tokenizer, "<image>"),
                             vision_feature_layer=-1, image_grid_pinpoints=pinpoints)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": image_size}, image_grid_pinpoints=pinpoints,
                                                 crop_size={"height": image_size, "width": image_size})
    model.processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                         vision_feature_select_strategy="default", image_token="<image>",
                                         num_additional_image_tokens=1)
    return model


def tiny_llava_onevision(image_size: int = 56, patch: int = 7, most_tiles: int = 1, layers: int = 2, grid_max: int = 3):
    """LLaVA-OneVision with a SigLIP tower over ``image_size``² (8 × 8 patches a view, read ``full``: no CLS), tiles
    over every grid of 1–``grid_max`` × 1–``grid_max`` tiles (OneVision's 1–6 × 1–6 of 384², scaled),
    ``anyres_max_{most_tiles}`` (the
    public checkpoints' 9; 1 here, so that a tiled canvas is shrunk bilinearly as a large image's is there), and
    its real processor without its video half."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
    )

    from vb_probe.families.decoder.processors import images_only

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    pinpoints = [[h * image_size, w * image_size] for h in range(1, grid_max + 1) for w in range(1, grid_max + 1)]
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, image_size=image_size, patch_size=patch)
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tokenizer), num_hidden_layers=layers,
                max_position_embeddings=2048)
    aspect = f"anyres_max_{most_tiles}"
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=token(tokenizer, "<image>"),
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  image_grid_pinpoints=pinpoints, vision_aspect_ratio=aspect)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size},
                                                      image_grid_pinpoints=pinpoints)
    model.processor = images_only(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
        num_image_tokens=(image_size // patch) ** 2, vision_feature_select_strategy="full", image_token="<image>",
        vision_aspect_ratio=aspect)
    return model


MLLAMA_TOKENS = ["<|image|>", "<|python_tag|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def tiny_mllama(tile: int = 56, patch: int = 14, max_tiles: int = 4, layers: int = 3):
    """Llama 3.2 Vision with a vision tower over ``tile``² tiles of ``patch``-pixel patches (4 × 4 and a class
    token a tile, up to ``max_tiles`` tiles: its 560² and 4, scaled), a language model of ``layers`` layers whose
    second is a cross-attention layer, and its real processor (MllamaProcessor, MllamaImageProcessor)."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": MLLAMA_TOKENS}, replace_extra_special_tokens=False)
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=4,
                  image_size=tile, patch_size=patch, max_num_tiles=max_tiles, vision_output_dim=64,
                  intermediate_layers_indices=[0])
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1], max_position_embeddings=1024,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=token(tokenizer, "<|image|>"))
    model = MllamaForConditionalGeneration(config).eval()
    image_processor = MllamaImageProcessorPil(size={"height": tile, "width": tile}, max_image_tiles=max_tiles)
    model.processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model


INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}


def tiny_internvl(tile: int = 56, patch: int = 7, max_patches: int = 12, layers: int = 2):
    """InternVL with a vision tower over ``tile``² tiles of ``patch``-pixel patches (8 × 8, pixel-shuffled to 4 × 4
    tokens a tile), its real processor (InternVLProcessor with GotOcr2ImageProcessor, tiles of ``tile``² up to
    ``max_patches``, and a thumbnail), without its video half."""
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor

    from vb_probe.families.decoder.processors import images_only

    tokenizer = byte_level_tokenizer(named=INTERNVL_TOKENS)
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  image_size=[tile, tile], patch_size=[patch, patch])
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tokenizer), num_hidden_layers=layers)
    tokens = (tile // patch // 2) ** 2
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.context_image_token_id,
                            image_seq_length=tokens, downsample_ratio=0.5)
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_patches)
    model.processor = images_only(InternVLProcessor)(image_processor=image_processor, tokenizer=tokenizer,
                                                     video_processor=None, image_seq_length=tokens)
    return model


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def tiny_idefics3(tile: int = 56, patch: int = 7, tiles_a_side: int = 4, layers: int = 2, smolvlm: bool = False,
                  scale: int = 2):
    """Idefics3 (or SmolVLM) with a vision tower over ``tile``² tiles of ``patch``-pixel patches (8 × 8,
    pixel-shuffled by ``scale`` to 4 × 4 tokens a tile: Idefics3's 2, SmolVLM-Instruct's 3), images resized to a
    longest edge of ``tiles_a_side`` tiles (as Idefics3's 1456 = 4 × 364), and its real processor."""
    import transformers

    name = "SmolVLM" if smolvlm else "Idefics3"
    tokenizer = byte_level_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS}, replace_extra_special_tokens=False)
    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=tile,
                  patch_size=patch)
    text = dict(TEXT, model_type="llama", vocab_size=len(tokenizer), num_hidden_layers=layers)
    config = getattr(transformers, f"{name}Config")(vision_config=vision, text_config=text, scale_factor=scale,
                                                      image_token_id=token(tokenizer, "<image>"))
    model = getattr(transformers, f"{name}ForConditionalGeneration")(config).eval()
    image_processor = getattr(transformers, f"{name}ImageProcessorPil")(
        size={"longest_edge": tiles_a_side * tile}, max_image_size={"longest_edge": tile}, do_image_splitting=True)
    tokens = (tile // patch // scale) ** 2
    if smolvlm:
        from vb_probe.families.decoder.processors import images_only

        model.processor = images_only(transformers.SmolVLMProcessor)(image_processor=image_processor,
                                                                     tokenizer=tokenizer, video_processor=None,
                                                                     image_seq_len=tokens)
    else:
        model.processor = transformers.Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                                         image_seq_len=tokens)
    return model


def tiny_smolvlm(**options):
    """SmolVLM: Idefics3's layout with its own classes and processor (:func:`tiny_idefics3`)."""
    return tiny_idefics3(smolvlm=True, **options)


GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "image_token": "<image_soft_token>", "eoi_token": "<end_of_image>"}


def tiny_gemma3(image_size: int = 64, patch: int = 8, tokens: int = 16, layers: int = 2, sliding_window: int = 8,
                pan_and_scan: bool = False):
    """Gemma 3 with a SigLIP tower over ``image_size``² pooled to ``tokens`` image tokens (4 × 4 of 8 × 8 patches),
    a sliding-window layer (window ``sliding_window``, shorter than a prompt) then a global one, and its real
    processor; ``pan_and_scan`` saves the processor's pan-and-scan on (crops of 32 pixels at least)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tokenizer = byte_level_tokenizer(named=GEMMA3_TOKENS)
    torch.manual_seed(0)
    text = dict(TEXT, vocab_size=len(tokenizer), head_dim=8, num_hidden_layers=layers, query_pre_attn_scalar=8,
                sliding_window=sliding_window,
                layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)])
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, image_size=image_size, patch_size=patch)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens,
                          boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
                          image_token_index=tokenizer.image_token_id)
    model = Gemma3ForConditionalGeneration(config).eval()
    options = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=32) if pan_and_scan else {}
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, **options)
    model.processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens)
    return model


BUILDERS = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "paligemma": tiny_paligemma, "qwen2_5_vl": tiny_qwen2_5_vl,
            "qwen3_vl": tiny_qwen3_vl, "gemma3": tiny_gemma3,
            "llava_next": tiny_llava_next, "internvl": tiny_internvl, "idefics3": tiny_idefics3,
            "smolvlm": tiny_smolvlm, "llava_onevision": tiny_llava_onevision,
            "mllama": tiny_mllama}


def save_model_folder(kind: str, folder: Path, shard: str | None = None, **options) -> Path:
    """A tiny model of ``kind`` saved as transformers saves it, with its processor (or its image processor and
    tokenizer); ``shard``: a max_shard_size, for a sharded checkpoint."""
    from vb_probe.families import quiet_loading

    model = BUILDERS[kind](**options)
    with quiet_loading():  # no progress bar among the messages the tests read
        model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    processor = model.processor
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(folder)
    else:
        processor.image_processor.save_pretrained(folder)
        processor.tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------- a folder of any family

FAMILIES = ("visualbert", "lxmert", "vilt", "llava", "qwen2_vl", "paligemma")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def world_words(scenes: int = 200, seed: int = 0) -> list[str]:
    """Every word the built-in world's captions use (its first ``scenes`` scenes), in first-seen order."""
    from training.world.scenes import WorldGenerator

    generator, seen = WorldGenerator(seed), {}
    for index in range(scenes):
        for words, *_ in generator.scene(index).captions:
            for word in words:
                seen.setdefault(word.lower(), None)
    return list(seen)


def bert_tokenizer(folder: Path, words: list[str]):
    """A BERT WordPiece tokenizer whose vocabulary is the specials, ``words`` and every single character of them,
    saved into ``folder`` (vocab.txt and tokenizer files)."""
    from transformers import BertTokenizerFast

    characters = sorted({c for word in words for c in word} | set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'"))
    vocab = BERT_SPECIALS + sorted(set(words) - set(characters)) + characters + [f"##{c}" for c in characters]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def write_tiny(family: str, out: str | Path, *, seed: int = 0) -> Path:
    """A checkpoint folder of ``family`` (:data:`FAMILIES`) with random weights, 2 layers × 4 heads of width 32, the
    public checkpoints' processor settings (ViLT: shortest edge 384, 32-pixel patches; LLaVA-1.5: CLIP at 336², the
    centre crop; Qwen2-VL: its pixel bounds, 28-pixel cells; PaliGemma: 224², 256 tokens), and a tokenizer of the
    built-in world's words; region models read the world's region features (its feature width). Written whole
    (atomically): a folder that exists is refused."""
    from vb_probe.atomic import atomic_dir
    from vb_probe.errors import VbProbeError

    if family not in FAMILIES:
        raise VbProbeError(f"--family {family}: use one of {', '.join(FAMILIES)}")
    out = Path(out)
    if out.exists():
        raise VbProbeError(f"--out {out}: exists; choose a new folder for the tiny model (nothing was changed)")
    words = world_words()
    torch.manual_seed(seed)
    with atomic_dir(out, kind="checkpoint") as tmp:
        if family in ("visualbert", "lxmert", "vilt"):
            _write_bert_family(family, tmp, words)
        else:
            _write_decoder(family, tmp, words)
    return out


def _write_bert_family(family: str, folder: Path, words: list[str]) -> None:
    from training.world.scenes import FEATURE_DIM
    from vb_probe.families import quiet_loading

    tokenizer = bert_tokenizer(folder, words)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, intermediate_size=64)
    with quiet_loading():
        if family == "visualbert":
            from transformers import VisualBertConfig

            from vb_probe.families.visualbert.model import VisualBertModel

            model = VisualBertModel(VisualBertConfig(**shape, num_hidden_layers=2, visual_embedding_dim=FEATURE_DIM,
                                                     max_position_embeddings=128))
            model.save_pretrained(folder / "model")  # written whole, then moved beside the tokenizer
            for path in (folder / "model").iterdir():
                path.rename(folder / path.name)
            (folder / "model").rmdir()
        elif family == "lxmert":
            from transformers import LxmertConfig, LxmertModel

            LxmertModel(LxmertConfig(**shape, l_layers=1, x_layers=2, r_layers=1, visual_feat_dim=FEATURE_DIM,
                                     visual_pos_dim=4, max_position_embeddings=128)).save_pretrained(folder)
        else:
            from transformers import ViltConfig, ViltImageProcessorPil, ViltModel, ViltProcessor

            ViltModel(ViltConfig(**shape, num_hidden_layers=2, image_size=384, patch_size=32,
                                 max_position_embeddings=40)).save_pretrained(folder)
            ViltProcessor(image_processor=ViltImageProcessorPil(size={"shortest_edge": 384}, size_divisor=32),
                          tokenizer=tokenizer).save_pretrained(folder)


def _write_decoder(family: str, folder: Path, words: list[str]) -> None:
    from vb_probe.families import quiet_loading

    words = [*words, *WORDS]
    if family == "llava":
        model = _with_tokenizer(tiny_llava(image_size=336, patch=14), words)
    elif family == "qwen2_vl":
        model = _with_tokenizer(tiny_qwen2_vl(max_pixels=12845056), words)
        model.processor.image_processor.min_pixels = 3136  # Qwen2-VL-2B-Instruct's own bounds
        model.processor.image_processor.size = {"shortest_edge": 3136, "longest_edge": 12845056}
    else:
        model = _with_tokenizer(tiny_paligemma(image_size=224, patch=14), words)
    with quiet_loading():
        model.save_pretrained(folder)
    processor = model.processor
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(folder)
    else:  # Qwen2-VL without torchvision: its image processor and tokenizer, as the hub keeps them
        processor.image_processor.save_pretrained(folder)
        processor.tokenizer.save_pretrained(folder)


def _with_tokenizer(model, words: list[str]):
    """``model`` (a tiny decoder from the builders above) with its embeddings fitted to a tokenizer of ``words``."""
    tokenizer = byte_level_tokenizer(words)
    if len(tokenizer) != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.processor.tokenizer = tokenizer
    return model
