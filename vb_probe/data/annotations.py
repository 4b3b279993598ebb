"""The records every annotation set is read into, and what a reader of one offers: the leaf the readers, the
queries and the engine share (no reader, model or torch import here).

:class:`Caption` (its words and :class:`Phrase` spans), :class:`Annotation` (gold boxes per entity id), split lists
(:func:`read_split`), the box and size checks every format needs (:func:`xywh_box`, :func:`image_size`), and
:class:`GroundingSet`, the base class of a reader (Flickr30K Entities, the RefCOCO family, Visual Genome), with every
optional member declared and defaulted: its format's name, its default query word, its splits, whether it brings
its own arcs, its images' file names. Readers register with :func:`register_grounding_set`;
:func:`~vb_probe.data.grounding_sets.open_grounding_set` finds the one whose files a folder holds, as
:func:`~vb_probe.families.family_of` finds a model's family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from vb_probe.data.text import text_lines
from vb_probe.errors import DataError

if TYPE_CHECKING:
    from vb_probe.data.parses import Parse

NOTVISUAL_ID = 0  # Flickr30K Entities' entity of phrases with nothing to see
QUERY_WORDS = ("last", "head")  # an entity's query word: its phrase's last word, or the phrase's head in its parse


@dataclass(frozen=True)
class Phrase:
    """One bracketed phrase: its words, where it starts in the sentence, its entity id and types."""

    first_word_index: int
    words: tuple[str, ...]
    entity_id: int
    types: tuple[str, ...]

    @property
    def last_word_index(self) -> int:
        return self.first_word_index + len(self.words) - 1


@dataclass(frozen=True)
class Caption:
    """A sentence split on spaces, markup removed, with its phrases."""

    image_id: str
    index: int  # 0-based line number among the image's captions
    words: tuple[str, ...]
    phrases: tuple[Phrase, ...]

    @property
    def key(self) -> str:
        """``<image_id>_<caption_index>``, the CoNLL-U ``sent_id`` of this caption."""
        return f"{self.image_id}_{self.index}"


@dataclass
class Annotation:
    """Boxes per entity id ``[n, 4]`` (x1, y1, x2, y2 pixels, minus one), scene and nobox ids, image size."""

    image_id: str
    width: int
    height: int
    boxes: dict[int, np.ndarray] = field(default_factory=dict)
    scene: set[int] = field(default_factory=set)
    nobox: set[int] = field(default_factory=set)

    def known(self, entity_id: int) -> bool:
        return entity_id in self.boxes or entity_id in self.scene or entity_id in self.nobox


def read_split(root: str | Path, split: str) -> list[str]:
    """Image ids of ``<root>/<split>.txt`` in file order."""
    path = Path(root) / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"{path}: split list missing; expected one image id a line (train.txt, val.txt, test.txt)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark is not part of the first id
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); expected one image id a line, save it as UTF-8") from None
    ids, first_line = [], {}
    for number, line in enumerate(text_lines(text), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id in first_line:  # counted twice, it would weigh twice in every number
            raise DataError(f"{path}:{number}: image {image_id} is listed a second time (first on line "
                            f"{first_line[image_id]}); list each image once")
        first_line[image_id] = number
        ids.append(image_id)
    if not ids:
        raise DataError(f"{path}: split {split!r} lists no images; pass another --split or fill the list")
    return ids


def xywh_box(value, where: str, width: float | None = None, height: float | None = None) -> np.ndarray:
    """A COCO / Visual Genome box ``[x, y, w, h]`` (pixels) → [1, 4] x1, y1, x2, y2 float32; one line naming
    ``where`` for anything that is not four finite numbers with a positive width and height inside the image."""
    from vb_probe.metrics.boxes import outside_image

    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise DataError(f"{where}: box {value!r:.80} is not four finite numbers [x, y, w, h]; fix the record")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise DataError(f"{where}: box [x, y, w, h] = {value!r:.80} has a width or height of 0 or less; fix or "
                        "drop the record")
    box = np.array([[x, y, x + w, y + h]], dtype=np.float32)
    if width is not None and height is not None and outside_image(box, width, height).any():
        raise DataError(f"{where}: box {value!r:.80} reaches outside the {width:g} × {height:g} image; fix the "
                        "record or the image's size")
    return box


MAX_SIDE = 1 << 20  # pixels: no camera or scanner makes a side longer; a larger size is a broken record


def image_size(entry: dict, where: str) -> tuple[int, int]:
    """(width, height) of an image record, positive integers of at most :data:`MAX_SIDE`, else one line naming it."""
    try:
        width, height = entry["width"], entry["height"]
        if isinstance(width, bool) or isinstance(height, bool) or not all(
                (isinstance(v, (int, float)) and -MAX_SIDE <= v <= MAX_SIDE) or (isinstance(v, str) and len(v) <= 8)
                for v in (width, height)):
            raise TypeError
        width, height = int(width), int(height)
        if max(width, height) > MAX_SIDE:
            raise ValueError
    except (KeyError, TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: needs integer width and height of at most {MAX_SIDE:,} pixels; fix the record") \
            from None
    if width <= 0 or height <= 0:
        raise DataError(f"{where}: width × height {width} × {height}: must be positive; fix the record")
    return width, height


def head_word(heads: tuple[int, ...], first: int, last: int) -> int:
    """The head of the words ``first``..``last`` in a dependency parse (``heads[i]`` 1-based, 0 the root): the word
    of the span whose head lies outside it (the last such, when there are several)."""
    outside = [i for i in range(first, last + 1) if not (first <= heads[i] - 1 <= last)]
    return outside[-1] if outside else last


class GroundingSet:
    """A reader of one annotation set: captions (or expressions, region descriptions, relationships) with phrases,
    gold boxes per entity, and split lists. Required: :attr:`name`, :meth:`split`, :meth:`captions`,
    :meth:`annotation` (the last two may be cached per image); every other member has its default here.

    ``query_word``: the word an entity is probed on unless ``--query-word`` says otherwise (``last``, the paper's
    for Flickr30K; ``head`` for referring expressions and region descriptions, whose last word is often not the
    noun: "the man on the left")."""

    name: ClassVar[str]  # the format: the value of --dataset, recorded in run.json
    query_word: ClassVar[str] = "last"
    root: Path

    @property
    def default_split(self) -> str:
        """The split probed when none is asked for (a set's own test split)."""
        return "test"

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` holds this format's files (what ``open_grounding_set`` asks of every reader)."""
        return False

    @classmethod
    def open(cls, root: Path, *, split_by: str | None = None, relations: bool = False) -> GroundingSet:
        """The reader of ``root``; ``split_by`` and ``relations`` are the options some formats take."""
        return cls(root)

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names the set has (what check-data counts by default)."""
        return ("train", "val", "test")

    @property
    def has_own_arcs(self) -> bool:
        """Whether :meth:`parses` gives the captions' arcs from the data itself (Visual Genome's relationships),
        so that no parser is needed."""
        return False

    def split(self, name: str) -> list[str]:
        """Image ids of split ``name``, in the set's order."""
        raise NotImplementedError

    def captions(self, image_id: str) -> list[Caption]:
        """The image's captions (expressions, descriptions), in file order."""
        raise NotImplementedError

    def annotation(self, image_id: str) -> Annotation:
        """The image's size and gold boxes per entity id."""
        raise NotImplementedError

    def check_entities(self, image_id: str) -> None:
        """Raise a one-line error when a phrase's entity is absent from the image's annotation (checked here, when
        the set's files allow it to be absent)."""

    def parses(self, image_ids: list[str]) -> dict[str, Parse]:
        """The captions' own arcs (only where :attr:`has_own_arcs`)."""
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"{self.root}: a {self.name} set has no arcs of its own; pass --parses or --parser spacy")

    def image_files(self) -> dict[str, str]:
        """Image id → file name, where the set names its images otherwise than by id (COCO's file names)."""
        return {}


GROUNDING_SETS: dict[str, type[GroundingSet]] = {}


def register_grounding_set(cls: type) -> type:
    """Class decorator: a :class:`GroundingSet` subclass joins the readers ``open_grounding_set`` knows."""
    if not (isinstance(cls, type) and issubclass(cls, GroundingSet)):
        raise TypeError(f"{getattr(cls, '__name__', cls)!s}: a reader subclasses vb_probe.data.annotations.GroundingSet")
    GROUNDING_SETS[cls.name] = cls
    return cls
