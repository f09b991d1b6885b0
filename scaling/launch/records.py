"""The launcher's records in a run directory: the manifest, each run's ``launch.json``, the job files a
submission's jobs write, the lock that serialises launches, and a run's progress from its metrics.

    >>> from scaling.launch import records
    >>> records.read_manifest(Path("runs/quickstart")).height      # planned runs
    >>> records.job_file("runs/q/launch/<submission>", run_id)     # what the job itself recorded
    >>> with records.lock(Path("runs/q")): ...                     # one launch or cancel at a time

Readers here never fail on a damaged or foreign file with anything but :class:`Unreadable` (one run's
problem, which ``status`` shows on that run's line while the rest of the table prints) or, for the
manifest that every run needs, a one-line ScalingError; writers are atomic (:mod:`scaling.io`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError, one_line
from scaling.io import write_json
from scaling.runspec import (
    LAUNCH_RECORD,
    METRICS_FILE,
    RESULT_FILE,
    STATUSES,
    read_manifest_file,
)

RECORD = LAUNCH_RECORD
"""``runs/<id>/launch.json``: the latest submission of a run and, under ``history``, the earlier ones."""


def read_manifest(run_dir: Path):
    """The sweep's manifest (polars DataFrame), or a one-line error for a directory without one."""

    path = run_dir / "manifest.parquet"
    if not run_dir.is_dir():
        raise ScalingError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise ScalingError(
            f"{run_dir} has no manifest.parquet: not a run directory (plan one with "
            f"`scaling sweep SPEC --out {run_dir}`)"
        )
    return read_manifest_file(path)


def job_file(submission_dir: str | Path, run_id: str) -> Path:
    """What the job itself records: pid, host, attempt, start/end, its exception if any."""
    return Path(submission_dir) / "jobs" / f"{run_id}.json"


@dataclasses.dataclass(frozen=True)
class Progress:
    """How far a run got, from its metrics: tokens done, last train and eval losses; ``problem`` says
    why the metrics could not be read (the run's state does not depend on them)."""

    tokens: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    """Observed training rate: the median of the last :data:`RATE_ROWS` train rows' ``tokens_per_s``."""
    problem: str | None = None


RATE_ROWS = 20


def progress(run_path: Path) -> Progress:
    """A run's progress from ``metrics.parquet`` (the trainer rebuilds it after every write).

    The one place that reads metrics for status and launch: wrong column types, non-numbers and
    damaged bytes give a :class:`Progress` with ``problem`` set, never an exception."""
    path = run_path / METRICS_FILE
    if not path.is_file():
        return Progress()
    import polars as pl

    try:
        names = pl.read_parquet_schema(path)
        rate = ["tokens_per_s"] if "tokens_per_s" in names else []
        m = pl.read_parquet(path, columns=["kind", "tokens", "loss", *rate])
    except Exception as e:  # damaged, foreign, or lacking a column
        return Progress(problem=f"{METRICS_FILE} unreadable: {one_line(e)[:200]}")
    wrong = [c for c, ok in (("kind", m.schema["kind"] in (pl.String, pl.Categorical)),
                             ("tokens", m.schema["tokens"].is_numeric()),
                             ("loss", m.schema["loss"].is_numeric())) if not ok]  # fmt: skip
    if wrong:
        found = ", ".join(f"{c} is {m.schema[c]}" for c in wrong)
        return Progress(problem=f"{METRICS_FILE} has wrong column types ({found})")
    m = m.with_columns(pl.col("kind").cast(pl.String))
    tokens = m["tokens"].cast(pl.Float64)
    tokens = tokens.filter(tokens.is_finite() & (tokens >= 0))
    train = m.filter(pl.col("kind") == "train")
    return Progress(
        tokens=int(tokens.max()) if tokens.len() else None,
        loss=_last_finite(train["loss"]),
        eval_loss=_last_finite(m.filter(pl.col("kind") == "eval")["loss"]),
        tokens_per_s=_rate(train["tokens_per_s"])
        if rate and train["tokens_per_s"].dtype.is_numeric()
        else None,
    )


def _rate(column) -> float | None:
    values = [float(x) for x in column.tail(RATE_ROWS).to_list()
              if x is not None and math.isfinite(x) and x > 0]  # fmt: skip
    return statistics.median(values) if values else None


def _last_finite(losses) -> float | None:
    values = [float(x) for x in losses.to_list() if x is not None]
    return values[-1] if values and math.isfinite(values[-1]) else None


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


# --------------------------------------------------------------------------------------------------
# Reading a run's records with their types checked


class Unreadable(Exception):
    """A file of one run that cannot be interpreted (not JSON, not an object, a field of the wrong
    type): ``status`` shows that run as ``unreadable: <reason>`` and ``launch`` leaves it alone."""


NUMBER = (int, float)
ID = (str, int)
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "submission": (str,), "folder": (str,), "executor": (str,), "job_id": ID,
    "array_index": (int,), "log": (str,), "submitted_at": NUMBER, "time_limit_min": (int,),
    "estimate_s": NUMBER, "max_requeues": (int,), "cancelled_at": NUMBER, "history": (list,),
    "workers": (list,),
}  # fmt: skip
"""``launch.json`` fields the launcher reads, with their types (None is always allowed)."""
PROCESS_FIELDS: dict[str, tuple[type, ...]] = {"pid": (int,), "create_time": NUMBER, "log": (str,)}
"""An entry of ``launch.json``'s ``workers``."""
RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    "status": (str,), "error": (str,), "signal": (str,), "method": (str,), "tokens": NUMBER,
    "steps": (int,), "planned_steps": (int,), "planned_tokens": NUMBER, "flops": NUMBER,
    "wall_time_s": NUMBER, "tokens_per_s": NUMBER, "flops_per_token": NUMBER,
    "final_eval_loss": NUMBER,
}  # fmt: skip
"""``result.json`` fields status and launch read."""
JOB_FIELDS: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "pid": (int,), "create_time": NUMBER, "host": (str,), "job_id": ID,
    "log": (str,), "attempt": (int,), "started_at": NUMBER, "ended_at": NUMBER, "status": (str,),
    "error": (str,), "cancelled": (bool,),
}  # fmt: skip
"""``launch/<submission>/jobs/<id>.json``, written by the job itself."""
TYPE_NAMES = {int: "an integer", float: "a number", str: "text", list: "a list", bool: "true/false"}


def read_record(run_path: Path) -> dict[str, Any] | None:
    """``runs/<id>/launch.json`` (None: never submitted), its fields type-checked."""
    record = _read_object(run_path / RECORD)
    if record is not None:
        _check_fields(record, RECORD_FIELDS, RECORD)
        for i, worker in enumerate(record.get("workers") or []):
            if not isinstance(worker, dict):
                raise Unreadable(f"{RECORD}: workers[{i}] must be an object, got {_show(worker)}")
            _check_fields(worker, PROCESS_FIELDS, f"{RECORD} workers[{i}]")
    return record


def read_result(run_path: Path) -> dict[str, Any] | None:
    """``runs/<id>/result.json`` (None: no result yet), its fields type-checked."""
    result = _read_object(run_path / RESULT_FILE)
    if result is not None:
        _check_fields(result, RESULT_FIELDS, RESULT_FILE)
        if result.get("status") not in STATUSES:
            raise Unreadable(
                f"{RESULT_FILE}: status must be one of {', '.join(STATUSES)}, got "
                f"{_show(result.get('status'))}"
            )
    return result


def read_job(folder: str | None, run_id: str) -> dict[str, Any] | None:
    """What the job recorded (None: not started, or only claimed: an empty file)."""
    if not folder:
        return None
    path = job_file(folder, run_id)
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:  # claimed by a worker, the record not written yet
            return None
    job = _read_object(path)
    if job is not None:
        _check_fields(job, JOB_FIELDS, f"launch/{Path(folder).name}/jobs/{run_id}.json")
    return job


def _read_object(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise Unreadable(f"{path.name}: {one_line(e)}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise Unreadable(f"{path.name} is not JSON ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise Unreadable(f"{path.name} is not a JSON object but {_show(data)}")
    return data


def _check_fields(data: dict[str, Any], fields: dict[str, tuple[type, ...]], where: str) -> None:
    for key, types in fields.items():
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            want = " or ".join(dict.fromkeys(TYPE_NAMES[t] for t in types))
            raise Unreadable(f"{where}: {key} must be {want}, got {_show(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise Unreadable(f"{where}: {key} must be finite, got {value}")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------------
# Local worker processes


def worker_file(submission_dir: str | Path, pid: int) -> Path:
    """What a local worker process records about itself (pid, start, end): the submitit controller
    whose pid ``launch.json`` holds may die while its worker goes on as an orphan."""
    return Path(submission_dir) / "workers" / f"{pid}.json"


def live_workers(submission_dir: str | Path) -> list[dict[str, Any]]:
    """The workers of a local submission that have not recorded their end (well-formed ones only)."""
    out = []
    for path in sorted((Path(submission_dir) / "workers").glob("*.json")):
        try:
            data = _read_object(path)
            if data is not None:
                _check_fields(data, PROCESS_FIELDS | {"ended_at": NUMBER}, path.name)
        except Unreadable:
            continue  # an unreadable worker file cannot vouch for a living worker
        if data is not None and data.get("ended_at") is None:
            out.append(data)
    return out
