"""Visual Genome (Krishna et al. 2017): ``image_data.json`` (sizes), ``region_descriptions.json`` (a phrase and a
box per region), ``objects.json`` (boxes and names per object) and ``relationships.json`` (a predicate between a
subject and an object, each with its box), boxes as ``x, y, w, h`` pixels. Visual Genome has no official split:
the split lists are ``<split>.txt`` in the folder, one image id a line, as for Flickr30K Entities.

Two views of one folder. *Regions* (the entity probe): each region description is a caption whose one phrase is
the whole description, with its region's box. *Relations* (the relation probe, no parser needed): each
relationship is the caption ``<subject> <predicate> <object>``, the subject's and the object's names its two
phrases with their boxes, and one arc from the subject's last word to the object's last word labelled with the
predicate (lower case, spaces as ``_``): ``head_to_dependent`` asks the subject word for the object's region,
``dependent_to_head`` the object word for the subject's.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from vb_probe.data.annotations import (
    Annotation,
    Caption,
    GroundingSet,
    Phrase,
    image_size,
    read_split,
    register_grounding_set,
    xywh_box,
)
from vb_probe.data.parses import Parse
from vb_probe.data.text import read_json_file
from vb_probe.errors import DataError


def _records(path: Path, what: str) -> list:
    data = read_json_file(path, "download it again", f"missing; a Visual Genome folder needs {path.name} ({what})",
                          strict=True)
    if not isinstance(data, list):
        raise DataError(f"{path}: holds a JSON {type(data).__name__}, expected a list of per-image records ({what})")
    return data


def _image_id(entry, where: str) -> str:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object with an image id")
    value = entry.get("image_id", entry.get("id"))
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise DataError(f"{where}: no image_id (or id); fix the record")
    return str(value).strip()


def _words(text, where: str) -> tuple[str, ...]:
    if not isinstance(text, str) or not text.split():
        raise DataError(f"{where}: the text {text!r:.40} has no words; fix or drop the record")
    return tuple(text.strip().rstrip(".").split()) or tuple(text.split())


def _box(entry: dict, where: str, size: tuple[int, int]):
    keys = ("x", "y", "w", "h") if "w" in entry else ("x", "y", "width", "height")
    return xywh_box([entry.get(k) for k in keys], where, *size)


def _name(entry: dict, where: str) -> tuple[str, ...]:
    names = entry.get("names") or ([entry["name"]] if entry.get("name") else [])
    if not names:
        raise DataError(f"{where}: the object has no name (names or name); fix the record")
    return _words(names[0], where)


def predicate_label(predicate: str) -> str:
    """A predicate as a relation name: lower case, words joined by ``_`` (``sitting on`` → ``sitting_on``)."""
    return "_".join(predicate.lower().split())


@register_grounding_set
class VisualGenome(GroundingSet):
    """Lazy views of one Visual Genome folder: its regions (``relations=False``) or its relationships. The query
    word of a region description is its head ("a man riding a horse": man)."""

    name = "visual_genome"
    query_word = "head"

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / "region_descriptions.json").is_file() or (root / "relationships.json").is_file()

    @classmethod
    def open(cls, root: Path, *, split_by: str | None = None, relations: bool = False) -> VisualGenome:
        return cls(root, relations=relations)

    @property
    def has_own_arcs(self) -> bool:
        """The relations view's arcs come from the relationships themselves."""
        return self.relations

    def __init__(self, root: str | Path, relations: bool = False):
        from vb_probe.data.json_records import JsonRecords

        self.root = Path(root)
        self.relations = relations
        sizes = _records(self.root / "image_data.json", "image ids with width and height")
        self.sizes: dict[str, tuple[int, int]] = {}
        for number, entry in enumerate(sizes):
            where = f"{self.root / 'image_data.json'}: record {number}"
            self.sizes[_image_id(entry, where)] = image_size(entry, where)
        # the view's file, indexed by image (one streaming pass, cached by content): read an image at a time
        name = "relationships.json" if relations else "region_descriptions.json"
        path = self.root / name
        if not path.is_file():
            what = "subject, predicate and object per relationship" if relations else "a phrase and a box per region"
            raise DataError(f"{path}: missing; a Visual Genome folder needs {name} ({what})")
        self._file = JsonRecords(path, self._sized_record)
        objects = self.root / "objects.json"
        self._objects = JsonRecords(objects, _image_id) if relations and objects.is_file() else None
        self.captions = lru_cache(maxsize=4096)(self._captions)
        self.annotation = lru_cache(maxsize=4096)(self._annotation)
        self._image_records = lru_cache(maxsize=4096)(self._read_image)
        self._objects_of = lru_cache(maxsize=64)(self._objects_of)  # each end by id would read it again

    # ------------------------------------------------------------------------------------------- reading

    def _sized_record(self, entry, where: str) -> str:
        return self._sized(_image_id(entry, where), where)

    def _read_image(self, image_id: str) -> tuple:
        """The view's records of one image, checked (sizes, boxes, names, object ids): regions as (region id,
        words, box), relationships as (predicate label, predicate words, subject, object), each end (object id,
        name words, box)."""
        entry = self._file.record(image_id)
        if entry is None:
            return ()
        path = self._file.path
        out = []
        if not self.relations:
            regions = entry.get("regions") or []
            seen: dict[int, int] = {}
            for k, region in enumerate(regions if isinstance(regions, list) else [regions]):
                where = f"{path}: image {image_id}, region {k}"
                if not isinstance(region, dict):
                    raise DataError(f"{where}: expected an object with region_id, phrase, x, y, width, height")
                region_id = region.get("region_id", region.get("id"))
                if isinstance(region_id, bool) or not isinstance(region_id, int):
                    raise DataError(f"{where}: region_id {region_id!r:.20} is not an integer id; fix the record")
                if region_id in seen:
                    raise DataError(f"{where}: region_id {region_id} is also region {seen[region_id]} of this image; "
                                    "keep one record a region")
                seen[region_id] = k
                out.append((region_id, _words(region.get("phrase"), where), _box(region, where, self.sizes[image_id])))
            return tuple(out)
        relationships = entry.get("relationships") or []
        for k, rel in enumerate(relationships if isinstance(relationships, list) else [relationships]):
            number = rel.get("relationship_id", k) if isinstance(rel, dict) else k
            where = f"{path}: image {image_id}, relationship {number}"
            if not isinstance(rel, dict) or not isinstance(rel.get("predicate"), str) or not rel["predicate"].split():
                raise DataError(f"{where}: expected an object with subject, predicate and object")
            ends = [self._end(rel.get(role), f"{where} {role}", image_id) for role in ("subject", "object")]
            out.append((predicate_label(rel["predicate"]), tuple(rel["predicate"].split()), *ends))
        return tuple(out)

    def _sized(self, image_id: str, where: str) -> str:
        if image_id not in self.sizes:
            raise DataError(f"{where}: image {image_id} is not in image_data.json; use the files of one release")
        return image_id

    def _objects_of(self, image_id: str) -> dict[int, dict]:
        """objects.json's objects of one image by id (read only for a relationship that names an object by id)."""
        if self._objects is None or image_id not in self._objects:
            return {}
        listed = self._objects.record(image_id).get("objects") or []
        return {o["object_id"]: o for o in (listed if isinstance(listed, list) else [])
                if isinstance(o, dict) and isinstance(o.get("object_id"), int)}

    def _end(self, end, where: str, image_id: str):
        """(object id, name words, box) of a relationship's subject or object: its own box, else objects.json's."""
        if not isinstance(end, dict) or isinstance(end.get("object_id"), bool) or \
                not isinstance(end.get("object_id"), int):
            raise DataError(f"{where}: expected an object with an integer object_id; fix the record")
        object_id = end["object_id"]
        if "x" not in end:
            objects = self._objects_of(image_id)
            if object_id not in objects:
                raise DataError(f"{where}: object_id {object_id} has no box here and is not in objects.json for "
                                f"image {image_id}; use the files of one release")
            end = {**objects[object_id], **end}
        return object_id, _name(end, where), _box(end, where, self.sizes[image_id])

    # ------------------------------------------------------------------------------------------- the reader

    def split(self, name: str) -> list[str]:
        """The split list's images, each with a record in the view's file (an image listed with none would count
        nothing, silently)."""
        ids = read_split(self.root, name)
        absent = [image_id for image_id in ids if image_id not in self._file]
        if absent:
            more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
            raise DataError(f"{self.root / (name + '.txt')}: image {absent[0]:.40}{more} has no record in "
                            f"{self._file.path.name}; list only images of this release")
        return ids

    def _captions(self, image_id: str) -> list[Caption]:
        captions = []
        for record in self._image_records(self._sized(image_id, str(self.root))):
            if not self.relations:
                region_id, words, _ = record
                captions.append(Caption(image_id, len(captions), words, (Phrase(0, words, region_id, ("region",)),)))
                continue
            _, predicate, (subject_id, subject, _), (object_id, obj, _) = record
            words = subject + predicate + obj
            phrases = (Phrase(0, subject, subject_id, ("subject",)),
                       Phrase(len(subject) + len(predicate), obj, object_id, ("object",)))
            captions.append(Caption(image_id, len(captions), words, phrases))
        return captions

    def _annotation(self, image_id: str) -> Annotation:
        width, height = self.sizes[self._sized(image_id, str(self.root))]
        boxes = {}
        for record in self._image_records(image_id):
            if not self.relations:
                boxes[record[0]] = record[2]
            else:
                for object_id, _, box in record[2:]:
                    boxes.setdefault(object_id, box)
        return Annotation(image_id, width, height, boxes)

    def parses(self, image_ids: list[str]) -> dict[str, Parse]:
        """The relations view's arcs as parses (no parser): one arc a caption, from the subject's last word to the
        object's last word, labelled with the predicate; every other word its own root."""
        out = {}
        for image_id in image_ids:
            for caption, record in zip(self.captions(image_id), self._image_records(image_id)):
                label = record[0]
                subject, obj = caption.phrases
                heads = [0] * len(caption.words)
                relations = ["ROOT"] * len(caption.words)
                heads[obj.last_word_index] = subject.last_word_index + 1
                relations[obj.last_word_index] = label
                out[caption.key] = Parse(caption.key, caption.words, tuple(heads), tuple(relations))
        return out


def write_visual_genome(folder: Path, images: list[dict], regions: dict[str, list[dict]],
                        relationships: dict[str, list[dict]], splits: dict[str, list[str]]) -> None:
    """A Visual Genome folder: ``images`` (image_id, width, height), per image its ``regions`` (region_id,
    phrase, box x1 y1 x2 y2) and ``relationships`` (relationship_id, predicate, subject and object each with
    object_id, name, box), and the split lists."""
    import json

    def xywh(box) -> dict:
        return {"x": float(box[0]), "y": float(box[1]), "w": float(box[2] - box[0]), "h": float(box[3] - box[1])}

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "image_data.json").write_text(json.dumps(images))
    (folder / "region_descriptions.json").write_text(json.dumps([
        {"id": int(image_id), "regions": [{"region_id": r["region_id"], "image_id": int(image_id),
                                           "phrase": r["phrase"], "x": float(r["box"][0]), "y": float(r["box"][1]),
                                           "width": float(r["box"][2] - r["box"][0]),
                                           "height": float(r["box"][3] - r["box"][1])} for r in members]}
        for image_id, members in regions.items()]))
    objects: dict[str, dict[int, dict]] = defaultdict(dict)
    for image_id, members in relationships.items():
        for rel in members:
            for role in ("subject", "object"):
                end = rel[role]
                objects[image_id][end["object_id"]] = {"object_id": end["object_id"], "names": [end["name"]],
                                                       **xywh(end["box"])}
    (folder / "objects.json").write_text(json.dumps([{"image_id": int(i), "objects": list(o.values())}
                                                     for i, o in objects.items()]))
    (folder / "relationships.json").write_text(json.dumps([
        {"image_id": int(image_id), "relationships": [
            {"relationship_id": rel["relationship_id"], "predicate": rel["predicate"],
             **{role: {"object_id": rel[role]["object_id"], "name": rel[role]["name"], **xywh(rel[role]["box"])}
                for role in ("subject", "object")}} for rel in members]}
        for image_id, members in relationships.items()]))
    for name, ids in splits.items():
        (folder / f"{name}.txt").write_text("\n".join(ids) + "\n")
