"""Flickr30K Entities with the official semantics.

Layout under the root: ``Sentences/<id>.txt`` (one caption a line with ``[/EN#<id>/<type>… words]``
markup), ``Annotations/<id>.xml`` (``<object>`` with ``<name>`` ids and a ``<bndbox>``, or ``<nobndbox>`` /
``<scene>`` flags), and split lists ``train.txt``, ``val.txt``, ``test.txt``.

Boxes are returned as the official reader does: the XML's pixel coordinates minus one.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import numpy as np

from vb_probe.data.annotations import (
    NOTVISUAL_ID,
    Annotation,
    Caption,
    GroundingSet,
    Phrase,
    read_split,
    register_grounding_set,
)
from vb_probe.data.text import text_lines
from vb_probe.errors import DataError
from vb_probe.metrics.boxes import outside_image


def _entity_id(tag: str, where: str) -> int:
    digits = tag[len("EN#"):] if tag.startswith("EN#") else None
    if digits is None or not digits.isdigit():
        raise DataError(f"{where}: phrase tag {tag!r} is not of the form EN#<number>; fix the markup")
    return int(digits)


def parse_sentence(line: str, where: str) -> tuple[list[str], list[Phrase]]:
    """Parse one marked-up caption line into words and phrases; ``where`` names it in errors (file:line)."""
    words: list[str] = []
    phrases: list[Phrase] = []
    open_phrase: dict | None = None
    for token in line.split():
        if open_phrase is None and token.startswith("["):
            parts = token[1:].split("/")
            if len(parts) < 3 or parts[0] != "":
                raise DataError(f"{where}: {token!r} opens a phrase but is not '[/EN#<id>/<type>'; fix the markup")
            open_phrase = {"first": len(words), "id": _entity_id(parts[1], where),
                           "types": tuple(p for p in parts[2:] if p), "words": []}
            continue
        if token.startswith("[/EN#"):
            raise DataError(f"{where}: unbalanced bracket, a phrase opens at {token!r} inside another; "
                            "close the previous phrase with ']'")
        closes = open_phrase is not None and token.endswith("]")
        word = token[:-1] if closes else token
        if open_phrase is None and token.endswith("]") and "[" not in token:
            raise DataError(f"{where}: unbalanced bracket, {token!r} closes a phrase that was never opened; fix the markup")
        if word:
            words.append(word)
            if open_phrase is not None:
                open_phrase["words"].append(word)
        if closes:
            if not open_phrase["words"]:
                raise DataError(f"{where}: empty phrase EN#{open_phrase['id']}; a phrase needs at least one word")
            phrases.append(Phrase(open_phrase["first"], tuple(open_phrase["words"]), open_phrase["id"],
                                  open_phrase["types"]))
            open_phrase = None
    if open_phrase is not None:
        raise DataError(f"{where}: unbalanced bracket, phrase EN#{open_phrase['id']} is never closed with ']'; "
                        "fix the markup")
    return words, phrases


def read_sentences(path: str | Path, image_id: str | None = None) -> list[Caption]:
    """All captions of one ``Sentences/<id>.txt`` file, in file order (empty lines skipped)."""
    path = Path(path)
    image_id = image_id or path.stem
    try:
        lines = text_lines(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DataError(f"{path}: sentence file missing for image {image_id}; check --flickr30k points at "
                        "the Flickr30K Entities root") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-export the file as UTF-8") from None
    captions = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        words, phrases = parse_sentence(line, f"{path}:{line_number}")
        captions.append(Caption(image_id, len(captions), tuple(words), tuple(phrases)))
    return captions


def _number(element: ET.Element, name: str, where: str) -> float:
    found = element.find(name)
    if found is None or found.text is None:
        raise DataError(f"{where}: <{name}> missing; expected a number")
    try:
        value = float(found.text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: <{name}> is {found.text.strip()!r}, expected a finite number")
    return value


def _int_field(element: ET.Element, name: str, where: str) -> int:
    return int(_number(element, name, where))


def read_annotation(path: str | Path, image_id: str | None = None) -> Annotation:
    """Parse one ``Annotations/<id>.xml`` with the official semantics."""
    path = Path(path)
    image_id = image_id or path.stem
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation missing for image {image_id}; check --flickr30k points at "
                        "the Flickr30K Entities root") from None
    except ET.ParseError as exc:
        raise DataError(f"{path}: XML is not well-formed ({exc}); re-extract the annotation file") from None
    size = root.find("size")
    if size is None:
        raise DataError(f"{path}: no <size> element; expected <size><width>…<height>…</size>")
    annotation = Annotation(image_id, _int_field(size, "width", str(path)), _int_field(size, "height", str(path)))
    boxes: dict[int, list[list[float]]] = {}
    for number, obj in enumerate(root.iter("object")):
        where = f"{path} object {number}"
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise DataError(f"{where}: <object> without a <name>; every object needs an entity id")
        ids = []
        for name in names:
            if not name.isdigit():
                raise DataError(f"{where}: <name> {name!r} is not an entity id number; fix the annotation")
            ids.append(int(name))
        box = obj.find("bndbox")
        if box is not None:
            raw = [_number(box, k, where) for k in ("xmin", "ymin", "xmax", "ymax")]
            if max(abs(v) for v in raw) <= 1.0 and max(annotation.width, annotation.height) > 1:
                raise DataError(f"{where}: box ({', '.join(f'{v:g}' for v in raw)}) lies within 0..1, so it looks "
                                "normalised; Flickr30K Entities boxes are pixels of the image, fix the annotation")
            x1, y1, x2, y2 = (int(v) - 1 for v in raw)
            if x2 < x1 or y2 < y1:
                raise DataError(f"{where}: box ({x1 + 1}, {y1 + 1}, {x2 + 1}, {y2 + 1}) has xmax < xmin or "
                                "ymax < ymin; fix the box coordinates")
            if annotation.width > 0 and annotation.height > 0 and \
                    outside_image(np.array([x1, y1, x2, y2]), annotation.width, annotation.height)[0]:
                raise DataError(f"{where}: box ({x1 + 1}, {y1 + 1}, {x2 + 1}, {y2 + 1}) reaches outside the "
                                f"{annotation.width}×{annotation.height} image of <size>; fix the box or <size>")
            for entity in ids:  # a box with several names belongs to each of them
                boxes.setdefault(entity, []).append([x1, y1, x2, y2])
            continue
        flags = {flag: obj.find(flag) for flag in ("nobndbox", "scene")}
        for flag, element in flags.items():
            if element is not None and element.text and element.text.strip() not in ("0", ""):
                target = annotation.nobox if flag == "nobndbox" else annotation.scene
                target.update(ids)
    annotation.boxes = {k: np.asarray(v, dtype=np.float32) for k, v in boxes.items()}
    return annotation


@register_grounding_set
class Flickr30kEntities(GroundingSet):
    """Lazy reader of a Flickr30K Entities root: files are parsed on first use and cached. The query word is the
    phrase's last word (the paper's)."""

    name = "flickr30k"
    query_word = "last"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "Sentences").is_dir() and (root / "Annotations").is_dir()

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "Sentences").is_dir() or not (self.root / "Annotations").is_dir():
            raise DataError(f"{self.root}: expected a Flickr30K Entities root with Sentences/ and Annotations/; "
                            "pass --flickr30k <root>")
        self.captions = lru_cache(maxsize=4096)(self._captions)
        self.annotation = lru_cache(maxsize=4096)(self._annotation)

    def split(self, name: str) -> list[str]:
        return read_split(self.root, name)

    def _captions(self, image_id: str) -> list[Caption]:
        return read_sentences(self.root / "Sentences" / f"{image_id}.txt", image_id)

    def _annotation(self, image_id: str) -> Annotation:
        return read_annotation(self.root / "Annotations" / f"{image_id}.xml", image_id)

    def check_entities(self, image_id: str) -> None:
        """Raise when a phrase's entity id (other than 0, notvisual) is absent from the image's XML."""
        annotation = self.annotation(image_id)
        for caption in self.captions(image_id):
            for phrase in caption.phrases:
                if phrase.entity_id != NOTVISUAL_ID and not annotation.known(phrase.entity_id):
                    raise DataError(
                        f"{self.root / 'Sentences' / (image_id + '.txt')}:{caption.index + 1}: phrase "
                        f"EN#{phrase.entity_id} ({' '.join(phrase.words)!r}) is absent from "
                        f"Annotations/{image_id}.xml; fix the id, or pass --skip-unannotated to count it as skipped"
                    )


def format_sentence(words: list[str] | tuple[str, ...], phrases: list[Phrase] | tuple[Phrase, ...]) -> str:
    """The marked-up caption line of ``words`` with ``phrases`` (inverse of :func:`parse_sentence`)."""
    out: list[str] = []
    starts = {p.first_word_index: p for p in phrases}
    ends = {p.last_word_index for p in phrases}
    for i, word in enumerate(words):
        token = word
        if i in starts:
            p = starts[i]
            out.append(f"[/EN#{p.entity_id}/{'/'.join(p.types) or 'other'}")
        if i in ends:
            token += "]"
        out.append(token)
    return " ".join(out)


def format_annotation(annotation: Annotation, filename: str | None = None) -> str:
    """The XML of ``annotation`` (boxes written back in the file's 1-based convention)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename or f"{annotation.image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", annotation.width), ("height", annotation.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for entity, boxes in annotation.boxes.items():
        for x1, y1, x2, y2 in np.asarray(boxes).tolist():
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = str(entity)
            box = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), (x1, y1, x2, y2)):
                ET.SubElement(box, tag).text = str(int(round(value)) + 1)
    for flag, ids in (("nobndbox", annotation.nobox), ("scene", annotation.scene)):
        for entity in sorted(ids):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = str(entity)
            ET.SubElement(obj, "nobndbox").text = "1" if flag == "nobndbox" else "0"
            ET.SubElement(obj, "scene").text = "1" if flag == "scene" else "0"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


__all__ = ["NOTVISUAL_ID", "Annotation", "Caption", "Flickr30kEntities", "Phrase", "format_annotation",
           "format_sentence", "parse_sentence", "read_annotation", "read_sentences", "read_split"]
