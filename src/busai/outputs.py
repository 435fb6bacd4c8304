"""Where commands write: one check of an output folder or file before any work, and atomic writes.

Every writing command (train, resume, data split, evaluate, predict, tune, export) calls
:func:`output_dir` or :func:`output_file` first, so a read-only location or an ``--out`` that names
the wrong kind of thing is one error line before minutes of work, not a traceback after them.
Files are written through :func:`atomic_write`: a temporary file beside the target, then
``os.replace``, so an interrupt leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from busai.errors import ConfigError


def output_dir(path: str | Path, option: str = "--out", *, create: bool = True) -> Path:
    """Check that files can be written in folder ``path``, creating it (and its parents) if missing.

    ``create=False`` checks without creating anything: the folder if it exists, else the nearest
    existing folder above it, which the later ``mkdir`` will write into.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: is an existing file, not a folder; pass a folder")
    if not create:
        above = path
        while not above.exists() and above != above.parent:
            above = above.parent
        if not above.is_dir():
            raise ConfigError(f"{option} {path}: {above} is a file, not a folder; choose another location")
        _probe(above, f"{option} {path}:" if above != path else option)
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create the folder ({exc.strerror or exc}); choose a writable location") from None
    _probe(path, option)
    return path


def output_file(path: str | Path, option: str = "--out") -> Path:
    """Check that ``path`` can be written: not a folder, in a folder that exists (or is created) and is writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; pass a file name")
    output_dir(path.parent if str(path.parent) else Path("."), option=f"{option} {path}: its folder")
    return path


def _probe(folder: Path, option: str) -> None:
    # os.access answers from the permission bits only (always yes for root, wrong on read-only
    # mounts), so the check writes and removes one empty file.
    try:
        fd, name = tempfile.mkstemp(prefix=".busai-write-check-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ConfigError(f"{option} {folder}: cannot write there ({exc.strerror or exc}); choose a writable location") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    # Named by process id rather than by mkstemp, whose 0600 mode would outlive the rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; on success it takes ``folder``'s place (an
    old one is kept until the new one is there), on failure it is removed.

    No rename swaps two non-empty folders in one step, so the old one is moved aside first and
    removed last: an interrupt leaves the old folder, or the new one, or both under other names."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if folder.exists():
            old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
            folder.replace(old)
            tmp.replace(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename ``tmp`` onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def printable(value):
    """A file name that is not valid UTF-8 (Python keeps its bytes as surrogates) with those bytes
    spelled ``\\xff``: tables and terminals can show it, where the raw name makes csv and JSON writers fail."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value
