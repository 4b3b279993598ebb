"""A folder of images by id (``<image_id>.jpg``, ``.jpeg`` or ``.png``, Flickr30K's own naming): what model families
that read pixels (ViLT) take where region families take a feature file. It answers the same questions a feature
store does (``in``, ``ids``, ``content_key``, ``source``), so the probe's policies (missing images are an error
or, with ``--skip-missing-features``, counted) and resumable runs work unchanged.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vb_probe.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


class ImageFolder:
    """The images of one folder, by id; ``image(id)`` an RGB ``PIL.Image``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"--images {self.folder}: not a folder; pass the folder holding <image_id>.jpg "
                            "(or .jpeg, .png) files")
        self.source = str(self.folder)
        self._paths: dict[str, Path] = {}
        for suffix in reversed(IMAGE_SUFFIXES):  # .jpg wins when an id has several
            for path in self.folder.glob(f"*{suffix}"):
                self._paths[path.stem] = path
        if not self._paths:
            raise DataError(f"--images {self.folder}: holds no .jpg, .jpeg or .png file; pass the images folder")

    def add_names(self, names: dict[str, str]) -> None:
        """Images named otherwise than by id (COCO's ``COCO_train2014_000000123456.jpg`` for id 123456): ``names``
        id → file name, each taken where the file is in the folder."""
        for image_id, name in names.items():
            path = self.folder / Path(name).name
            if image_id not in self._paths and path.is_file():
                self._paths[image_id] = path

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._paths

    def ids(self) -> list[str]:
        return sorted(self._paths)

    def path(self, image_id: str) -> Path:
        if image_id not in self._paths:
            raise DataError(f"{self.folder}: no image {image_id} ({image_id}.jpg, .jpeg or .png); add it, or pass "
                            "--skip-missing-features to count its phrases as skipped")
        return self._paths[image_id]

    def image(self, image_id: str):
        """The image as RGB (a one-line error naming the file when it is not a readable image)."""
        from PIL import Image, UnidentifiedImageError

        path = self.path(image_id)
        try:
            with Image.open(path) as handle:
                return handle.convert("RGB")
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({type(exc).__name__}); replace or remove the file") \
                from None

    __getitem__ = image  # the probe's missing-data policy reads an item to raise its error

    @property
    def dim(self) -> int:
        return 3

    def content_key(self) -> str:
        """Names and sizes of every image, and the bytes of up to 64 of them, evenly spread (a resume keys on it)."""
        digest = hashlib.sha256()
        ids = self.ids()
        for image_id in ids:
            digest.update(f"{self._paths[image_id].name}:{self._paths[image_id].stat().st_size};".encode())
        for image_id in ids[:: max(1, len(ids) // 64)]:
            digest.update(hashlib.sha256(self._paths[image_id].read_bytes()).digest())
        return digest.hexdigest()
