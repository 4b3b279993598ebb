"""The per-query records of a run as a table (pandas; ``queries.csv``) and its maps read back from ``maps.npz``: the
results side of :mod:`vb_probe.records` (no torch here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS = ["group", "unit", "image_id", "caption", "word_index", "word", "position", "status", "picks", "hits"]


def records_frame(records, skipped_units: list[list] | None, groups: set[str] | None = None):
    """The per-query table (pandas, one row per query, in probe order, then those skipped when the queries were
    collected): ``group``, ``unit``, ``image_id``, ``caption``, ``word_index``, ``word``, ``position`` (the query
    token's place in the sequence), ``status`` (``scored`` or the skip reason), ``picks`` and ``hits`` (per head, in
    layer-major order: head ``l · heads + h``; empty for a skipped query). ``records``: the engine's
    :class:`~vb_probe.records.QueryRecords` (its ``meta``, ``picks`` and ``hits``) or None; ``groups``: only these
    groups."""
    import pandas as pd

    rows = []
    if records is not None:
        for meta, picks, hits in zip(records.meta, records.picks, records.hits):
            rows.append([*meta, picks, hits])
    for unit in skipped_units or []:
        rows.append([*unit, np.zeros(0, np.int32), np.zeros(0, bool)])
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["position"] = frame["position"].astype("Int64")  # none for a query skipped before it had a token
    if groups is not None:
        frame = frame[frame["group"].isin(groups)].reset_index(drop=True)
    return frame


def frame_to_csv_rows(frame) -> list[dict]:
    """The table's rows as ``queries.csv`` holds them: picks as space-separated token indices, hits as 0/1."""
    import pandas as pd

    out = []
    for record in frame.to_dict("records"):
        out.append({**record, "position": "" if record["position"] is None or record["position"] is pd.NA
                    else int(record["position"]),
                    "picks": " ".join(str(int(v)) for v in record["picks"]),
                    "hits": "".join("1" if v else "0" for v in record["hits"])})
    return out


def frame_from_csv_rows(rows: list[dict]):
    """Inverse of :func:`frame_to_csv_rows`."""
    import pandas as pd

    parsed = []
    for row in rows:
        parsed.append({**row, "word_index": int(row["word_index"]),
                       "position": int(row["position"]) if row["position"] not in ("", None) else None,
                       "picks": np.array([int(v) for v in row["picks"].split()], np.int32),
                       "hits": np.array([c == "1" for c in row["hits"]], bool)})
    frame = pd.DataFrame(parsed, columns=COLUMNS)
    frame["position"] = frame["position"].astype("Int64")
    return frame


def read_maps(path: str | Path) -> list[dict]:
    """``maps.npz`` back as one dict a map: ``query`` (its row of the per-query table), ``layer``, ``head``,
    ``attention`` [R] and ``cells`` [R, 4]."""
    with np.load(path) as data:
        offsets = data["offsets"]
        return [{"query": int(data["query"][i]), "layer": int(data["layer"][i]), "head": int(data["head"][i]),
                 "attention": data["attention"][offsets[i]:offsets[i + 1]],
                 "cells": data["cells"][offsets[i]:offsets[i + 1]]} for i in range(len(offsets) - 1)]
