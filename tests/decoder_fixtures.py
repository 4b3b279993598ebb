"""Tiny random decoder VLMs (LLaVA, Qwen2-VL, PaliGemma) with real processors and a byte-level BPE tokenizer built
in memory (the builders are the package's, :mod:`training.tiny`), and folders with the public checkpoints' own
processor, tokenizer and chat template files (:func:`real_settings`); nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from training.tiny import (  # noqa: F401  (the tests' names for them)
    BUILDERS,
    SPECIAL,
    TEXT,
    WORDS,
    byte_level_tokenizer,
    save_model_folder,
    tiny_llava,
    tiny_paligemma,
    tiny_qwen2_vl,
    token,
)

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
