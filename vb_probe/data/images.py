"""A folder of images by id (``<image_id>.jpg``, ``.jpeg`` or ``.png``, Flickr30K's own naming): what model families
that read pixels (ViLT) take where region families take a feature file. It answers the same questions a feature
store does (``in``, ``ids``, ``content_key``, ``source``), so the probe's policies (missing images are an error
or, with ``--skip-missing-features``, counted) and resumable runs work unchanged.

Images are read as viewers and annotation tools show them: turned upright by their EXIF orientation (a phone's
JPEG stores its pixels sideways with orientation 6, while the boxes are drawn on the upright picture), and 16-bit
grey levels scaled to 8 bits (Pillow's own conversion clips them, turning most of the picture white). Each image's
upright size, read from its header alone, is what :func:`check_sizes` compares with its annotation's.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vb_probe.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
EXIF_ORIENTATION = 0x0112
TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageFolder:
    """The images of one folder, by id; ``image(id)`` an RGB ``PIL.Image``."""

    kind = "pixels"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"--images {self.folder}: not a folder; pass the folder holding <image_id>.jpg "
                            "(or .jpeg, .png) files")
        self.source = str(self.folder)
        self._sizes: dict[str, tuple[int, int]] = {}
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

    def _open(self, image_id: str):
        """The image file opened lazily (header only), or one line naming the file."""
        from PIL import Image, UnidentifiedImageError

        path = self.path(image_id)
        try:
            return Image.open(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DataError(f"{path}: a symbolic link that loops back on itself; point it at the image or "
                                "remove it") from None
            if exc.errno is not None and not isinstance(exc, UnidentifiedImageError):
                raise
            raise DataError(f"{path}: not a readable image ({type(exc).__name__}); replace or remove the file") \
                from None
        except (Image.DecompressionBombError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({type(exc).__name__}); replace or remove the file") \
                from None

    def size(self, image_id: str) -> tuple[int, int]:
        """(width, height) of the image as viewers show it (after its EXIF orientation), from its header."""
        if image_id not in self._sizes:
            with self._open(image_id) as handle:
                width, height = handle.size
                try:
                    turned = handle.getexif().get(EXIF_ORIENTATION) in TURNED
                except (OSError, ValueError, SyntaxError):  # a damaged EXIF block: the stored frame
                    turned = False
            self._sizes[image_id] = (height, width) if turned else (width, height)
        return self._sizes[image_id]

    def image(self, image_id: str):
        """The image as RGB, upright (its EXIF orientation applied) and 16-bit grey levels scaled to 8 bits (a one-line
        error naming the file when it is not a readable image)."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        path = self.path(image_id)
        with self._open(image_id) as handle:
            try:
                upright = ImageOps.exif_transpose(handle)
                return as_rgb(upright)
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError) as exc:
                raise DataError(f"{path}: not a readable image ({type(exc).__name__}); replace or remove the file") \
                    from None

    __getitem__ = image  # the probe's missing-data policy reads an item to raise its error

    @property
    def dim(self) -> int:
        return 3

    def content_key(self, image_ids: Sequence[str] | None = None) -> str:
        """What a resume keys on: the whole content of the images of ``image_ids`` (those a run reads: an image
        replaced by another of the same byte size changes it); without ids, the names and sizes of every image and
        the bytes of up to 64 of them, evenly spread."""
        from vb_probe.atomic import file_sha256

        digest = hashlib.sha256()
        if image_ids is not None:
            for image_id in image_ids:
                if image_id in self._paths:
                    digest.update(f"{self._paths[image_id].name}:".encode() + bytes.fromhex(
                        file_sha256(self._paths[image_id])))
            return digest.hexdigest()
        ids = self.ids()
        for image_id in ids:
            digest.update(f"{self._paths[image_id].name}:{self._paths[image_id].stat().st_size};".encode())
        for image_id in ids[:: max(1, len(ids) // 64)]:
            digest.update(hashlib.sha256(self._paths[image_id].read_bytes()).digest())
        return digest.hexdigest()


def as_rgb(image):
    """``image`` as 8-bit RGB as it is seen: 16-bit (and 32-bit integer) grey levels scaled by 255 / 65535, not
    clipped at 255 as ``convert("RGB")`` does."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image).astype(np.float64)
        if image.mode != "I" or levels.max(initial=0) > 255:
            levels = levels * (255.0 / 65535.0)
        return Image.fromarray(levels.round().clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def check_sizes(images: ImageFolder, annotated: dict[str, tuple[float, float]]) -> None:
    """Every image of ``annotated`` (id → the width and height its annotation gives) has that size in ``images``
    (upright); else one line naming the first image that differs (a thumbnail, another image under its name, an
    image turned by its EXIF orientation against boxes drawn on the stored frame)."""
    wrong = [(image_id, size, images.size(image_id)) for image_id, size in annotated.items()
             if image_id in images and tuple(int(round(v)) for v in size) != images.size(image_id)]
    if wrong:
        image_id, (width, height), (w, h) = wrong[0]
        more = f" (and {len(wrong) - 1} more images)" if len(wrong) > 1 else ""
        raise DataError(f"{images.path(image_id)}: is {w} × {h} pixels (upright) but its annotation gives "
                        f"{int(width)} × {int(height)}{more}; its boxes would land elsewhere; pass the images the "
                        "annotations were made on")
