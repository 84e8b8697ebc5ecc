"""Atomic file writes: a temporary file beside the target, flushed, fsynced, then renamed.

A crash or an error mid-write never leaves a partial or corrupted file at the target path.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success, fsync it and rename it over
    ``target``; on any exception, delete it and re-raise. The suffix is kept so writers that
    infer the format from the name (soundfile, PIL) still work."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def check_output_path(path: str | os.PathLike, label: str | None = None) -> None:
    """Refuse, before any work, an output file that cannot be written: its folder is missing
    or is a file, or the path itself is a folder. Messages start with ``label`` (default
    ``cannot write PATH``)."""
    from vqaudio.errors import VqaudioError

    path = Path(path)
    label = label or f"cannot write {path}"
    if not path.parent.is_dir():
        if path.parent.exists():
            raise VqaudioError(f"{label}: {path.parent} is a file, not a folder; "
                               "choose an output path inside a folder")
        raise VqaudioError(f"{label}: the folder {path.parent} does not exist; create it first")
    if path.is_dir():
        raise VqaudioError(f"{label}: is a folder; give a file name ending in {path.suffix or '.wav'}")


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``target``; on success rename it to ``target`` (which
    must be missing or an empty folder: see ``check_output_dir``); on any exception delete it
    and re-raise. Readers see the whole folder or none of it."""
    import shutil

    target = Path(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's folder is private; the result is an ordinary one
    try:
        yield tmp
        if target.is_dir():
            target.rmdir()  # empty (checked before the work): the rename takes its place
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)


def check_output_dir(path: str | os.PathLike, label: str) -> None:
    """Refuse, before any work, an output folder that cannot be written whole: its parent is
    missing or a file, it is a file, or it is a folder with something in it (never mixed
    with or replacing what is there). Messages start with ``label``."""
    from vqaudio.errors import VqaudioError

    path = Path(path)
    if not path.parent.is_dir():
        raise VqaudioError(f"{label}: the folder {path.parent} does not exist; create it first")
    if path.exists() and not path.is_dir():
        raise VqaudioError(f"{label}: is a file, not a folder; give a new folder name")
    if path.is_dir() and any(path.iterdir()):
        raise VqaudioError(f"{label}: the folder exists and is not empty; give a new folder or remove it")
