"""VisualBERT checkpoint folders in transformers' format, read and written without naming the model class (the
model module imports this one for its ``from_pretrained`` and ``save_pretrained``; this one imports no model: no
circle). A folder holds ``config.json`` (model_type ``visual_bert``) and ``model.safetensors`` or
``pytorch_model.bin``; task models prefix the encoder's keys with ``visual_bert.`` and their heads are set aside."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import VisualBertConfig

from vb_probe.atomic import atomic_dir
from vb_probe.errors import CheckpointError
from vb_probe.hub import read_config_json, weights_file

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Buffers some older checkpoints carry; they are derived, never learned.
_IGNORED_KEYS = ("embeddings.position_ids",)


# config.json fields that decide the model's shape: whole numbers of at least 1
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "visual_embedding_dim")
_PROBABILITY_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


def check_config_fields(raw: dict, path: Path) -> None:
    """Types and ranges of the fields a VisualBERT/BERT config.json must get right (one-line errors)."""
    from transformers.activations import ACT2FN

    def fail(key: str, expected: str) -> None:
        raise CheckpointError(f"{path}: {key} is {raw[key]!r}, expected {expected}; fix config.json "
                              "(or re-save the checkpoint)")

    for key in _SHAPE_FIELDS:
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] < 1):
            fail(key, "a whole number of at least 1")
    for key in _PROBABILITY_FIELDS:
        if key in raw and (not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool)
                           or not 0 <= raw[key] < 1):
            fail(key, "a probability in [0, 1)")
    if "layer_norm_eps" in raw and (not isinstance(raw["layer_norm_eps"], (int, float))
                                    or isinstance(raw["layer_norm_eps"], bool) or not 0 < raw["layer_norm_eps"] < 1):
        fail("layer_norm_eps", "a small positive number such as 1e-12")
    if "hidden_act" in raw and (not isinstance(raw["hidden_act"], str) or raw["hidden_act"] not in ACT2FN):
        fail("hidden_act", "an activation name such as 'gelu'")
    for key in ("bypass_transformer", "special_visual_initialize"):
        if key in raw and not isinstance(raw[key], bool):
            fail(key, "true or false")
    hidden, heads = raw.get("hidden_size", 768), raw.get("num_attention_heads", 12)
    if hidden % heads:
        raise CheckpointError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}; "
                              "fix config.json to match the weights")


def skeleton(model_class, config: VisualBertConfig, source: Path) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes the config implies, built on the meta device (no memory, whatever the config
    says), so a config that does not fit its weights is refused before anything is allocated."""
    try:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in model_class(config).state_dict().items()}
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: cannot build a model from it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120]}); fix config.json") from None


# An encoder weight that its config does not place (a layer beyond num_hidden_layers …) is an error, never set aside.
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.", "additional_layer.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupt files raise many different types
        raise CheckpointError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "the file is truncated or corrupt, copy or download it again"
        ) from None


def fit_state_dict(
    shapes: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor], source: Path, prefixes: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights of ``state`` (``prefixes`` stripped) that fill a model of ``shapes``, and the keys set aside
    (task heads). Raises CheckpointError naming missing keys, encoder keys the config does not describe, or
    mismatched shapes."""
    fitted: dict[str, torch.Tensor] = {}
    set_aside: list[str] = []
    for key, tensor in state.items():
        stripped = key
        for prefix in prefixes:
            if stripped.startswith(prefix):
                stripped = stripped[len(prefix):]
                break
        if stripped in shapes:
            fitted[stripped] = tensor
        elif stripped not in _IGNORED_KEYS:
            set_aside.append(key)
    missing = sorted(set(shapes) - set(fitted))
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise CheckpointError(
            f"{source}: {len(missing)} weights missing ({shown}); the file is not a VisualBERT/BERT encoder "
            "of this config — check the folder, or its config.json (num_hidden_layers, bypass_transformer)"
        )
    undescribed = [k for k in set_aside if k.startswith(_ENCODER_PREFIXES)
                   or any(k.startswith(p) and k[len(p):].startswith(_ENCODER_PREFIXES) for p in prefixes)]
    if undescribed:
        layers = [int(m.group(1)) for k in undescribed if (m := re.search(r"encoder\.layer\.(\d+)\.", k))]
        hint = (f" (the weights have layers up to {max(layers)}; num_hidden_layers must say {max(layers) + 1})"
                if layers else "")
        raise CheckpointError(
            f"{source}: {len(undescribed)} encoder weights that config.json does not describe, e.g. "
            f"{sorted(undescribed)[0]}{hint}; fix config.json to match the weights"
        )
    for key, tensor in fitted.items():
        if tuple(tensor.shape) != shapes[key]:
            raise CheckpointError(
                f"{source}: weight {key} has shape {tuple(tensor.shape)} but config.json implies "
                f"{shapes[key]}; fix config.json (e.g. visual_embedding_dim, vocab_size) to match the weights"
            )
    return fitted, set_aside


def check_finite_weights(state: dict[str, torch.Tensor], source: Path) -> None:
    """A NaN or infinite weight makes every attention row NaN and every argmax a meaningless pick: refused."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: weight {key} holds {count} NaN or infinite values; the checkpoint is "
                                  "damaged or its training diverged, use an earlier or another checkpoint")


def read_encoder(model_class, folder: Path, config_overrides: dict | None = None):
    """The encoder of a VisualBERT folder as a ``model_class`` (:class:`~.model.VisualBertModel`), with the whole
    state dict it came from (heads included) and the weight file: (model, state, weights)."""
    weights = weights_file(folder)
    raw = read_config_json(folder)
    if raw.get("model_type") != "visual_bert":
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type is {raw.get('model_type')!r}, expected 'visual_bert'; "
            "pass a VisualBERT checkpoint (a BERT folder initialises pre-training with "
            "`vb-train pretrain --set model.init=bert:<folder>`)"
        )
    merged = {**raw, **(config_overrides or {})}
    check_config_fields(merged, folder / "config.json")
    config = VisualBertConfig.from_dict(merged)
    shapes = skeleton(model_class, config, folder / "config.json")
    state = read_state_dict(weights)
    fitted, set_aside = fit_state_dict(shapes, state, weights, prefixes=("visual_bert.",))
    check_finite_weights(fitted, weights)
    model = model_class(config)
    model.load_state_dict(fitted, strict=True)
    heads = sorted({k.split(".")[0] for k in set_aside})
    model.load_notes = (
        [f"set aside {len(set_aside)} task-head weights ({', '.join(heads)}): the probe uses the encoder only"]
        if set_aside else []
    )
    model.checkpoint_path = folder
    return model, state, weights


def write_checkpoint_folder(path: str | Path, config: VisualBertConfig, state: dict[str, torch.Tensor],
                            architecture: str, tokenizer=None, extra_files: dict[str, str] | None = None) -> Path:
    """Atomically write ``config.json`` (with ``architectures``) + ``model.safetensors`` (+ tokenizer files and
    any extra text files): a folder transformers' ``from_pretrained`` loads as it is."""
    path = Path(path)
    config.architectures = [architecture]
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_dir(path, kind="checkpoint") as tmp:
        config.to_json_file(str(tmp / "config.json"))
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return path
