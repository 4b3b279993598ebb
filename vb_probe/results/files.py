"""The files of a probe run: CSV text and the one reader of vb-probe's tables, ``run.json`` read with one-line
errors, the package versions it records, and the checks before a run that its output folder may receive its files
and that scores fit a model's shape."""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from vb_probe.atomic import atomic_files
from vb_probe.errors import DataError, VbProbeError


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("vb-probe", "torch", "transformers", "tokenizers", "numpy", "spacy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


def csv_text(columns: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_run(folder: Path, probe: str) -> dict:
    path = folder / "run.json" if folder.is_dir() else folder
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found; pass the --out folder of `vb-probe {probe.replace('_', '-')}`") from None
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}); expected the run.json of a probe run") from None
    if not isinstance(run, dict) or run.get("probe") != probe:
        raise DataError(f"{path}: is not the run.json of a {probe} run (probe: "
                        f"{run.get('probe') if isinstance(run, dict) else None!r})")
    return run


def refuse_other_run(folder: Path, probe: str) -> None:
    """A folder holds one run: never replace the run.json of another probe (entity then syntactic into one --out)."""
    path = folder / "run.json"
    if not path.is_file():
        return
    try:
        other = json.loads(path.read_text(encoding="utf-8")).get("probe")
    except (OSError, ValueError, AttributeError, RecursionError):
        other = None
    if other != probe:
        raise VbProbeError(f"{folder}: already holds the run.json of {other or 'another'} run; write this "
                           f"{probe} run to another --out (nothing was changed)")


def check_result_folder(folder: str | Path, probe: str, names: Sequence[str]) -> None:
    """Before a probe runs: ``folder`` may receive its files ``names`` (absent, or vb-probe's own and unchanged) and
    holds no other probe's run. The same checks run again when the files are saved."""
    from vb_probe.atomic import check_outputs

    check_outputs(folder, names)
    if Path(folder).is_dir():
        refuse_other_run(Path(folder), probe)


def check_scores_shape(scores: tuple[int, int], model: tuple[int, int], source: str | Path) -> None:
    """Scores of a model of another shape (layers × heads) would show or ablate the wrong heads: refused."""
    if tuple(scores) != tuple(model):
        raise DataError(f"--scores {source}: the scores are of a {scores[0]}×{scores[1]} (layers × heads) model but "
                        f"this model is {model[0]}×{model[1]}; pass the scores of this checkpoint")


QUERIES_FILE, MAPS_FILE = "queries.csv", "maps.npz"  # a run's per-query records and maps, when it kept them


def save_run(folder: Path, probe: str, columns: list[str], rows: list[dict], figure, run: dict,
             query_rows: list[dict] | None = None, maps: dict | None = None) -> Path:
    """``<probe>.csv``, ``<probe>.png`` and ``run.json`` into ``folder`` (and the per-query records, ``queries.csv``,
    and the maps, ``maps.npz``, when the run kept them), replaced together or not at all; a folder holding another
    probe's run is refused."""
    import numpy as np

    refuse_other_run(folder, probe)
    with atomic_files(folder) as staged:
        staged.text(f"{probe}.csv", csv_text(columns, rows))
        staged.figure(f"{probe}.png", figure)
        staged.json("run.json", run)
        if query_rows is not None:
            from vb_probe.results.records import COLUMNS

            staged.text(QUERIES_FILE, csv_text(COLUMNS, query_rows))
        if maps is not None:
            with open(staged.path(MAPS_FILE), "wb") as handle:
                np.savez_compressed(handle, **maps)
    return folder


def read_queries(folder: Path):
    """A run folder's per-query records (a pandas table), or None when the run kept none."""
    from vb_probe.results.records import frame_from_csv_rows

    path = folder / QUERIES_FILE
    return frame_from_csv_rows(read_table(path)) if path.is_file() else None


def read_maps_file(folder: Path) -> dict | None:
    """A run folder's maps (``maps.npz``) as its arrays, or None."""
    import numpy as np

    path = folder / MAPS_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it ({type(exc).__name__}); run the probe again with --save-maps") \
            from None


@contextmanager
def fields_of(path: Path):
    """A run.json whose fields are missing or of the wrong type is one line naming it, never a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, VbProbeError):
            raise
        raise DataError(f"{path}: a field is missing or of the wrong type ({type(exc).__name__}: {exc}); expected the "
                        "run.json vb-probe writes, run the probe again") from None


def read_table(path: Path, what: str = "") -> list[dict]:
    """The rows of a CSV table vb-probe wrote (``entity_grounding.csv``, ``syntactic.csv``, …), as dicts of strings:
    the one reader of them. One-line errors name the file; ``what`` prefixes the name (``--scores``)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError(f"{what}{path}: file not found; the folder lacks the probe's table (run the probe again)") \
            from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{what}{path}: cannot read it ({type(exc).__name__}); expected a table vb-probe wrote") \
            from None
    if not rows:
        raise DataError(f"{what}{path}: no rows; run the probe again")
    return rows
