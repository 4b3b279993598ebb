"""The RefCOCO family (RefCOCO, RefCOCO+, RefCOCOg) in the ``refer`` layout: ``refs(<split_by>).p`` (a Python
pickle of plain dicts, one per referred object: ``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences`` with
``tokens``) beside the COCO ``instances.json`` (``images`` with sizes and file names, ``annotations`` with
``bbox`` = ``[x, y, w, h]``). Splits: train/val/testA/testB (``unc``), train/val/test (``umd``), train/val
(``google``).

The pickle is read by an unpickler that builds plain data only (dicts, lists, tuples, strings, numbers): any
class or function reference in the file is refused, so a file from elsewhere cannot run code. Each expression is
one caption whose one phrase is the whole expression, with the one gold box of its referred object; the query
word is the expression's head (its parse's root) or, as an option, its last word.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from vb_probe.data.annotations import (
    Annotation,
    Caption,
    GroundingSet,
    Phrase,
    image_size,
    register_grounding_set,
    xywh_box,
)
from vb_probe.data.text import read_json_file
from vb_probe.errors import DataError

SPLITS = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test"), "google": ("train", "val")}


class _PlainData(pickle._Unpickler):
    """Builds what pickle's own opcodes make (dicts, lists, tuples, str, bytes, numbers, None, bools) and nothing
    that needs a class or function looked up. Python's own unpickler, not the C one: it keeps the memo in a dict, so
    a nine-byte file that names memo slot 4,294,967,295 costs one entry, not the 4 GB array the C unpickler grows."""

    def find_class(self, module: str, name: str):
        raise _Refused(f"it refers to {module}.{name}")

    def persistent_load(self, pid):
        raise _Refused("it refers to an object outside the file")


class _Refused(pickle.UnpicklingError):
    """A reference to code or to an object outside the file: refused, never run."""


def read_plain_pickle(path: Path) -> object:
    """The plain data in a pickle, or one line naming ``path``: a class or function reference is refused, a file
    that ends early or does not parse is called damaged (not hostile)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected the refer toolkit's refs file") from None
    try:
        data = _PlainData(io.BytesIO(raw), encoding="latin1").load()  # Python 2 strings, as refer wrote them
    except _Refused as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DataError(f"{path}: holds more than plain data ({reason}); refused without running it: refs files hold "
                        "dicts, lists, strings and numbers only; use the file the refer toolkit ships") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            RecursionError, MemoryError, OverflowError, struct.error) as exc:
        ended = isinstance(exc, EOFError) or "truncated" in str(exc) or "exhausted" in str(exc)
        what = "ends before its last object (a truncated download?)" if ended else \
            f"does not parse as a pickle ({type(exc).__name__})"
        raise DataError(f"{path}: {what}; download the refs file again") from None
    return _plain(data, path)


KEY_TYPES = (str, int)  # what refer's dicts are keyed by


def _plain(value, path: Path, depth: int = 0):
    """Tuples as lists, bytes decoded; anything else than dict / list / str / int / float / bool / None refused,
    and a dict keyed by anything but strings and integers."""
    if depth > 50:
        raise DataError(f"{path}: nested deeper than refs files are; use the file the refer toolkit ships")
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key = key.decode("latin1") if isinstance(key, bytes) else key
            if not isinstance(key, KEY_TYPES) or isinstance(key, bool):
                raise DataError(f"{path}: a dict keyed by a {type(key).__name__}; refs files key their dicts by "
                                "strings; use the file the refer toolkit ships")
            out[key] = _plain(item, path, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, path, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode("latin1")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise DataError(f"{path}: holds a {type(value).__name__}, not plain data; use the file the refer toolkit ships")


MAX_ID = 2**63  # ids are 64-bit integers in COCO and refer


def shown(value) -> str:
    """A value from a data file as a message shows it: at most 40 characters (an integer of thousands of digits is
    described, never converted: Python refuses to print one)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**18:
        return f"an integer of {len(format(abs(value), 'x')) * 1.2:.0f}-odd digits"
    return f"{value!r:.40}"


def _integer(value, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_ID < value < MAX_ID:
        raise DataError(f"{where}: {name} {shown(value)} is not an integer id (64 bits); fix the record")
    return value


@register_grounding_set
class RefCoco(GroundingSet):
    """Lazy views of one RefCOCO-family folder: ``refs(<split_by>).p`` and ``instances.json``. The query word is
    the expression's head ("the man on the left": man)."""

    name = "refcoco"
    query_word = "head"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(root.glob("refs(*).p"))

    @classmethod
    def open(cls, root: Path, *, split_by: str | None = None, relations: bool = False) -> RefCoco:
        return cls(root, split_by)

    def __init__(self, root: str | Path, split_by: str | None = None):
        self.root = Path(root)
        found = sorted(p.name[5:-3] for p in self.root.glob("refs(*).p"))
        if split_by is None:
            split_by = next((s for s in ("unc", "umd", "google") if s in found), found[0] if found else "unc")
        self.split_by = split_by
        self.refs_path = self.root / f"refs({split_by}).p"
        if not self.refs_path.is_file():
            raise DataError(f"{self.refs_path}: missing; this folder holds refs for {', '.join(found) or 'no split'}"
                            f"; pass --split-by {found[0] if found else 'unc'}, or the folder with refs({split_by}).p")
        self.instances_path = self.root / "instances.json"
        self._load()
        self.captions = lru_cache(maxsize=4096)(self._captions)
        self.annotation = lru_cache(maxsize=4096)(self._annotation)

    def _load(self) -> None:
        """Both files read and cross-checked once, before any probing: every ref's image and object resolve."""
        instances = read_json_file(self.instances_path, "download instances.json again", "missing; a RefCOCO "
                                   "folder needs the COCO instances.json beside its refs file", strict=True)
        if not isinstance(instances, dict) or not isinstance(instances.get("images"), list) or \
                not isinstance(instances.get("annotations"), list):
            raise DataError(f"{self.instances_path}: expected a JSON object with 'images' and 'annotations' lists "
                            "(COCO instances format)")
        self.images: dict[str, dict] = {}
        for number, entry in enumerate(instances["images"]):
            where = f"{self.instances_path}: images[{number}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected an object with id, width, height, file_name")
            image_id = str(_integer(entry.get("id"), where, "id"))
            if image_id in self.images:
                raise DataError(f"{where}: image id {image_id} is listed a second time; keep one record an image")
            width, height = image_size(entry, where)
            self.images[image_id] = {"width": width, "height": height, "file_name": str(entry.get("file_name", ""))}
        self.boxes: dict[int, tuple[str, list]] = {}
        for number, entry in enumerate(instances["annotations"]):
            where = f"{self.instances_path}: annotations[{number}]"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected an object with id, image_id, bbox")
            ann_id = _integer(entry.get("id"), where, "id")
            if ann_id in self.boxes:
                raise DataError(f"{where}: annotation id {ann_id} is listed a second time; keep one record an object")
            self.boxes[ann_id] = (str(_integer(entry.get("image_id"), where, "image_id")), entry.get("bbox"))
        refs = read_plain_pickle(self.refs_path)
        if not isinstance(refs, list):
            raise DataError(f"{self.refs_path}: holds a {type(refs).__name__}, expected a list of refs (dicts)")
        self.by_image: dict[str, list[dict]] = defaultdict(list)
        self.split_of: dict[str, str] = {}
        ref_ids: set[int] = set()
        for number, ref in enumerate(refs):
            where = f"{self.refs_path}: ref {number}"
            if not isinstance(ref, dict) or not isinstance(ref.get("sentences"), list):
                raise DataError(f"{where}: expected a dict with ref_id, ann_id, image_id, split, sentences")
            if "ref_id" in ref:
                ref_id = _integer(ref["ref_id"], where, "ref_id")
                if ref_id in ref_ids:
                    raise DataError(f"{where}: ref_id {ref_id} is listed a second time; keep one record a ref")
                ref_ids.add(ref_id)
            where = f"{self.refs_path}: ref_id {shown(ref.get('ref_id', number))}"
            image_id = str(_integer(ref.get("image_id"), where, "image_id"))
            ann_id = _integer(ref.get("ann_id"), where, "ann_id")
            if image_id not in self.images:
                raise DataError(f"{where}: image {image_id} is not in {self.instances_path.name}; use the "
                                "instances.json of the same dataset")
            if ann_id not in self.boxes or self.boxes[ann_id][0] != image_id:
                raise DataError(f"{where}: object ann_id {ann_id} is not an annotation of image {image_id} in "
                                f"{self.instances_path.name}; use the instances.json of the same dataset")
            split = str(ref.get("split", ""))
            if split not in SPLITS.get(self.split_by, (split,)):
                raise DataError(f"{where}: split {split!r} is not one of {', '.join(SPLITS[self.split_by])} "
                                f"({self.split_by}); fix the record")
            if self.split_of.setdefault(image_id, split) != split:
                raise DataError(f"{where}: image {image_id} has refs in split {self.split_of[image_id]!r} and "
                                f"{split!r}; the refer splits keep an image in one split")
            sentences = []
            for k, sentence in enumerate(ref["sentences"]):
                tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
                if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t.strip()
                                                                         for t in tokens):
                    raise DataError(f"{where}: sentence {k} has no tokens (a list of words); fix or drop it")
                sentences.append(tuple(t.strip() for t in tokens))
            self.by_image[image_id].append({"ann_id": ann_id, "sentences": sentences,
                                            "category": str(ref.get("category_id", ""))})
            width, height = self.images[image_id]["width"], self.images[image_id]["height"]
            xywh_box(self.boxes[ann_id][1], f"{self.instances_path}: annotation {ann_id}", width, height)

    @property
    def default_split(self) -> str:
        """``val``: the split every refs file has (unc's tests are testA and testB, google has no test)."""
        return "val"

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names of this refs file (``unc``: train, val, testA, testB)."""
        return SPLITS.get(self.split_by, ())

    def split(self, name: str) -> list[str]:
        """Image ids of split ``name`` in the order their refs come."""
        if name not in SPLITS.get(self.split_by, ()):
            raise DataError(f"{self.refs_path}: no split {name!r} in the {self.split_by} splits; use one of "
                            f"{', '.join(SPLITS[self.split_by])}")
        ids = [image_id for image_id in self.by_image if self.split_of[image_id] == name]
        if not ids:
            raise DataError(f"{self.refs_path}: split {name!r} holds no refs; pass another --split")
        return ids

    def _captions(self, image_id: str) -> list[Caption]:
        """Every expression of the image's refs, in file order; its one phrase is the whole expression."""
        captions = []
        for ref in self.by_image.get(image_id, []):
            for tokens in ref["sentences"]:
                phrase = Phrase(0, tokens, ref["ann_id"], (ref["category"],))
                captions.append(Caption(image_id, len(captions), tokens, (phrase,)))
        return captions

    def _annotation(self, image_id: str) -> Annotation:
        info = self.images[image_id]
        boxes = {ref["ann_id"]: xywh_box(self.boxes[ref["ann_id"]][1], f"annotation {ref['ann_id']}")
                 for ref in self.by_image.get(image_id, [])}
        return Annotation(image_id, info["width"], info["height"], boxes)

    def image_files(self) -> dict[str, str]:
        """Image id → the COCO file name (``COCO_train2014_….jpg``), for an images folder."""
        return {image_id: info["file_name"] for image_id, info in self.images.items() if info["file_name"]}


def write_refcoco(folder: Path, images: list[dict], objects: list[dict], refs: list[dict],
                  split_by: str = "unc") -> None:
    """A RefCOCO-family folder in the refer layout: ``images`` (id, width, height, file_name), ``objects`` (id,
    image_id, box x1 y1 x2 y2, category_id) and ``refs`` (ref_id, ann_id, image_id, split, sentences as token
    lists) → ``refs(<split_by>).p`` (protocol 2, as refer's) and ``instances.json``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    annotations = [{"id": o["id"], "image_id": o["image_id"], "category_id": o.get("category_id", 1),
                    "bbox": [float(o["box"][0]), float(o["box"][1]), float(o["box"][2] - o["box"][0]),
                             float(o["box"][3] - o["box"][1])], "area": 0.0, "iscrowd": 0} for o in objects]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": [{"id": 1, "name": "object"}]}))
    plain = [{"ref_id": r["ref_id"], "ann_id": r["ann_id"], "image_id": r["image_id"], "split": r["split"],
              "category_id": r.get("category_id", 1), "file_name": r.get("file_name", ""),
              "sent_ids": list(range(len(r["sentences"]))),
              "sentences": [{"tokens": list(t), "raw": " ".join(t), "sent": " ".join(t), "sent_id": k}
                            for k, t in enumerate(r["sentences"])]} for r in refs]
    (folder / f"refs({split_by}).p").write_bytes(pickle.dumps(plain, protocol=2))


__all__ = ["RefCoco", "read_plain_pickle", "write_refcoco", "SPLITS"]
