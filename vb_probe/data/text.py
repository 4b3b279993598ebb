"""Reading text files: line by line as the data formats define lines, and JSON files with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path


def text_lines(text: str) -> list[str]:
    """Lines as the files define them: ended by a newline (``\\r\\n`` too). Unlike ``str.splitlines``, a U+2028 or
    other Unicode separator inside a caption does not split it in two (which would shift every later caption's
    index)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_json_file(path: Path, fix: str, missing: str, error: type[Exception] | None = None):
    """The JSON value in ``path`` (a byte order mark is read as text), or one line naming the file: ``missing``
    when it is absent; not UTF-8, not JSON or nested too deeply to read, each followed by ``fix``. ``error``: the
    exception class raised (DataError by default)."""
    from vb_probe.errors import DataError

    error = error or DataError
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to read; {fix}") from None
