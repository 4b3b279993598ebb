"""Atomic file and folder writes, and what vb-probe may replace.

Writes go beside the target under a temporary name (``.<name>.<pid>-<random>.tmp``) and are renamed into place,
so a reader (or a crash) sees the old file or the new one, never half of one; a temporary whose process is gone
is removed by the next write to that folder.

Ownership: every folder vb-probe writes to holds a hidden manifest (``.vb-probe-manifest.json``) saying what kind
of folder it is (a world, a checkpoint, a pre-training run, or an output folder of results) and the SHA-256 of
each file vb-probe wrote there. A writer replaces only files the manifest lists, unchanged since, in a folder of
its own kind: a user's file, a file the user edited, or a folder of another kind is refused before any work.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it is to set it; done once, at import, before any writer thread
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _default_mode(folder: bool = False) -> int:
    """What ``open``/``mkdir`` would give: 0o666/0o777 less the umask (mkstemp's 0o600, mkdtemp's 0o700)."""
    return (0o777 if folder else 0o666) & ~_UMASK


# --------------------------------------------------------------------------------------------- temporaries

_TEMPORARY = re.compile(r"^\..+\.(\d+)-[A-Za-z0-9_]+\.tmp$")  # .<name>.<pid>-<random>.tmp


def _temporary_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, legacy_pattern: str | None = None) -> int:
    """Delete the temporary files and folders that writes killed mid-way left in ``folder`` (their process is
    gone; a live writer's are kept); ``legacy_pattern`` also removes older, pid-less names (when the caller
    knows no other writer is at work, e.g. on ``--resume``). Returns how many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        stale = (match is not None and not _process_alive(int(match.group(1)))) or \
            (legacy_pattern is not None and entry.match(legacy_pattern))
        if not stale:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (read a megabyte at a time): what manifests and run.json record."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
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


# --------------------------------------------------------------------------------------------- ownership

MANIFEST = ".vb-probe-manifest.json"
FolderKind = Literal["world", "checkpoint", "run", "output"]
KIND_NAMES = {"world": "a built-in world", "checkpoint": "a model checkpoint", "run": "a pre-training run",
              "output": "an output folder of results"}


@dataclass
class Manifest:
    """What vb-probe wrote in one folder: its kind, and per file (relative path) the SHA-256 digests it may have
    (one; two while a commit is renaming new files over old ones; none for manifests of earlier versions)."""

    kind: str | None
    files: dict[str, list[str]] = field(default_factory=dict)

    def owns(self, name: str, path: Path) -> bool:
        """``name`` (at ``path``) was written by vb-probe and is unchanged since."""
        if name not in self.files:
            return False
        digests = self.files[name]
        return not digests or (path.is_file() and file_sha256(path) in digests)

    def to_json(self) -> dict:
        return {"written_by": "vb-probe", "kind": self.kind, "files": self.files}


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None when it has none (or one that cannot be read: then nothing is ours)."""
    try:
        raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = raw["files"]
        if isinstance(files, list):  # written before kinds and digests: the files are ours, unverified
            names = set(files)
            kind = "world" if "world.json" in names else "checkpoint" if "config.json" in names else None
            return Manifest(kind, {str(name): [] for name in files})
        return Manifest(str(raw["kind"]), {str(k): [str(d) for d in v] for k, v in files.items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def _write_manifest(folder: Path, manifest: Manifest) -> None:
    write_json(folder / MANIFEST, manifest.to_json())


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _refuse(path: Path, what: str, problem: str) -> None:
    from vb_probe.errors import VbProbeError

    raise VbProbeError(f"{what} {path}: {problem}; choose a new or empty folder, or move those files away "
                       "(nothing was changed)")


def _check_kind(path: Path, manifest: Manifest | None, kind: FolderKind, what: str) -> None:
    if manifest is not None and manifest.kind is not None and manifest.kind != kind:
        _refuse(path, what, f"is {KIND_NAMES.get(manifest.kind, manifest.kind)} that vb-probe wrote, and this "
                            f"command writes {KIND_NAMES[kind]}")


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir() and p.name != MANIFEST
                  and not _TEMPORARY.match(p.name))


def check_outputs(folder: str | os.PathLike, names: Iterable[str] | None, kind: FolderKind = "output",
                  what: str = "--out") -> None:
    """Before any work: raise unless ``folder`` may receive ``names`` (relative paths; None: every file already
    there is checked). Each must be absent, or a file vb-probe wrote there and nobody changed since; the folder
    must not be a vb-probe folder of another kind. A user's file is never replaced."""
    path = Path(folder)
    if path.is_symlink() and not path.is_dir():
        _refuse(path, what, "is a link, not a folder")
    if path.exists() and not path.is_dir():
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"{what} {path}: is a file, not a folder; choose a new folder name")
    if not path.is_dir():
        return
    manifest = read_manifest(path)
    _check_kind(path, manifest, kind, what)
    wanted = _files_under(path) if names is None else [n for n in names if (path / n).exists() or (path / n).is_symlink()]
    if not wanted:
        return
    owned = manifest or Manifest(None)
    foreign = [n for n in wanted if n not in owned.files or (path / n).is_dir() or (path / n).is_symlink()]
    if foreign:
        _refuse(path, what, f"holds files vb-probe did not write ({_shown(foreign)})")
    edited = [n for n in wanted if not owned.owns(n, path / n)]
    if edited:
        _refuse(path, what, f"{_shown(edited)} changed since vb-probe wrote {'it' if len(edited) == 1 else 'them'}")


def check_replaceable(path: str | os.PathLike, what: str = "--out", kind: FolderKind = "world") -> None:
    """Raise unless ``path`` is absent, an empty folder, or a folder of ``kind`` vb-probe wrote whole, with every
    file in it vb-probe's and unchanged. Used before any work by writers that replace a whole folder."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        from vb_probe.errors import VbProbeError

        raise VbProbeError(f"{what} {path}: is a file, not a folder; choose a new folder name")
    check_outputs(path, None, kind, what)


@contextmanager
def atomic_dir(path: str | os.PathLike, what: str = "--out", kind: FolderKind = "world") -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (old one removed after).

    ``path`` may only be absent, empty, or a folder of ``kind`` this function wrote before, unchanged since
    (:func:`check_replaceable`); anything else raises before any work.
    """
    path = Path(path)
    check_replaceable(path, what, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        files = {name: [file_sha256(tmp / name)] for name in _files_under(tmp)}
        _write_manifest(tmp, Manifest(kind, files))
        os.chmod(tmp, _default_mode(folder=True))
        check_replaceable(path, what, kind)  # again: a user may have added a file while we worked
        old = None
        if path.exists():
            old = path.with_name(f"{_temporary_prefix(path.name)}old.tmp")
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
        self._staged: list[tuple[Path, str]] = []

    def path(self, name: str) -> Path:
        """A temporary path to write ``name`` to; it becomes ``folder/name`` when the group commits."""
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent)
        os.close(fd)
        self._staged.append((Path(tmp), name))
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

    def _commit(self, kind: FolderKind, what: str) -> None:
        names = [name for _, name in self._staged]
        check_outputs(self.folder, names, kind, what)  # again: a user may have put a file there while we worked
        digests = {}
        for tmp, name in self._staged:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, _default_mode())
            digests[name] = file_sha256(tmp)
        manifest = read_manifest(self.folder) or Manifest(kind)
        manifest.kind = kind
        # while the files are renamed, old and new contents are both vb-probe's (a kill in between leaves no
        # file that a later run would take for the user's); then only the new ones
        for name, digest in digests.items():
            old = manifest.files.get(name, [])
            manifest.files[name] = [*old, digest] if old else [digest]
        _write_manifest(self.folder, manifest)
        for tmp, name in self._staged:  # renames need no space: once every file is written, all land
            os.replace(tmp, self.folder / name)
        for name, digest in digests.items():
            manifest.files[name] = [digest]
        _write_manifest(self.folder, manifest)

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_files(folder: str | os.PathLike, kind: FolderKind = "output", what: str = "--out") -> Iterator[StagedFiles]:
    """Write a run's files together or not at all: each is written under a temporary name, and only when
    every one is complete are they renamed into place (and recorded in the folder's manifest). A failure (a
    full disk) leaves the previous files; a file vb-probe did not write, or one changed since, is refused."""
    folder = Path(folder)
    check_outputs(folder, (), kind, what)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    staged = StagedFiles(folder)
    try:
        yield staged
        staged._commit(kind, what)
    except BaseException:
        staged._discard()
        raise


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
