"""COCO captions in the Karpathy split JSON (``dataset_coco.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vb_probe.data.text import read_json_file
from vb_probe.errors import DataError


@dataclass(frozen=True)
class CocoImage:
    """One image: its id (``cocoid``, else ``imgid``), file name, Karpathy split and tokenised captions."""

    image_id: str
    filename: str
    split: str
    captions: tuple[tuple[str, ...], ...]
    raw: tuple[str, ...]


def read_karpathy(path: str | Path, splits: tuple[str, ...] | None = None) -> list[CocoImage]:
    """Images of the given splits (all when None); ``restval`` is its own split, as in the file."""
    path = Path(path)
    data = read_json_file(path, "re-download the split file", "captions file not found; pass the Karpathy split "
                          "JSON (dataset_coco.json)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected a JSON object with an 'images' list (Karpathy split format)")
    images = []
    for number, entry in enumerate(data["images"]):
        where = f"{path}: images[{number}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object with filename, cocoid|imgid, split, sentences")
        image_id = entry.get("cocoid", entry.get("imgid"))
        if image_id is None or "sentences" not in entry or "split" not in entry:
            raise DataError(f"{where}: needs cocoid or imgid, split and sentences; fix the entry")
        if splits is not None and entry["split"] not in splits:
            continue
        tokens, raw = [], []
        for sentence in entry["sentences"]:
            words = sentence.get("tokens") or str(sentence.get("raw", "")).lower().split()
            if not words:
                raise DataError(f"{where}: a sentence has neither tokens nor raw text; fix or drop it")
            tokens.append(tuple(str(w) for w in words))
            raw.append(str(sentence.get("raw", " ".join(words))))
        images.append(CocoImage(str(image_id), str(entry.get("filename", "")), str(entry["split"]),
                                tuple(tokens), tuple(raw)))
    return images
