"""Atomic writes: a reader sees the old file or the new one, never half of either; strict JSON; and
the OS locks that keep two processes off one run or sweep directory.

    >>> from scaling import io
    >>> io.write_json("result.json", {"loss": float("nan")})   # {"loss": null, "non_finite": ["loss"]}
    >>> with io.exclusive_lock(run / ".lock", "run ladder-…"):   # one trainer per run, never stale
    ...     train()
    >>> io.is_locked(run / ".lock")                                 # what `scaling status` asks
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError, one_line


def umask() -> int:
    """The process's umask (read by setting it and putting it back: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_umask_allows(path: str | Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 for safety; what we publish gets what ``open`` would give."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill (e.g. ``savefig``,
    ``write_parquet``); on success it gets the umask's mode and replaces ``path`` in one rename, on
    any exception it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        _as_umask_allows(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON (RFC 8259 has no NaN or Infinity): non-finite numbers are written as null, and a
    dict names the keys that held one in ``non_finite`` (dotted paths), so nothing is silently lost."""
    flagged: list[str] = []
    clean = _finite(data, "", flagged)
    if flagged and isinstance(clean, dict):
        clean["non_finite"] = sorted(set(clean.get("non_finite") or []) | set(flagged))
    write_text(
        path, json.dumps(clean, indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"
    )


def _finite(obj: Any, where: str, flagged: list[str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        flagged.append(where or "value")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), flagged) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", flagged) for i, v in enumerate(obj)]
    return obj


def write_parquet(frame: Any, path: str | Path) -> None:
    """Write a polars DataFrame to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | Path, owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` in one rename.

    On any exception the temporary folder is removed and ``path`` is left as it was. An existing
    ``path`` is replaced only when it is empty or ``owned(path)`` says it is this tool's own output;
    anything else (a user's folder, a file) is refused with a ScalingError before anything is written.
    """
    path = Path(path)
    check_replaceable(path, owned)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _as_umask_allows(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(path: Path, owned: Callable[[Path], bool] | None = None) -> None:
    """Raise unless ``path`` is absent, an empty folder, or a folder ``owned`` recognises."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ScalingError(f"{path} exists and is not a folder: refusing to replace it")
    if path.is_dir() and any(path.iterdir()) and not (owned is not None and owned(path)):
        raise ScalingError(
            f"{path} is a non-empty folder this tool did not write: refusing to replace it "
            "(choose another path, or empty it yourself)"
        )


def check_writable(path: str | Path) -> None:
    """Raise a one-line ScalingError unless a folder can be created at ``path``: its nearest existing
    ancestor is a folder this process may create entries in. Probed the way :func:`atomic_dir` will
    write (a temporary sibling): ``os.access`` misleads under root and ACLs. Checked before minutes
    of work, so a bad output path costs seconds."""
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # what atomic_dir will mkdir under
        parent = parent.parent
    if not parent.is_dir():
        raise ScalingError(f"cannot write {path}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".probe"))
    except OSError as e:
        raise ScalingError(f"cannot write {path}: {e.strerror or one_line(e)}: {parent}") from None


# --------------------------------------------------------------------------------------------------
# Locks


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on ``path`` for the block, or raise a one-line
    ScalingError if another process (or another open of it here) holds it.

    The lock belongs to the open file: the kernel drops it when the holder exits, however it dies
    (kill -9 included), so it is never stale and needs no pid bookkeeping. The lock file itself stays
    (removing it would race with a waiter that opened it). Not for NFS mounts without lock support."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ScalingError(f"{what} is in use by another process (lock {path})") from None
        os.ftruncate(fd, 0)
        os.write(
            fd, f"{os.getpid()}\n".encode()
        )  # who holds it, for a human; the lock is the truth
        yield
    finally:
        os.close(fd)


def is_locked(path: str | Path) -> bool:
    """Whether some process holds :func:`exclusive_lock` on ``path`` right now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also releases the probe's own lock
    return False


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file, or raise a one-line :class:`ScalingError` naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise ScalingError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScalingError(f"unreadable {what} {path}: {e}") from None
