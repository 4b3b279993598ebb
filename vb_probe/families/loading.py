"""Loading transformers' own model classes from a checkpoint folder so that random weights are never probed as
trained ones.

The trap: ``from_pretrained`` initialises at random every weight the checkpoint does not hold and says so only in a
load report, which vb-probe silences (a task model's head weights are expected to be left over). A checkpoint whose
tensor names carry a foreign prefix (as wrappers and adapters save them), that lacks one attention weight, or whose
shard index leaves out a shard's keys would then be probed, and reported, as if trained. The mechanism: the load
report is asked for (``output_loading_info``) and read: a missing or mis-shaped weight is refused, naming it; weights
the model has no place for are refused where they belong to a module the model has (an extra layer, a renamed
tree), and said once, by name, where they are a task head set aside on purpose. The shard index is checked before
transformers opens it (an entry outside the folder, a missing shard, a malformed index: one line each), and the
attention implementation is chosen here, never taken from ``config.json`` (a ``flash_attention_2`` there would fail
to import, or change nothing vb-probe reads). The cost: the report is made by transformers anyway.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path, PurePosixPath
from typing import Any

from vb_probe.errors import CheckpointError

INDEX = "model.safetensors.index.json"
UNUSED_BY_THE_PROBE = ("pooler.",)  # after the last layer: its weights change no attention the probe reads
SHOWN = 3  # weight names quoted in a message


def check_weight_index(folder: Path) -> None:
    """A sharded checkpoint's ``model.safetensors.index.json`` is a JSON object whose ``weight_map`` names, for
    every weight, a shard that is a plain file name in ``folder`` and is there; else one line naming the index."""
    index = folder / INDEX
    if not index.is_file() or (folder / "model.safetensors").is_file():
        return
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{index}: not a weight index (a JSON object whose weight_map maps each weight to its "
                              f"shard; {type(exc).__name__}); download the checkpoint again") from None
    for name, shard in weight_map.items():
        parts = PurePosixPath(shard).parts
        if PurePosixPath(shard).is_absolute() or "\\" in shard or len(parts) != 1 or parts[0] in (".", ".."):
            raise CheckpointError(f"{index}: weight {name!r:.80} points to {shard!r:.80}, outside the checkpoint "
                                  "folder; an index names shard files beside it; download the checkpoint again")
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise CheckpointError(f"{folder / shard}: a shard the index names is missing; download the checkpoint "
                                  "again")


def _attention_note(folder: Path, implementation: str) -> list[str]:
    """A config that asks for another attention implementation is overridden; said once."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return []
    asked = config.get("attn_implementation") or config.get("_attn_implementation") if isinstance(config, dict) \
        else None
    if isinstance(asked, str) and asked not in ("eager", "sdpa", implementation):
        return [f"{folder / 'config.json'} asks for attention {asked!r}; vb-probe loads it with {implementation!r} "
                "(the attention it reads is computed by its own capture; the weights are the same)"]
    return []


def load_pretrained(model_class, folder: Path, *, attention: str, **options) -> tuple[Any, list[str]]:
    """``model_class.from_pretrained(folder)`` with ``attention`` as the attention implementation and ``options``
    (dtype, device_map); returns the model and the notes to show. Refuses (one line naming the folder) a checkpoint
    that leaves any weight the probe reads at random, or holds weights of the model's own modules it has no place
    for; a task head it sets aside is said once, by name."""
    from vb_probe.families import quiet_loading

    check_weight_index(folder)
    notes = _attention_note(folder, attention)
    with warnings.catch_warnings(), quiet_loading():
        warnings.simplefilter("ignore")
        try:
            model, info = model_class.from_pretrained(str(folder), attn_implementation=attention,
                                                      output_loading_info=True, **options)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, ImportError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # a disk or permission error: the command names the file
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
            raise CheckpointError(f"{folder}: transformers cannot load its weights ({type(exc).__name__}: {reason}); "
                                  "download the checkpoint again, or pass the folder transformers saved") from None
    return model, notes + loading_report(model, info, folder)


def loading_report(model, info: dict, folder: Path) -> list[str]:
    """Reads ``from_pretrained``'s loading info: missing or mis-shaped weights refused (those of modules the probe
    never runs, the pooler, said), unexpected weights refused where the model has a module of their name, else
    said once as a task head set aside. Returns the notes."""
    notes = []
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", ()))
    if mismatched:
        raise CheckpointError(f"{folder}: {len(mismatched)} weight(s) have another shape than the config gives "
                              f"({_names(mismatched)}); pass the config.json saved with these weights")
    missing = sorted(info.get("missing_keys", ()))
    unused = [k for k in missing if any(part in k for part in UNUSED_BY_THE_PROBE)]
    missing = [k for k in missing if k not in unused]
    if missing:
        raise CheckpointError(f"{folder}: the checkpoint lacks {len(missing)} of the model's weights ({_names(missing)}"
                              "); they would be random and probed as if trained; pass a complete checkpoint (tensor "
                              "names as transformers saves them, every shard of the index)")
    if unused:
        notes.append(f"{folder}: no weights for {_names(unused)} (after the last layer; the probe does not read it)")
    unexpected = sorted(info.get("unexpected_keys", ()))
    own = _own_modules(model)
    foreign = [k for k in unexpected if _strip(k, model).split(".")[0] in own]
    if foreign:
        raise CheckpointError(f"{folder}: {len(foreign)} weight(s) of the model's own modules have no place in it "
                              f"({_names(foreign)}); the config does not describe these weights (layers or heads "
                              "differ?); pass the config.json saved with them")
    if unexpected:
        heads = sorted({_strip(k, model).split(".")[0] for k in unexpected})
        notes.append(f"{folder}: task head(s) {', '.join(heads)} set aside ({len(unexpected)} weights); the encoder is "
                     "probed")
    return notes


def _own_modules(model) -> set[str]:
    """Names of the model's top-level modules and of its base model's: where a weight of this model would live."""
    names = {name for name, _ in model.named_children()}
    base = getattr(model, "base_model", model)
    return names | {name for name, _ in base.named_children()}


def _strip(key: str, model) -> str:
    """``key`` without the base model's prefix (``vilt.encoder…`` → ``encoder…``) where the checkpoint has it."""
    prefix = getattr(model, "base_model_prefix", "")
    return key[len(prefix) + 1:] if prefix and key.startswith(prefix + ".") else key


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")
