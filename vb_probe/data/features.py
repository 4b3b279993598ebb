"""Detector region features behind one interface, over three layouts real users have:

* LXMERT TSV (no header; ``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes,
  boxes, features``; arrays base64 of raw little-endian buffers). A byte-offset index is built once and
  cached in the user's cache folder (keyed by the file's path, size and modification time), so one image is
  read without reading the rest, and nothing is written beside the user's file.
* BAN HDF5 (``image_features``, ``image_bb``, ``pos_boxes`` [images, 2] row ranges, optional
  ``spatial_features``; ``<stem>_imgid2idx.pkl`` beside it). Read lazily, one slice at a time.
* A folder of ``<img_id>.npz`` (``boxes``, ``features``, optional ``confidences``, ``image_w``, ``image_h``).

Every read is validated: shapes, at least one region, finite values, boxes inside the image (tolerance
``BOX_TOLERANCE`` of the side, at least 2 pixels).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import numpy as np
import pybase64

from vb_probe.atomic import file_sha256
from vb_probe.errors import DataError
from vb_probe.metrics.boxes import outside_image

TSV_FIELDS = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features")
ConfidenceSource = Literal["objects_conf", "attrs_conf", "none"]


@dataclass
class Regions:
    """One image's tokens: ``boxes`` [N, 4] (x1, y1, x2, y2 pixels of the original image), ``features`` [N, D],
    ``confidences`` [N] or None when the file has none, image size when known; ``seen`` [4] the part of the image
    the model sees (None: all of it). ``kind``: ``regions`` (a detector's) or ``pixels`` (a pixel family's cells)."""

    kind: ClassVar[str] = "regions"
    image_id: str
    boxes: np.ndarray
    features: np.ndarray
    confidences: np.ndarray | None
    image_w: float | None
    image_h: float | None
    seen: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.boxes)


def validate_regions(regions: Regions, source: str) -> Regions:
    """Check shapes, N ≥ 1, finiteness and boxes inside the image; raise DataError naming the image."""
    where = f"{source}: image {regions.image_id}"
    boxes, features = regions.boxes, regions.features
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise DataError(f"{where}: boxes have shape {boxes.shape}, expected [N, 4]; re-extract the features")
    if features.ndim != 2 or features.shape[0] != boxes.shape[0]:
        raise DataError(f"{where}: features have shape {features.shape} for {boxes.shape[0]} boxes, expected "
                        "[N, D]; re-extract the features")
    if len(boxes) == 0:
        raise DataError(f"{where}: no regions; every image needs at least one region (re-run the detector)")
    if regions.confidences is not None and regions.confidences.shape != (len(boxes),):
        raise DataError(f"{where}: confidences have shape {regions.confidences.shape}, expected [{len(boxes)}]")
    for name, array in (("boxes", boxes), ("features", features), ("confidences", regions.confidences)):
        if array is not None and not np.isfinite(array).all():
            raise DataError(f"{where}: {name} contain NaN or infinite values; re-extract the features")
    for name, side in (("width", regions.image_w), ("height", regions.image_h)):
        if side is not None and not (math.isfinite(side) and side >= 0):
            raise DataError(f"{where}: image {name} is {side!r}, expected a number of pixels (0 when unknown); "
                            "re-extract the features")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise DataError(f"{where}: a box has x2 < x1 or y2 < y1; boxes must be x1, y1, x2, y2 pixels")
    if float(np.abs(boxes).max()) <= 1.0:
        raise DataError(f"{where}: every box lies within 0..1, so the coordinates look normalised; expected x1, y1, "
                        "x2, y2 in pixels of the image (multiply by its width and height)")
    if regions.image_w and regions.image_h:
        if outside_image(boxes, regions.image_w, regions.image_h).any():
            raise DataError(f"{where}: boxes reach outside the {regions.image_w:g}×{regions.image_h:g} image; "
                            "boxes must be pixel coordinates of this image (not normalised)")
    return regions


class RegionFeatures(Protocol):
    """What the probes need of a feature store."""

    source: str

    def __contains__(self, image_id: str) -> bool: ...
    def __getitem__(self, image_id: str) -> Regions: ...
    def ids(self) -> list[str]: ...
    def content_key(self, image_ids: Sequence[str] | None = None) -> str: ...
    @property
    def dim(self) -> int: ...


def sampled_digest(path: Path, blocks: int = 16, block: int = 1 << 16) -> str:
    """A cheap content key of a large file: its size and SHA-256 over ``blocks`` evenly spaced 64 KiB blocks (first
    and last included). Any rewrite that moves rows or changes their lengths changes it; rows are also checked
    one by one when read, so a key that stays equal never gives one image another's regions."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for i in range(blocks):
            handle.seek(max(0, (size - block) * i // max(blocks - 1, 1)))
            digest.update(handle.read(block))
    return digest.hexdigest()


class _Store:
    """What the three layouts share: every image's features have the store's width (the first image's)."""

    kind: ClassVar[str] = "regions"  # what a store of region features holds (an image folder: "pixels")
    source: str
    _dim: int | None = None

    def add_names(self, names: dict[str, str]) -> None:
        """Region features are keyed by image id: a set's own file names change nothing."""

    def _read(self, image_id: str) -> Regions:
        raise NotImplementedError

    def ids(self) -> list[str]:
        raise NotImplementedError

    def __getitem__(self, image_id: str) -> Regions:
        regions = self._read(str(image_id))
        if regions.features.shape[1] != self.dim:
            raise DataError(f"{self.source}: image {regions.image_id} has {regions.features.shape[1]}-d features but "
                            f"the others are {self.dim}-d; every image needs features of one width, re-extract it")
        return regions

    @property
    def dim(self) -> int:
        if self._dim is None:
            first = next(iter(self.ids()), None)
            if first is None:
                raise DataError(f"{self.source}: no images; the feature file or folder is empty")
            self._dim = int(self._read(first).features.shape[1])
        return self._dim


def _missing(source: str, image_id: str) -> DataError:
    return DataError(f"{source}: image {image_id} is not in the features; extract features for it, or pass "
                     "--skip-missing-features to count its phrases as skipped")


class TsvFeatures(_Store):
    """LXMERT-style TSV read through a cached byte-offset index (keyed on the file's content)."""

    def __init__(self, path: str | Path, confidence: ConfidenceSource = "objects_conf"):
        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: feature file not found; pass --features <file.tsv>")
        if confidence not in ("objects_conf", "attrs_conf", "none"):
            raise ValueError(f"confidence source {confidence!r}: use objects_conf, attrs_conf or none")
        self.confidence = confidence
        self._key = sampled_digest(self.path)
        self._set_index(self._load_or_build_index())

    def _set_index(self, offsets: dict[str, int]) -> None:
        self._offsets = offsets
        # each row's length, from the next row's offset: a row is then one positional read
        starts = sorted(offsets.values()) + [self.path.stat().st_size]
        self._length = {start: end - start for start, end in zip(starts, starts[1:])}

    def content_key(self, image_ids: Sequence[str] | None = None) -> str:
        """The file's sampled digest (each row is checked against its image id when read)."""
        return self._key

    def _load_or_build_index(self, rebuild: bool = False) -> dict[str, int]:
        from vb_probe.cache import user_cache_dir

        # in the user's cache, keyed on the file's content: nothing is ever written into a data folder, and a
        # file rewritten in place (same size and time) gets a new index
        index_path = user_cache_dir("tsv-index", self._key[:40] + ".json")
        if not rebuild:
            try:
                cached = json.loads(index_path.read_text())
                if cached.get("key") == self._key:
                    return {str(k): int(v) for k, v in cached["offsets"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
                pass
        offsets: dict[str, int] = {}
        lines: dict[str, int] = {}
        with open(self.path, "rb") as handle:
            position = 0
            for line_number, line in enumerate(handle, start=1):
                tab = line.find(b"\t")
                if tab <= 0:
                    if line.strip():
                        raise DataError(f"{self.path}:{line_number}: not a tab-separated feature row; expected "
                                        f"the {len(TSV_FIELDS)} LXMERT fields")
                else:
                    image_id = line[:tab].decode("utf-8", "replace")
                    if image_id in offsets:
                        raise DataError(f"{self.path}:{line_number}: image {image_id} has a second row (the first is "
                                        f"line {lines[image_id]}); keep one row per image")
                    offsets[image_id], lines[image_id] = position, line_number
                position += len(line)
        try:  # the cache is a convenience: a read-only folder just means rebuilding next time
            from vb_probe.atomic import remove_stale_temporaries, write_json

            remove_stale_temporaries(index_path.parent)  # an index write killed mid-way
            write_json(index_path, {"key": self._key, "offsets": offsets})
        except OSError:
            pass
        return offsets

    def __contains__(self, image_id: str) -> bool:
        return str(image_id) in self._offsets

    def ids(self) -> list[str]:
        return list(self._offsets)

    def _row(self, image_id: str) -> dict[str, memoryview]:
        """The row's fields as views into one read (the arrays are megabytes of base64: nothing is copied). The row
        read must be the image's own (its id first, one whole line); otherwise the index is rebuilt once."""
        data = self._read_row(image_id)
        if not self._is_row_of(data, image_id):
            self._set_index(self._load_or_build_index(rebuild=True))
            if image_id not in self._offsets:
                raise _missing(self.source, image_id)
            data = self._read_row(image_id)
            if not self._is_row_of(data, image_id):
                raise DataError(f"{self.path}: the row read for image {image_id} is another image's; the file "
                                "changed while it was read, run again")
        return self._fields(data, image_id)

    @staticmethod
    def _is_row_of(data: bytes, image_id: str) -> bool:
        newline = data.find(b"\n")
        return data.startswith(image_id.encode() + b"\t") and newline in (-1, len(data) - 1)

    def _read_row(self, image_id: str) -> bytes:
        start = self._offsets[image_id]
        if hasattr(os, "pread"):  # one positional read (POSIX); safe from the prefetch thread
            fd = os.open(self.path, os.O_RDONLY)
            try:
                data = os.pread(fd, self._length[start], start)
            finally:
                os.close(fd)
        else:
            with open(self.path, "rb") as handle:
                handle.seek(start)
                data = handle.read(self._length[start])
        return data

    def _fields(self, data: bytes, image_id: str) -> dict[str, memoryview]:
        end = len(data)
        while end and data[end - 1] in b"\r\n":
            end -= 1
        view, values, field_start = memoryview(data), [], 0
        for _ in range(len(TSV_FIELDS) - 1):
            tab = data.find(b"\t", field_start, end)
            if tab < 0:
                break
            values.append(view[field_start:tab])
            field_start = tab + 1
        values.append(view[field_start:end])
        if data.find(b"\t", field_start, end) >= 0:  # more fields than the layout has
            values.append(view[end:end])
        if len(values) != len(TSV_FIELDS):
            raise DataError(f"{self.path}: image {image_id} row has {len(values)} fields, expected "
                            f"{len(TSV_FIELDS)} ({', '.join(TSV_FIELDS)}); the row is truncated or not LXMERT TSV")
        return dict(zip(TSV_FIELDS, values))

    def _decode(self, row: dict[str, memoryview], name: str, image_id: str) -> bytes:
        try:
            return pybase64.b64decode(row[name], validate=True)  # SIMD; the same strict check as the stdlib's
        except (binascii.Error, ValueError):
            raise DataError(f"{self.path}: image {image_id} field {name} is not valid base64 (truncated?); "
                            "re-extract this row") from None

    def _array(self, row: dict[str, memoryview], name: str, dtype, image_id: str, n: int, width: int | None) -> np.ndarray:
        """Decode field ``name`` as ``[n]`` (width None) or ``[n, width]``; width -1 infers it."""
        raw = self._decode(row, name, image_id)
        item = np.dtype(dtype).itemsize
        per_row = item * (1 if width is None else max(width, 1))
        if width == -1:
            if n <= 0 or len(raw) % (item * n):
                raise DataError(f"{self.path}: image {image_id} field {name} holds {len(raw)} bytes, not a multiple "
                                f"of {n} rows × {item} bytes; the row is truncated, re-extract it")
            per_row = len(raw) // n
        elif len(raw) != n * per_row:
            raise DataError(f"{self.path}: image {image_id} field {name} holds {len(raw)} bytes, expected "
                            f"{n * per_row} for {n} rows; the row is truncated, re-extract it")
        # little-endian in the file; on a little-endian machine that is the native layout: no copy (read-only)
        array = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if not array.dtype.isnative:
            array = array.astype(dtype)
        return array if width is None else array.reshape(n, -1)

    def _read(self, image_id: str) -> Regions:
        if image_id not in self._offsets:
            raise _missing(self.source, image_id)
        row = self._row(image_id)
        try:
            n = int(bytes(row["num_boxes"]))
            image_h, image_w = float(bytes(row["img_h"])), float(bytes(row["img_w"]))
        except ValueError:
            raise DataError(f"{self.path}: image {image_id} has non-numeric num_boxes/img_h/img_w; "
                            "expected LXMERT TSV") from None
        if n < 1:
            raise DataError(f"{self.path}: image {image_id} has num_boxes {n}; every image needs at least one region")
        boxes = self._array(row, "boxes", np.float32, image_id, n, 4)
        features = self._array(row, "features", np.float32, image_id, n, -1)
        conf = None if self.confidence == "none" else self._array(row, self.confidence, np.float32, image_id, n, None)
        return validate_regions(Regions(image_id, boxes, features, conf, image_w or None, image_h or None),
                                self.source)


class _IdMapUnpickler(pickle.Unpickler):
    """Builds only what an id map holds: dicts, strings, ints (and numpy integer scalars, which some
    converters wrote). Any other class or function in the file is refused, so a crafted file runs nothing."""

    _ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}")


def read_id_map(path: Path) -> dict[str, int]:
    """BAN's ``<stem>_imgid2idx.pkl``: image id → ``pos_boxes`` row, read without running any code.

    Raises DataError unless it is a dict of str/int ids to distinct non-negative int rows.
    """
    expected = "expected a pickled dict of image id → row (str or int to int), nothing else"
    try:
        with open(path, "rb") as handle:
            raw = _IdMapUnpickler(handle).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused to read the image-id map ({exc}); {expected}") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{path}: cannot read the image-id map ({type(exc).__name__}); {expected}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: holds a {type(raw).__name__}; {expected}")
    index: dict[str, int] = {}
    seen: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(key, (bool, float)) or not isinstance(key, (str, int, np.integer)) or \
                isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{path}: entry {key!r} → {value!r} is not an image id → row number; {expected}")
        image_id, row = str(key), int(value)
        if row < 0:
            raise DataError(f"{path}: image {image_id} maps to row {row}; rows are 0 or more, re-create the id map")
        if row in seen:
            raise DataError(f"{path}: images {seen[row]} and {image_id} both map to row {row}; each image needs its "
                            "own regions, re-create the id map")
        seen[row] = image_id
        index[image_id] = row
    return index

class Hdf5Features(_Store):
    """BAN-style HDF5 with ``<stem>_imgid2idx.pkl`` beside it; datasets are sliced lazily.

    The layout is checked when the file is opened, against what the file really holds (so a header that
    declares a billion regions for one image is refused before anything is allocated): ``image_features``
    [N, D] and ``image_bb`` [N, 4] numbers, ``pos_boxes`` [images, 2] whole numbers with 0 ≤ start ≤ end ≤ N,
    optional ``confidences`` [N] and ``image_wh`` [images, 2].
    """

    def __init__(self, path: str | Path, confidence_key: str | None = "confidences"):
        import h5py

        self.path = Path(path)
        self.source = str(self.path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: feature file not found; pass --features <file.h5>")
        index_path = self.path.with_name(f"{self.path.stem}_imgid2idx.pkl")
        if not index_path.is_file():
            raise DataError(f"{index_path}: missing; BAN HDF5 features need <stem>_imgid2idx.pkl beside the .h5 file")
        self._index = read_id_map(index_path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 file ({exc}); re-copy it") from None
        features = self._dataset("image_features", 2)
        boxes = self._dataset("image_bb", 2)
        pos = self._dataset("pos_boxes", 2, integer=True)
        n_regions = features.shape[0]
        if boxes.shape != (n_regions, 4):
            raise DataError(f"{self.path}: image_bb has shape {boxes.shape}, expected [{n_regions}, 4] (one box per "
                            "row of image_features); re-extract the features")
        if pos.shape[1] != 2:
            raise DataError(f"{self.path}: pos_boxes has shape {pos.shape}, expected [images, 2] (start, end rows)")
        ranges = self._whole(pos, "pos_boxes")
        bad = np.flatnonzero((ranges[:, 0] < 0) | (ranges[:, 0] > ranges[:, 1]) | (ranges[:, 1] > n_regions))
        if len(bad):
            start, end = (int(v) for v in ranges[bad[0]])
            raise DataError(f"{self.path}: pos_boxes row {int(bad[0])} declares regions {start}..{end}, but "
                            f"image_features has rows 0..{n_regions}; the file is damaged, re-extract it")
        self._ranges = ranges
        rows = len(ranges)
        for image_id, row in self._index.items():
            if not 0 <= row < rows:
                raise DataError(f"{index_path}: image {image_id} maps to row {row}, but pos_boxes has rows 0..{rows - 1}; "
                                "the id map does not belong to this .h5 file, re-create it")
        self.confidence_key = None
        if confidence_key and confidence_key in self._file:
            confidences = self._dataset(confidence_key, 1)
            if confidences.shape != (n_regions,):
                raise DataError(f"{self.path}: {confidence_key} has shape {confidences.shape}, expected "
                                f"[{n_regions}] (one per region)")
            self.confidence_key = confidence_key
        self._sizes = None
        if "image_wh" in self._file:
            sizes = self._dataset("image_wh", 2)
            if sizes.shape != (rows, 2):
                raise DataError(f"{self.path}: image_wh has shape {sizes.shape}, expected [{rows}, 2]")
            self._sizes = self._whole(sizes, "image_wh").astype(np.float64)
        self._dim = int(features.shape[1])

    def _dataset(self, name: str, ndim: int, integer: bool = False):
        """The dataset ``name``: present, readable (an external link to a missing file is not), numeric, ``ndim``-D."""
        import h5py

        what = f"{self.path}: dataset {name!r}"
        try:
            link = self._file.get(name, getlink=True)
            dataset = self._file.get(name)
        except (KeyError, OSError, RuntimeError, ValueError) as exc:
            raise DataError(f"{what} cannot be opened ({str(exc).splitlines()[0][:100]}); copy the data into the "
                            ".h5 file") from None
        if dataset is None and isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
            target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path
            raise DataError(f"{what} is a link to {target}, which cannot be opened; copy the data into the .h5 file")
        if dataset is None:
            raise DataError(f"{what} missing; expected BAN layout (image_features, image_bb, pos_boxes)")
        if not isinstance(dataset, h5py.Dataset):
            raise DataError(f"{what} is a {type(dataset).__name__}, expected an array")
        kind = dataset.dtype.kind
        if kind not in ("iu" if integer else "iuf") or dataset.ndim != ndim:
            raise DataError(f"{what} holds {dataset.dtype} with {dataset.ndim} dimensions, expected a {ndim}-D array "
                            f"of {'whole numbers' if integer else 'numbers'}; re-extract the features")
        return dataset

    def _whole(self, dataset, name: str) -> np.ndarray:
        try:
            return np.asarray(dataset[()])
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise DataError(f"{self.path}: dataset {name!r} cannot be read ({str(exc).splitlines()[0][:100]}); "
                            "the file is damaged, re-copy it") from None

    def __contains__(self, image_id: str) -> bool:
        return str(image_id) in self._index

    def ids(self) -> list[str]:
        return list(self._index)

    def content_key(self, image_ids: Sequence[str] | None = None) -> str:
        return sampled_digest(self.path) + sampled_digest(self.path.with_name(f"{self.path.stem}_imgid2idx.pkl"))

    def _read(self, image_id: str) -> Regions:
        if image_id not in self._index:
            raise _missing(self.source, image_id)
        row = self._index[image_id]
        start, end = (int(v) for v in self._ranges[row])
        try:
            conf = None
            if self.confidence_key is not None:
                conf = np.asarray(self._file[self.confidence_key][start:end], dtype=np.float32)
            boxes = np.asarray(self._file["image_bb"][start:end], dtype=np.float32)
            features = np.asarray(self._file["image_features"][start:end], dtype=np.float32)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DataError(f"{self.path}: image {image_id}'s rows {start}..{end} cannot be read "
                            f"({str(exc).splitlines()[0][:100]}); the file is damaged, re-copy it") from None
        size = self._sizes[row] if self._sizes is not None else (None, None)
        regions = Regions(image_id, boxes, features, conf,
                          float(size[0]) or None if size[0] is not None else None,
                          float(size[1]) or None if size[1] is not None else None)
        return validate_regions(regions, self.source)


class NpzFeatures(_Store):
    """A folder of ``<img_id>.npz`` files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.source = str(self.folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: not a folder of <img_id>.npz files; pass --features <folder>")
        self._ids = sorted(p.stem for p in self.folder.glob("*.npz"))

    def __contains__(self, image_id: str) -> bool:
        return (self.folder / f"{image_id}.npz").is_file()

    def ids(self) -> list[str]:
        return list(self._ids)

    def content_key(self, image_ids: Sequence[str] | None = None) -> str:
        """Names and sizes of every file, and the whole content of the files of ``image_ids`` (the images a run
        reads: one replaced by another of the same size changes the key), else sampled contents of up to 64."""
        digest = hashlib.sha256()
        paths = [self.folder / f"{i}.npz" for i in self._ids]
        if image_ids is not None:
            for image_id in image_ids:
                if image_id in self._ids:
                    digest.update(f"{image_id}:".encode() + bytes.fromhex(file_sha256(self.folder / f"{image_id}.npz")))
            return digest.hexdigest()
        for path in paths:
            digest.update(f"{path.name}:{path.stat().st_size};".encode())
        for path in paths[:: max(1, len(paths) // 64)]:
            digest.update(sampled_digest(path, blocks=4).encode())
        return digest.hexdigest()

    def _read(self, image_id: str) -> Regions:
        path = self.folder / f"{image_id}.npz"
        if not path.is_file():
            raise _missing(self.source, image_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:
            raise DataError(f"{path}: cannot read ({type(exc).__name__}); the file is truncated or not .npz") from None
        for key in ("boxes", "features"):
            if key not in arrays:
                raise DataError(f"{path}: array {key!r} missing; expected boxes, features (confidences optional)")
        sizes = {}
        for key in ("image_w", "image_h"):
            if key in arrays:
                value = arrays[key]
                if value.size != 1 or value.dtype.kind not in "iuf":
                    raise DataError(f"{path}: {key} holds {value.dtype} of shape {value.shape}, expected one number "
                                    "of pixels")
                sizes[key] = float(value.reshape(())) or None
        for key in ("boxes", "features", "confidences"):
            if key in arrays and arrays[key].dtype.kind not in "iuf":
                raise DataError(f"{path}: {key} holds {arrays[key].dtype}, expected numbers")
        regions = Regions(
            image_id,
            arrays["boxes"].astype(np.float32),
            arrays["features"].astype(np.float32),
            arrays["confidences"].astype(np.float32) if "confidences" in arrays else None,
            sizes.get("image_w"),
            sizes.get("image_h"),
        )
        return validate_regions(regions, str(path))


def open_features(path: str | Path, confidence: str | None = None) -> RegionFeatures:
    """Open any of the three layouts by what ``path`` is: a folder (npz), ``.h5``/``.hdf5``, else TSV.

    ``confidence``: for TSV the field (``objects_conf`` default, ``attrs_conf``, ``none``); for HDF5 the
    dataset name (``confidences`` default, ``none`` for no confidence).
    """
    path = Path(path)
    if path.is_dir():
        return NpzFeatures(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return Hdf5Features(path, None if confidence == "none" else (confidence or "confidences"))
    return TsvFeatures(path, confidence or "objects_conf")  # type: ignore[arg-type]


def encode_array(array: np.ndarray) -> str:
    """base64 of a little-endian raw buffer, the TSV's encoding."""
    return base64.b64encode(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def tsv_row(regions: Regions, object_ids: np.ndarray | None = None) -> list[str]:
    """The LXMERT TSV fields of one image (writers: the built-in world, tests)."""
    n = len(regions)
    conf = regions.confidences if regions.confidences is not None else np.zeros(n, np.float32)
    ids = object_ids if object_ids is not None else np.zeros(n, np.int64)
    return [regions.image_id, str(int(regions.image_h or 0)), str(int(regions.image_w or 0)),
            encode_array(ids.astype(np.int64)), encode_array(conf.astype(np.float32)),
            encode_array(np.zeros(n, np.int64)), encode_array(np.zeros(n, np.float32)), str(n),
            encode_array(regions.boxes.astype(np.float32)), encode_array(regions.features.astype(np.float32))]


def write_tsv(path: str | Path, all_regions: list[Regions]) -> None:
    from vb_probe.atomic import atomic_open

    with atomic_open(path, "w", newline="") as handle:
        for regions in all_regions:
            handle.write("\t".join(tsv_row(regions)) + "\n")


def write_hdf5(path: str | Path, all_regions: list[Regions]) -> None:
    """BAN layout + ``<stem>_imgid2idx.pkl``; confidences in ``confidences``, image sizes in ``image_wh``."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    counts = np.array([len(r) for r in all_regions])
    ends = np.cumsum(counts)
    with h5py.File(tmp, "w") as out:
        out["image_features"] = np.concatenate([r.features for r in all_regions]).astype(np.float32)
        out["image_bb"] = np.concatenate([r.boxes for r in all_regions]).astype(np.float32)
        out["pos_boxes"] = np.stack([ends - counts, ends], axis=1).astype(np.int64)
        out["image_wh"] = np.array([[r.image_w or 0, r.image_h or 0] for r in all_regions], np.float32)
        if all(r.confidences is not None for r in all_regions):
            out["confidences"] = np.concatenate([r.confidences for r in all_regions]).astype(np.float32)
    os.replace(tmp, path)
    from vb_probe.atomic import atomic_open

    with atomic_open(path.with_name(f"{path.stem}_imgid2idx.pkl"), "wb") as handle:
        pickle.dump({r.image_id: i for i, r in enumerate(all_regions)}, handle)


def write_npz(folder: str | Path, all_regions: list[Regions]) -> None:
    from vb_probe.atomic import atomic_open

    folder = Path(folder)
    for r in all_regions:
        arrays = {"boxes": r.boxes, "features": r.features}
        if r.confidences is not None:
            arrays["confidences"] = r.confidences
        if r.image_w:
            arrays.update(image_w=np.float32(r.image_w), image_h=np.float32(r.image_h))
        with atomic_open(folder / f"{r.image_id}.npz", "wb") as handle:
            np.savez(handle, **arrays)
