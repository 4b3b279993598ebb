"""Atomic file and folder writes: write beside the target under a temporary name, then rename.

A reader (or a crash) never sees a half-written file: either the old one or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any writer thread
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _default_mode(folder: bool = False) -> int:
    """What ``open``/``mkdir`` would give: 0o666/0o777 less the umask (mkstemp's 0o600, mkdtemp's 0o700)."""
    return (0o777 if folder else 0o666) & ~_UMASK


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode())  # readable by others as any plain write would be
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


MANIFEST = ".vb-probe-manifest.json"


def _foreign_entries(path: Path) -> list[str]:
    """What an existing folder holds that vb-probe did not write there (its manifest lists what it wrote)."""
    present = sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())
    manifest = path / MANIFEST
    if not manifest.is_file():
        return present
    try:
        owned = set(json.loads(manifest.read_text(encoding="utf-8"))["files"]) | {MANIFEST}
    except (OSError, ValueError, KeyError, TypeError):
        return present
    return [p for p in present if p not in owned]


def check_replaceable(path: str | os.PathLike, what: str = "--out") -> None:
    """Raise unless ``path`` is absent, an empty folder, or a folder vb-probe wrote and nobody added to.

    Writers own only what they create: a user's file is never replaced or deleted.
    """
    from vb_probe.errors import VbProbeError

    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise VbProbeError(f"{what} {path}: is a file, not a folder; choose a new folder name")
    if not path.is_dir():
        return
    foreign = _foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise VbProbeError(f"{what} {path}: the folder holds files vb-probe did not write ({shown}); "
                           "choose a new or empty folder (nothing was changed)")


@contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "--out") -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed after).

    ``path`` may only be absent, empty, or a folder this function wrote before (its manifest lists every file,
    so a file a user put there is found and nothing is replaced); anything else raises before any work.
    """
    path = Path(path)
    check_replaceable(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        (tmp / MANIFEST).write_text(json.dumps({"written_by": "vb-probe", "files": files}) + "\n", encoding="utf-8")
        os.chmod(tmp, _default_mode(folder=True))
        check_replaceable(path, what)  # again: a user may have added a file while we worked
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class StagedFiles:
    """Files written under temporary names in one folder, renamed into place together by :func:`atomic_files`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._staged: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        """A temporary path to write ``name`` to; it becomes ``folder/name`` when the group commits."""
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        self._staged.append((Path(tmp), self.folder / name))
        return Path(tmp)

    def text(self, name: str, text: str) -> None:
        self.path(name).write_text(text, encoding="utf-8", newline="")

    def json(self, name: str, data: Any) -> None:
        self.text(name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def figure(self, name: str, fig, dpi: int = 200) -> None:
        """Save a matplotlib figure in the format its extension names (.png, .svg, .pdf, …); rasters at print
        resolution (200 dpi)."""
        from vb_probe.errors import VbProbeError

        kind = Path(name).suffix.lstrip(".").lower()
        supported = fig.canvas.get_supported_filetypes()
        if kind not in supported:
            raise VbProbeError(f"{self.folder / name}: cannot write a figure as {kind or 'a file without extension'!r}; "
                               "name it .png, .svg or .pdf")
        fig.savefig(self.path(name), format=kind, dpi=dpi)

    def _commit(self) -> None:
        for tmp, _ in self._staged:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, _default_mode())
        for tmp, target in self._staged:  # renames need no space: once every file is written, all land
            os.replace(tmp, target)

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_files(folder: str | os.PathLike) -> Iterator[StagedFiles]:
    """Write a run's files together or not at all: each is written under a temporary name, and only when
    every one is complete are they renamed into place. A failure (a full disk) leaves the previous files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = StagedFiles(folder)
    try:
        yield staged
        staged._commit()
    except BaseException:
        staged._discard()
        raise


def remove_stale_temporaries(folder: str | os.PathLike, pattern: str = ".*.tmp") -> int:
    """Delete temporary files an atomic write left behind when its process was killed; returns how many."""
    removed = 0
    for stale in Path(folder).glob(pattern):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def writable_folder(path: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``path`` if needed and check it can be written; a one-line error otherwise (never a traceback)."""
    from vb_probe.errors import VbProbeError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise VbProbeError(f"{what} {path}: is a file, not a folder; choose a new folder name")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VbProbeError(f"{what} {path}: cannot create the folder ({exc.strerror}); choose a writable {what}") from None
    if not os.access(path, os.W_OK):
        raise VbProbeError(f"{what} {path}: folder is not writable; choose a writable {what}")
    return path
