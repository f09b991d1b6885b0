"""Waiting for, and cancelling, the runs of a sweep: ``scaling launch --wait`` and ``scaling cancel``.

    >>> from scaling.launch import control
    >>> s = control.wait("runs/quickstart", progress=True)      # until nothing is queued or running
    >>> control.cancel("runs/quickstart", only=["lora-r8-1e11-s0-…"])

Cancelling acts on queued and running runs only: one ``scancel`` for SLURM (a running job gets SIGTERM:
it checkpoints and records ``cancelled``); for the local executor a queued run is claimed so that no
worker starts it and a running one gets SIGTERM; any other run whose lock is held gets SIGTERM sent to
the lock's holder, when that is a process here that holds it (see :func:`cancel`). The run's record gets ``cancelled_at``, so it shows as
cancelled however its job ended, and the next launch resubmits it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import write_json
from scaling.launch.records import (
    RECORD,
    Unreadable,
    check_only,
    claim,
    job_file,
    lock,
    read_manifest,
    read_record,
)
from scaling.launch.scheduler import PROBE_TIMEOUT_S, local_holder, process_alive
from scaling.launch.status import RunStatus, SweepStatus, collect
from scaling.runspec import RUN_LOCK, read_json_or_none


def wait(run_dir: str | Path, run_ids: list[str] | None = None, *, poll_s: float = 2.0,
         timeout_s: float | None = None, progress: bool = False) -> SweepStatus:  # fmt: skip
    """Poll until none of ``run_ids`` (default: all) is queued or running; return the last status.

    ``progress``: a bar over the planned compute on a terminal, else a line every 30 s (stderr)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    bar, last_line = None, 0.0
    try:
        while True:
            s = collect(run_dir, run_ids)
            active = any(r.state in ("queued", "running") for r in s.runs)
            if progress:
                bar, last_line = _show_progress(s, bar, last_line, final=not active)
            if not active:
                return s
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"runs still active after {timeout_s} s: {s.counts}")
            time.sleep(poll_s)
    finally:
        if bar is not None:
            bar.close()


def _show_progress(s: SweepStatus, bar, last_line: float, *, final: bool):
    """Compute done / planned as a tqdm bar (terminal) or a periodic plain line."""
    import sys

    summary = s.to_dict()["summary"]
    done, planned = summary["flops_done"], summary["flops_planned"] or 1.0
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items())
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        if bar is None:
            bar = tqdm(total=100.0, unit="%", desc="compute", bar_format="{l_bar}{bar}| {postfix}")
        bar.n = 100.0 * done / planned
        bar.set_postfix_str(counts)
        return bar, last_line
    now = time.monotonic()
    if final or now - last_line >= 30.0:
        print(
            f"{100.0 * done / planned:5.1f}% of planned compute; {counts}",
            file=sys.stderr,
            flush=True,
        )
        last_line = now
    return bar, last_line


def cancel(run_dir: str | Path, only: list[str] | None = None) -> list[str]:
    """Cancel the queued and running jobs of ``run_dir`` (or of ``only``); return their run ids.

    SLURM: one ``scancel`` (a running job gets SIGTERM, checkpoints and records ``cancelled``).
    Local: a queued run is claimed so no worker starts it; a running one gets SIGTERM. A run whose
    lock a trainer holds outside SLURM (debug executor, an orphaned local worker, ``scaling train``
    by hand) gets SIGTERM when that trainer is a process of this machine holding the lock file open;
    one that is not (another node, another user) is refused in one line before anything is done."""
    run_dir = Path(run_dir).absolute()
    read_manifest(run_dir)
    check_only(run_dir, only)
    with lock(run_dir):
        s = collect(run_dir, only)
        if s.scheduler_reachable is False:
            raise ScalingError("SLURM did not answer (squeue): cannot tell which jobs to cancel")
        active = [r for r in s.runs if r.state in ("queued", "running")]
        holders = _trainers_to_signal(run_dir, active)
        _scancel([str(r.job_id) for r in active if r.executor == "slurm" and r.job_id])
        now = time.time()
        for r in active:
            run_path = run_dir / "runs" / r.run_id
            record = _record_or_none(run_path)
            if r.run_id in holders:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(holders[r.run_id], signal.SIGTERM)
            elif r.executor == "local" and record is not None:
                _cancel_local(record, r.run_id, now)
            # A run trained by hand has no record to mark; an unreadable one is left as it is.
            if record is not None:
                write_json(run_path / RECORD, record | {"cancelled_at": now})
    return [r.run_id for r in active]


def _trainers_to_signal(run_dir: Path, active: list[RunStatus]) -> dict[str, int]:
    """run id → pid of each locked run outside SLURM; a ScalingError if one cannot be signalled."""
    holders, foreign = {}, []
    for r in active:
        if r.pid is None or r.executor == "slurm":  # not locked, or scancel reaches it
            continue
        pid = local_holder(run_dir / "runs" / r.run_id / RUN_LOCK)
        if pid is None or pid == os.getpid():
            foreign.append(f"{r.run_id} (pid {r.pid})")
        else:
            holders[r.run_id] = pid
    if foreign:
        raise ScalingError(
            f"cannot cancel {len(foreign)} run(s) trained by a process this command cannot signal "
            f"(on another machine, another user's, or this very process): {', '.join(foreign[:3])}"
            + (" ..." if len(foreign) > 3 else "")
            + "; stop it where it runs (nothing was cancelled)"
        )
    return holders


def _scancel(job_ids: list[str]) -> None:
    if not job_ids:
        return
    try:
        out = subprocess.run(["scancel", *job_ids], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ScalingError(f"scancel failed: {e}") from None
    # A job that ended since squeue answered is not an error; anything else is.
    benign = ("already completing or completed", "Invalid job id")
    errors = [x for x in out.stderr.splitlines() if x.strip() and not any(b in x for b in benign)]
    if out.returncode != 0 and errors:
        raise ScalingError(f"scancel failed: {errors[0].strip()}")


def _record_or_none(run_path: Path) -> dict[str, Any] | None:
    try:
        return read_record(run_path)
    except Unreadable:
        return None


def _cancel_local(record: dict[str, Any], run_id: str, now: float) -> None:
    folder = record.get("folder")
    if not folder or claim(folder, run_id, {"run_id": run_id, "cancelled": True, "ended_at": now}):
        return
    for _ in range(20):  # a worker claimed it a moment ago: wait for its pid
        job = read_json_or_none(job_file(folder, run_id))
        if job is not None:
            break
        time.sleep(0.1)
    job = job or {}
    if not job.get("ended_at") and process_alive(job.get("pid"), job.get("create_time")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(job["pid"]), signal.SIGTERM)
