"""Checkpoint and tokenizer sources: a local folder, or a Hugging Face Hub id resolved through the hub's own
cache with the conventions users know (``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``).

The cache is looked at first; only when the id is not cached and offline mode is off is the hub asked.
Either way the answer is a local folder, or a one-line error naming the id and the command that fetches it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vb_probe.errors import CheckpointError

# The tokenizer every uclanlp/visualbert-* checkpoint was trained with (they ship none of their own).
DEFAULT_TOKENIZER = "bert-base-uncased"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub finds it, read from the environment at call time (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in ("1", "ON", "YES", "TRUE")


def looks_like_hub_id(source: str) -> bool:
    """``owner/name`` or a bare name such as ``bert-base-uncased``: no path separators beyond one slash."""
    return bool(_HUB_ID.match(source)) and not source.startswith((".", "/")) and ".." not in source


def resolve(source: str | os.PathLike, what: str = "--ckpt") -> Path:
    """A local folder for ``source``: the folder itself, or the cached snapshot of a hub id.

    Raises CheckpointError (one line) when it is neither an existing folder nor a hub id that can be had.
    """
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if path.exists():
        raise CheckpointError(f"{what} {text}: is a file; pass a checkpoint folder or a hub id such as "
                              "uclanlp/visualbert-vqa-coco-pre")
    if not looks_like_hub_id(text):
        raise CheckpointError(f"{what} {text}: checkpoint folder not found; pass a folder holding config.json and "
                              "model weights, or a hub id such as uclanlp/visualbert-vqa-coco-pre")
    from huggingface_hub import snapshot_download

    fetch = f"`hf download {text}` on a machine with network (or copy its folder here and pass the path)"
    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(text, cache_dir=str(cache), local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends): ask the hub unless offline
        if hub_offline():
            raise CheckpointError(f"{what} {text}: not a local folder, and not in the hub cache {cache} "
                                  f"(HF_HUB_OFFLINE is set); fetch it with {fetch}") from None
    try:
        return Path(snapshot_download(text, cache_dir=str(cache), etag_timeout=10))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} {text}: not a local folder, not in the hub cache {cache}, and the hub could "
                              f"not be reached ({reason}); fetch it with {fetch}") from None


# model.pt: `vb-train finetune`; the index: a checkpoint sharded as the hub keeps large models
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.safetensors.index.json")


def weights_file(folder: str | Path) -> Path:
    """The weight file of a checkpoint folder (safetensors preferred)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder not found; pass a folder holding config.json and model weights")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder}: no model.safetensors or pytorch_model.bin; expected a transformers checkpoint folder "
        "(or model.safetensors.index.json with its shards)"
    )


def folder_config(folder: Path) -> dict:
    """What a checkpoint folder says it is: its ``config.json``; for a ``vb-train finetune`` folder (``model.pt``
    and no ``config.json``), the config stored in ``model.pt``."""
    if not (folder / "config.json").is_file() and (folder / "model.pt").is_file():
        import torch

        try:
            saved = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        except Exception:  # the family's loader reports it in one line
            return {}
        return saved.get("config", {}) if isinstance(saved, dict) else {}
    return read_config_json(folder)


def read_config_json(folder: Path) -> dict:
    """A checkpoint folder's ``config.json`` as a dict (one-line errors naming it)."""
    from vb_probe.data.text import read_json_file

    path = folder / "config.json"
    raw = read_json_file(path, "re-save the checkpoint", "missing; a checkpoint folder needs the config.json that "
                         "transformers writes", CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(raw).__name__}, expected an object of config fields")
    return raw


def shard_sha256(index: Path) -> dict[str, str]:
    """Each shard a ``model.safetensors.index.json`` names → the SHA-256 of its content (read, never taken from the
    hub cache's blob name: a blob overwritten in place keeps its name)."""
    import json

    from vb_probe.atomic import file_sha256

    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a readable weight index ({type(exc).__name__}); download the checkpoint "
                              "again") from None
    out = {}
    for name in shards:
        path = index.parent / name
        if not path.is_file():
            raise CheckpointError(f"{path}: a shard the index names is missing; download the checkpoint again")
        out[name] = file_sha256(path)
    return out
