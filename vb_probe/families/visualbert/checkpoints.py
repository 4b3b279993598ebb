"""Load and save VisualBERT checkpoints in transformers' folder format; initialise from a BERT folder.

A transformers folder holds ``config.json`` (model_type ``visual_bert``) and ``model.safetensors`` or
``pytorch_model.bin``. Task models (``VisualBertForQuestionAnswering`` …, e.g. the ``uclanlp/visualbert-*``
checkpoints) prefix the encoder's keys with ``visual_bert.``; their head weights are set aside and noted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, VisualBertConfig

from vb_probe.errors import CheckpointError
from vb_probe.families.visualbert.folders import (  # noqa: F401  (re-exported: where callers found them)
    TOKENIZER_FILES,
    check_config_fields,
    check_finite_weights,
    fit_state_dict,
    read_encoder,
    read_state_dict,
    skeleton,
    write_checkpoint_folder,
)
from vb_probe.families.visualbert.model import VisualBertModel
from vb_probe.families.visualbert.pretraining import VisualBertForPreTraining
from vb_probe.hub import WEIGHT_FILES, read_config_json, weights_file  # noqa: F401  (re-exported)


def load_model(
    path: str | Path, *, device: str | torch.device | None = None, config_overrides: dict | None = None
) -> VisualBertModel:
    """Load a transformers VisualBERT folder into :class:`VisualBertModel`, in eval mode.

    ``model.load_notes`` lists what was set aside (task-head weights); ``model.checkpoint_path`` the folder.
    """
    model, _, _ = read_encoder(VisualBertModel, Path(path), config_overrides)
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
    shapes = skeleton(VisualBertModel, config, folder / "config.json")
    state = {}
    for key, tensor in read_state_dict(weights).items():
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
    fitted, set_aside = fit_state_dict(shapes, state, weights, prefixes=())
    model.load_state_dict(fitted, strict=True)
    model.copy_visual_embeddings_from_text()
    model.load_notes = [f"text side from {folder}"] + (["pooler initialised randomly"] if missing_pooler else []) + (
        [f"set aside {len(set_aside)} BERT head weights"] if set_aside else [])
    model.checkpoint_path = folder
    return model


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
    encoder, state, weights = read_encoder(VisualBertModel, Path(path))  # one read of the weights serves both parts
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
    fitted, set_aside = fit_state_dict(skeleton(VisualBertModel, ours, Path(type(module).__name__)), state,
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
    fitted, set_aside = fit_state_dict(skeleton(VisualBertModel, config, path), saved["model"], path, prefixes=("visual_bert.",))
    check_finite_weights(fitted, path)
    model = VisualBertModel(config)
    model.load_state_dict(fitted, strict=True)
    model.load_notes = [f"fine-tuned for {saved['task']}: its encoder is probed, {len(set_aside)} task-head weights "
                        "set aside"]
    model.checkpoint_path = folder
    model.tokenizer_path = Path(saved["tokenizer"]) if saved.get("tokenizer") else None
    return model.eval()
