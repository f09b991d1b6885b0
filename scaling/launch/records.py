"""The launcher's records in a run directory: the manifest, each run's ``launch.json``, the job files a
submission's jobs write, the lock that serialises launches, and a run's progress from its metrics.

    >>> from scaling.launch import records
    >>> records.read_manifest(Path("runs/quickstart")).height      # planned runs
    >>> records.job_file("runs/q/launch/<submission>", run_id)     # what the job itself recorded
    >>> with records.lock(Path("runs/q")): ...                     # one launch or cancel at a time

Readers here never fail on a half-written or foreign file (status must always answer); writers are
atomic (:mod:`scaling.io`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import write_json
from scaling.runspec import LAUNCH_RECORD

RECORD = LAUNCH_RECORD
"""``runs/<id>/launch.json``: the latest submission of a run and, under ``history``, the earlier ones."""


def read_manifest(run_dir: Path):
    """The sweep's manifest (polars DataFrame), or a one-line error for a directory without one."""
    import polars as pl

    path = run_dir / "manifest.parquet"
    if not run_dir.is_dir():
        raise ScalingError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise ScalingError(
            f"{run_dir} has no manifest.parquet: not a run directory (plan one with "
            f"`scaling sweep SPEC --out {run_dir}`)"
        )
    try:
        return pl.read_parquet(path)
    except Exception as e:  # polars raises several types for a damaged file
        raise ScalingError(f"unreadable manifest {path}: {e}") from None


def job_file(submission_dir: str | Path, run_id: str) -> Path:
    """What the job itself records: pid, host, attempt, start/end, its exception if any."""
    return Path(submission_dir) / "jobs" / f"{run_id}.json"


def progress(run_path: Path) -> tuple[int | None, float | None, float | None]:
    """(tokens done, last train loss, last eval loss) from ``metrics.parquet``."""
    path = run_path / "metrics.parquet"
    if not path.is_file():
        return None, None, None
    import polars as pl

    try:
        m = pl.read_parquet(path, columns=["kind", "tokens", "loss"])
    except Exception:  # being replaced right now, or foreign: no progress rather than an error
        return None, None, None
    train, evals = m.filter(pl.col("kind") == "train"), m.filter(pl.col("kind") == "eval")
    tokens = int(m["tokens"].max()) if m.height else None
    last = train["loss"][-1] if train.height else None
    last_eval = evals["loss"][-1] if evals.height else None
    return tokens, last, last_eval


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Serialise launches and cancels of one run directory (``launch/.lock``; a ``launch/`` folder
    created here and left holding nothing else is removed again)."""
    folder = run_dir / "launch"
    created = not folder.exists()
    folder.mkdir(exist_ok=True)
    try:
        with open(folder / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ScalingError(
                    f"another `scaling launch` or `scaling cancel` is using {run_dir}"
                ) from None
            yield
    finally:
        if created and [p.name for p in folder.iterdir()] == [".lock"]:
            shutil.rmtree(folder, ignore_errors=True)


def check_only(run_dir: Path, only: list[str] | None) -> None:
    """A one-line error when ``--only`` names a run the sweep does not have."""
    if not only:
        return
    have = set(read_manifest(run_dir)["run_id"].to_list())
    unknown = [r for r in only if r not in have]
    if unknown:
        raise ScalingError(
            f"--only names {len(unknown)} run(s) not in {run_dir}: {', '.join(unknown[:3])}"
            + (" ..." if len(unknown) > 3 else "")
        )


def claim(folder: str | Path, run_id: str, content: dict[str, Any] | None = None) -> bool:
    """Atomically take a run of a local submission (its job file must not exist yet)."""
    path = job_file(folder, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    if content is not None:
        write_json(path, content)
    return True
