"""Tiny random decoder VLMs (LLaVA, Qwen2-VL, PaliGemma) with real processors and a byte-level BPE tokenizer built
in memory: hidden size 32, 2 layers; nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a man in a red shirt rides a brown horse near the blue car on the street two dogs play with the ball "
         "woman girl boy sits stands holds dog cat grass water snow tree building").split()
SPECIAL = ["<pad>", "<s>", "</s>", "<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>",
           "<|im_end|>", "<unk>"]


def byte_level_tokenizer():
    """A GPT-2-style byte-level BPE fast tokenizer over the world's words (ids 0–9 the special tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(WORDS)] * 20 + ["USER: ASSISTANT: caption en system user assistant "
                                                          "You are a helpful assistant.\n"] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[3:9]})
    return tokenizer


def token(tokenizer, text: str) -> int:
    return tokenizer.convert_tokens_to_ids(text)


TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=1024)


def tiny_llava(image_size: int = 56, patch: int = 14, pad: bool = False, layers: int = 2):
    """LLaVA with a CLIP tower over ``image_size``² (a (image_size/patch)² grid) and its real processor."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=32)
    text = dict(TEXT, model_type="llama", vocab_size=len(tokenizer), num_hidden_layers=layers)
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
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from vb_probe.families.decoder.prompts import Qwen2VLPrompts

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
    model.processor = Qwen2VLPrompts(processor, tokenizer)
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


BUILDERS = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "paligemma": tiny_paligemma}


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


REAL = Path(__file__).parent / "data" / "realconfigs"  # stored copies of public checkpoints' files (SOURCES.md)
SHRUNK_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2)


def real_settings(kind: str, folder: Path) -> Path:
    """A checkpoint folder with a public checkpoint's own processor, tokenizer and chat template files and its
    config.json with depth and width shrunk (random weights): ``llava`` (llava-hf/llava-1.5-7b-hf) or ``qwen2_vl``
    (Qwen/Qwen2-VL-2B-Instruct)."""
    import json
    import shutil

    source = REAL / {"llava": "llava-1.5-7b-hf", "qwen2_vl": "qwen2-vl-2b-instruct"}[kind]
    folder.mkdir(parents=True)
    for path in source.iterdir():
        if path.name != "config.json":
            shutil.copy(path, folder / path.name)
    config = json.loads((source / "config.json").read_text())
    torch.manual_seed(0)
    if kind == "llava":
        from transformers import LlavaConfig, LlavaForConditionalGeneration

        config["text_config"].update(SHRUNK_TEXT)
        config["vision_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       projection_dim=32)
        config["vision_feature_layer"] = -1
        model = LlavaForConditionalGeneration(LlavaConfig(**config))
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        config.update(SHRUNK_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]})
        config["vision_config"].update(depth=1, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**config))
    from vb_probe.families import quiet_loading

    with quiet_loading():
        model.save_pretrained(folder)
    return folder
