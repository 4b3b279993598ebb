"""Reading text files: line by line as the data formats define lines, and JSON files with one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

MAX_DIGITS = 20  # ids and sizes in the annotation formats fit in 64 bits; Python itself stops at 4,300 digits


def text_lines(text: str) -> list[str]:
    """Lines as the files define them: ended by a newline (``\\r\\n`` too). Unlike ``str.splitlines``, a U+2028 or
    other Unicode separator inside a caption does not split it in two (which would shift every later caption's
    index)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def data_decoder(path: Path | str) -> json.JSONDecoder:
    """A JSON decoder for annotation files: an integer of more than :data:`MAX_DIGITS` digits, a number beyond
    floating point (``1e400``) or ``NaN``/``Infinity`` is refused in one line naming ``path`` (Python would read
    ``1e400`` as infinity, and a 6,000-digit id fails only when it is printed)."""
    from vb_probe.errors import DataError

    def integer(text: str) -> int:
        if len(text.lstrip("-")) > MAX_DIGITS:
            raise DataError(f"{path}: holds an integer of {len(text.lstrip('-')):,} digits where ids and sizes have at "
                            f"most {MAX_DIGITS}; fix or download the file again")
        return int(text)

    def real(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise DataError(f"{path}: holds the number {text[:24]}, beyond floating point; fix or download the file "
                            "again")
        return value

    def constant(name: str):
        raise DataError(f"{path}: holds {name}, which is not a number in JSON; fix or download the file again")

    return json.JSONDecoder(parse_int=integer, parse_float=real, parse_constant=constant)


def read_json_file(path: Path, fix: str, missing: str, error: type[Exception] | None = None, strict: bool = False):
    """The JSON value in ``path`` (a byte order mark is read as text), or one line naming the file: ``missing``
    when it is absent; not UTF-8, not JSON, a number too long to read or nested too deeply to read, each followed
    by ``fix``. ``error``: the exception class raised (DataError by default). ``strict``: numbers as annotation
    files hold them (:func:`data_decoder`)."""
    from vb_probe.errors import DataError

    error = error or DataError
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        return data_decoder(path).decode(text) if strict else json.loads(text)
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to read; {fix}") from None
    except ValueError:  # Python's own limit on the digits of an integer it reads
        raise error(f"{path}: holds a number too long to read; {fix}") from None
