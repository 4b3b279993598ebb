"""Load and save VisualBERT checkpoints in transformers' folder format; initialise from a BERT folder.

A transformers folder holds ``config.json`` (model_type ``visual_bert``) and ``model.safetensors`` or
``pytorch_model.bin``. Task models (``VisualBertForQuestionAnswering`` …, e.g. the ``uclanlp/visualbert-*``
checkpoints) prefix the encoder's keys with ``visual_bert.``; their head weights are set aside and noted.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, VisualBertConfig

from vb_probe.atomic import atomic_dir
from vb_probe.errors import CheckpointError
from vb_probe.families.visualbert.model import VisualBertModel
from vb_probe.families.visualbert.pretraining import VisualBertForPreTraining
from vb_probe.hub import WEIGHT_FILES, read_config_json, weights_file  # noqa: F401  (re-exported)

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


def _skeleton(config: VisualBertConfig, source: Path) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes the config implies, built on the meta device (no memory, whatever the config
    says), so a config that does not fit its weights is refused before anything is allocated."""
    try:
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in VisualBertModel(config).state_dict().items()}
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{source}: cannot build a model from it ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:120]}); fix config.json") from None


# An encoder weight that its config does not place (a layer beyond num_hidden_layers …) is an error, never set aside.
_ENCODER_PREFIXES = ("embeddings.", "encoder.", "pooler.", "additional_layer.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or corrupt files raise many different types
        raise CheckpointError(
            f"{path}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "the file is truncated or corrupt, copy or download it again"
        ) from None


def _fit_state_dict(
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


def _load_encoder(folder: Path, config_overrides: dict | None = None
                  ) -> tuple[VisualBertModel, dict[str, torch.Tensor], Path]:
    """The encoder of a VisualBERT folder, with the whole state dict it came from (heads included)."""
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
    shapes = _skeleton(config, folder / "config.json")
    state = _read_state_dict(weights)
    fitted, set_aside = _fit_state_dict(shapes, state, weights, prefixes=("visual_bert.",))
    check_finite_weights(fitted, weights)
    model = VisualBertModel(config)
    model.load_state_dict(fitted, strict=True)
    heads = sorted({k.split(".")[0] for k in set_aside})
    model.load_notes = (
        [f"set aside {len(set_aside)} task-head weights ({', '.join(heads)}): the probe uses the encoder only"]
        if set_aside else []
    )
    model.checkpoint_path = folder
    return model, state, weights


def load_model(
    path: str | Path, *, device: str | torch.device | None = None, config_overrides: dict | None = None
) -> VisualBertModel:
    """Load a transformers VisualBERT folder into :class:`VisualBertModel`, in eval mode.

    ``model.load_notes`` lists what was set aside (task-head weights); ``model.checkpoint_path`` the folder.
    """
    model, _, _ = _load_encoder(Path(path), config_overrides)
    if device is not None:
        model.to(device)
    return model.eval()


def visual_config_from_bert(bert: BertConfig, visual_embedding_dim: int, **overrides) -> VisualBertConfig:
    """A VisualBERT config with the text side of ``bert`` and the given region feature width."""
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
              "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id")
    values = {f: getattr(bert, f) for f in fields}
    values.update(visual_embedding_dim=visual_embedding_dim)
    values.update(overrides)
    return VisualBertConfig(**values)


def init_from_bert(
    bert_folder: str | Path, visual_embedding_dim: int, **config_overrides
) -> VisualBertModel:
    """Build VisualBERT whose text side is a local BERT checkpoint (any BertModel folder).

    The visual projection starts random; the visual token-type and position embeddings are copied from
    the text ones (the paper's initialisation).
    """
    folder = Path(bert_folder)
    weights = weights_file(folder)
    raw = read_config_json(folder)
    if raw.get("model_type") not in ("bert", None):
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type is {raw.get('model_type')!r}, expected 'bert'; "
            "pass a BERT checkpoint folder such as bert-base-uncased"
        )
    check_config_fields(raw, folder / "config.json")
    config = visual_config_from_bert(BertConfig.from_dict(raw), visual_embedding_dim, **config_overrides)
    shapes = _skeleton(config, folder / "config.json")
    state = {}
    for key, tensor in _read_state_dict(weights).items():
        stripped = key[len("bert."):] if key.startswith("bert.") else key
        state[stripped] = tensor
    model = VisualBertModel(config)
    own = model.state_dict()
    visual_keys = [k for k in own if k.startswith(("embeddings.visual_", "additional_layer."))]
    for key in visual_keys:
        state.setdefault(key, own[key])  # kept from the random init; visual embeddings copied below
    missing_pooler = "pooler.dense.weight" not in state
    if missing_pooler:  # sentence-embedding checkpoints often drop the pooler; start it fresh
        state["pooler.dense.weight"], state["pooler.dense.bias"] = own["pooler.dense.weight"], own["pooler.dense.bias"]
    fitted, set_aside = _fit_state_dict(shapes, state, weights, prefixes=())
    model.load_state_dict(fitted, strict=True)
    model.copy_visual_embeddings_from_text()
    model.load_notes = [f"text side from {folder}"] + (["pooler initialised randomly"] if missing_pooler else []) + (
        [f"set aside {len(set_aside)} BERT head weights"] if set_aside else [])
    model.checkpoint_path = folder
    return model


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


def save_model(model: VisualBertModel, path: str | Path, tokenizer=None) -> Path:
    """The encoder as a folder that transformers' ``VisualBertModel.from_pretrained(path)`` loads as it is."""
    return write_checkpoint_folder(path, model.config, model.state_dict(), "VisualBertModel", tokenizer)


def save_pretraining_model(model: VisualBertForPreTraining, path: str | Path, tokenizer=None,
                           extra_files: dict[str, str] | None = None) -> Path:
    """Encoder (``visual_bert.*``) and heads (``cls.*``) as a folder transformers' ``VisualBertForPreTraining``
    loads as it is."""
    state = {f"visual_bert.{k}": v for k, v in model.visual_bert.state_dict().items()}
    state.update({f"cls.{k}": v for k, v in model.cls.state_dict().items()})
    return write_checkpoint_folder(path, model.config, state, "VisualBertForPreTraining", tokenizer, extra_files)


def load_pretraining_model(path: str | Path, *, device: str | torch.device | None = None):
    """The encoder plus its masked-LM and sentence-image heads (``cls.*`` weights), in eval mode."""
    encoder, state, weights = _load_encoder(Path(path))  # one read of the weights serves both parts
    model = VisualBertForPreTraining(encoder)
    heads = {k[len("cls."):]: v for k, v in state.items() if k.startswith("cls.")}
    own = model.cls.state_dict()
    missing = sorted(set(own) - set(heads))
    if missing:
        raise CheckpointError(f"{weights}: no masked-LM head ({', '.join(missing[:2])} missing); attribution and "
                              "the causal check need a pre-training checkpoint such as `vb-train pretrain` writes")
    model.cls.load_state_dict({k: heads[k] for k in own})
    if device is not None:
        model.to(device)
    return model.eval()


def model_from_module(module: torch.nn.Module) -> VisualBertModel:
    """Our encoder from a module in memory: ours inside a wrapper, or transformers' VisualBERT classes."""
    inner = getattr(module, "visual_bert", None)
    if isinstance(inner, VisualBertModel):
        return inner
    config = getattr(module, "config", None)
    if getattr(config, "model_type", None) != "visual_bert":
        raise CheckpointError(f"{type(module).__name__}: not a VisualBERT model (config.model_type "
                              f"{getattr(config, 'model_type', None)!r}); pass a checkpoint folder, a hub id, or a "
                              "VisualBertModel / VisualBertFor* object")
    ours = VisualBertConfig.from_dict(config.to_dict())
    state = {k: v.detach() for k, v in module.state_dict().items()}
    fitted, set_aside = _fit_state_dict(_skeleton(ours, Path(type(module).__name__)), state,
                                        Path(type(module).__name__), prefixes=("visual_bert.",))
    model = VisualBertModel(ours).to(next(module.parameters()).device)
    model.load_state_dict(fitted, strict=True)
    model.load_notes = [f"converted from {type(module).__name__} in memory"] + (
        [f"set aside {len(set_aside)} task-head weights"] if set_aside else [])
    model.checkpoint_path = None
    return model


FINETUNED = "model.pt"  # what `vb-train finetune --out` holds: the task model's weights, its config and tokenizer


def read_finetuned(path: Path) -> dict:
    """A ``model.pt`` of ``vb-train finetune``: tensors and plain values only (a crafted file is refused, never
    run), with one-line errors."""
    import pickle

    if not path.is_file():
        tasks = sorted(p.parent.name for p in path.parent.glob(f"*/{FINETUNED}"))
        if tasks:  # `finetune --task all` writes one folder per task
            raise CheckpointError(f"{path.parent}: holds the fine-tuned models of {', '.join(tasks)} (from --task all); "
                                  f"pass one of them, e.g. {path.parent / tasks[0]}")
        raise CheckpointError(f"{path}: not found; pass the --out folder of `vb-train finetune`")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load: it holds Python objects, not only tensors and plain values "
                              f"({str(exc).splitlines()[-1][:100]}); pass a model.pt written by `vb-train finetune`") \
            from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read ({type(exc).__name__}); the file is truncated or corrupt, "
                              "fine-tune again") from None
    if not isinstance(saved, dict) or not {"model", "config", "task"} <= set(saved):
        raise CheckpointError(f"{path}: not a model.pt of `vb-train finetune` (model, config and task expected)")
    return saved


def load_finetuned(folder: Path) -> VisualBertModel:
    """The encoder of a fine-tuned model (``vb-train finetune --out``), its task head set aside: the probes read
    the fine-tuned encoder's heads. ``model.tokenizer_path`` is the tokenizer it was fine-tuned with."""
    path = folder / FINETUNED
    saved = read_finetuned(path)
    check_config_fields(saved["config"], path)
    config = VisualBertConfig.from_dict(saved["config"])
    fitted, set_aside = _fit_state_dict(_skeleton(config, path), saved["model"], path, prefixes=("visual_bert.",))
    check_finite_weights(fitted, path)
    model = VisualBertModel(config)
    model.load_state_dict(fitted, strict=True)
    model.load_notes = [f"fine-tuned for {saved['task']}: its encoder is probed, {len(set_aside)} task-head weights "
                        "set aside"]
    model.checkpoint_path = folder
    model.tokenizer_path = Path(saved["tokenizer"]) if saved.get("tokenizer") else None
    return model.eval()
