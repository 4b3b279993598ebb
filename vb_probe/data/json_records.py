"""A large JSON file that is one array of per-image records (Visual Genome's region descriptions, objects and
relationships: hundreds of megabytes each), read one image at a time: one streaming pass finds each record's byte
span and image id, kept in the user's cache keyed on the file's content (never in the data folder), and a record is
then one positional read. Memory stays flat whatever the file's size.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path

from vb_probe.data.text import data_decoder
from vb_probe.errors import DataError

CHUNK = 1 << 22  # bytes decoded a read
LONGEST_RECORD = 1 << 26  # characters: a record longer than this is taken as broken, not as unfinished


def scan_records(path: Path, image_id_of: Callable[[object, str], str]) -> dict[str, tuple[int, int]]:
    """Image id → (byte offset, byte length) of each record of the array in ``path``, decoding one record at a time.
    ``image_id_of(record, where)`` names a record's image (raising a one-line DataError)."""
    decoder = data_decoder(path)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    spans: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as handle:
        text, at, consumed = "", 0, 0  # the decoded window, the position in it, bytes before `at`
        eof = False

        def more() -> bool:
            nonlocal text, at, eof
            if eof:
                return False
            raw = handle.read(CHUNK)
            eof = not raw
            text = text[at:] + utf8.decode(raw, final=eof)
            at = 0
            return True

        def skip(characters: str) -> None:
            nonlocal at, consumed
            while True:
                start = at
                while at < len(text) and text[at] in characters:
                    at += 1
                consumed += len(text[start:at].encode("utf-8"))
                if at < len(text) or not more():
                    return

        try:
            skip("\ufeff \t\r\n")  # a byte order mark is counted as the bytes it takes
            if at >= len(text) or text[at] != "[":
                raise DataError(f"{path}: expected a JSON list of per-image records; download the file again")
            at, consumed = at + 1, consumed + 1
            number = 0
            while True:
                skip(" \t\r\n,")
                if at >= len(text):
                    raise DataError(f"{path}: ends inside its list (a truncated download?); download it again")
                if text[at] == "]":
                    at, consumed = at + 1, consumed + 1
                    skip(" \t\r\n")
                    if at < len(text):  # json.load would refuse it too: a file is one document
                        raise DataError(f"{path}: holds more after its list (at byte {consumed:,}: a second JSON "
                                        "document?); keep one list of per-image records")
                    return spans
                while True:
                    try:
                        record, end = decoder.raw_decode(text, at)
                        break
                    except json.JSONDecodeError as exc:  # the window may end inside the record: read on
                        if len(text) - at > LONGEST_RECORD or not more():
                            raise DataError(f"{path}: record {number} is not valid JSON ({exc.msg}); download the "
                                            "file again") from None
                    except DataError as exc:  # a number no record holds: said with the record
                        raise DataError(f"{path}: record {number}: {str(exc).removeprefix(f'{path}: ')}") from None
                    except ValueError:  # Python's own limit on the digits of an integer
                        raise DataError(f"{path}: record {number} holds a number too long to read; download the "
                                        "file again") from None
                length = len(text[at:end].encode("utf-8"))
                image_id = image_id_of(record, f"{path}: record {number}")
                if image_id in spans:
                    raise DataError(f"{path}: record {number}: image {image_id} has a second record; keep one a "
                                    "image")
                spans[image_id] = (consumed, length)
                consumed += length
                at, number = end, number + 1
        except (UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{path}: not readable as UTF-8 JSON ({type(exc).__name__}); download it again") from None


class JsonRecords:
    """The records of one such file by image id: ``in``, ``ids()``, ``record(image_id)`` (None when absent)."""

    def __init__(self, path: str | Path, image_id_of: Callable[[object, str], str]):
        from vb_probe.data.features import sampled_digest

        self.path = Path(path)
        self._image_id_of = image_id_of
        self._key = sampled_digest(self.path)
        self._spans = self._load_or_scan()
        self._rescanned = False

    def _load_or_scan(self, rescan: bool = False) -> dict[str, tuple[int, int]]:
        from vb_probe.cache import user_cache_dir

        index_path = user_cache_dir("json-index", self._key[:40] + ".json")
        if not rescan:
            try:
                cached = json.loads(index_path.read_text())
                if cached.get("key") == self._key:
                    return {str(k): (int(v[0]), int(v[1])) for k, v in cached["spans"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
                pass
        spans = scan_records(self.path, self._image_id_of)
        try:  # a convenience: a cache that cannot be written is rebuilt next time
            from vb_probe.atomic import remove_stale_temporaries, write_json

            remove_stale_temporaries(index_path.parent)
            write_json(index_path, {"key": self._key, "spans": spans})
        except OSError:
            pass
        return spans

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._spans

    def ids(self) -> list[str]:
        return list(self._spans)

    def record(self, image_id: str):
        """The image's record, read from its span and checked to be that image's: a file rewritten in place (records
        swapped or shifted, same size and time: the cache key samples the content) is indexed again, once."""
        if image_id not in self._spans:
            return None
        found = self._read_span(image_id)
        if found is None and not self._rescanned:
            self._spans, self._rescanned = self._load_or_scan(rescan=True), True
            if image_id not in self._spans:
                return None
            found = self._read_span(image_id)
        if found is None:
            raise DataError(f"{self.path}: the record of image {image_id} is not where a fresh index put it (the file "
                            "is changing while it is read?); run again when it is complete")
        return found

    def _read_span(self, image_id: str):
        """The record at the image's span when it parses there and names this image, else None."""
        offset, length = self._spans[image_id]
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            raw = handle.read(length)
        try:
            record = data_decoder(self.path).decode(raw.decode("utf-8"))
            return record if self._image_id_of(record, f"{self.path}: image {image_id}") == image_id else None
        except (UnicodeDecodeError, ValueError, RecursionError, DataError):
            return None
