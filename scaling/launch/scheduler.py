"""Asking the schedulers: SLURM (``scontrol ping``, ``squeue``, ``sacct``, submitit's result pickles) and
the local executor's worker processes.

    >>> from scaling.launch import scheduler
    >>> scheduler.slurm_problem()                 # None when a controller answers, else why not
    >>> scheduler.slurm_states(["812_0", "812_1"])   # {"812_0": "RUNNING", ...}; None if unreachable

Every probe has a timeout (:data:`PROBE_TIMEOUT_S`): a controller that hangs must not hang ``status``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from scaling.launch.records import live_workers

SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING",
                "SUSPENDED", "STOPPED", "RESIZING", "SPECIAL_EXIT"}  # fmt: skip
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
SLURM_ENDED = {"CANCELLED": "cancelled", "TIMEOUT": "timed-out", "DEADLINE": "timed-out",
               "FAILED": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed",
               "BOOT_FAIL": "failed", "PREEMPTED": "failed"}  # fmt: skip
PROBE_TIMEOUT_S = 15


def slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """SLURM state per job id (``123_4`` for array tasks), None when the controller cannot be asked.

    ``squeue -t all`` knows jobs until ``MinJobAge`` after they end; ``sacct`` (only with accounting)
    knows them for good. Jobs neither knows are simply absent."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        return None
    masters = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", ",".join(masters), "-o", "%i|%T"],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
        )  # fmt: skip
    except (subprocess.TimeoutExpired, OSError):
        return None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        return None
    states = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    missing = [j for j in job_ids if j not in states]
    if missing and shutil.which("sacct"):
        try:
            acct = subprocess.run(
                ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j",
                 ",".join(sorted({j.split("_")[0] for j in missing}))],
                capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
            )  # fmt: skip
            for line in acct.stdout.splitlines() if acct.returncode == 0 else []:
                jid, _, state = line.partition("|")
                if jid in missing:
                    states[jid] = state.split()[0]  # "CANCELLED by 0" → CANCELLED
        except (subprocess.TimeoutExpired, OSError):
            pass
    return states


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` still is the process started at ``create_time`` (guards against PID reuse)."""
    if not pid:
        return False
    import psutil

    try:
        p = psutil.Process(int(pid))
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(p.create_time() - float(create_time)) < 1.0
    except (psutil.Error, ValueError):
        return False


def submitit_error(record: dict[str, Any]) -> str | None:
    """The exception a SLURM job died of, from submitit's result pickle (None: none recorded)."""
    folder, job_id = record.get("folder"), record.get("job_id")
    if not folder or not job_id:
        return None
    path = Path(folder) / f"{job_id}_0_result.pkl"
    if not path.is_file():
        return None
    import pickle

    try:
        with path.open("rb") as f:
            outcome, payload = pickle.load(f)
    except Exception:
        return None
    if outcome != "error":
        return None
    lines = [x for x in str(payload).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else "error"


def scheduler_state(record: dict[str, Any], job: dict[str, Any] | None,
                     slurm: dict[str, str] | None) -> str | None:  # fmt: skip
    """``queued``/``running`` while the job is active, a final SLURM state name when it is known to
    have ended, None when gone (or never known), ``unknown`` when the scheduler cannot be asked."""
    executor = record.get("executor")
    if executor == "slurm":
        if slurm is None:
            return "unknown"
        state = slurm.get(str(record.get("job_id")))
        if state in SLURM_QUEUED:
            return "queued"
        if state in SLURM_RUNNING:
            return "running"
        return state
    if executor not in ("local", "debug"):
        return None
    # The recorded workers are submitit's controllers; the processes that take runs record
    # themselves (worker files), and go on as orphans when a controller dies.
    folder = record.get("folder")
    recorded = [w for w in live_workers(folder) if _alive(w)] if folder else []
    if executor == "debug" and not recorded:
        # The launching process is the worker and may live on (a notebook) after an interrupted
        # launch: only while it is still working through the runs do they count as queued/running.
        return None
    if job is not None and not job.get("ended_at") and not job.get("cancelled") and _alive(job):
        return "running"
    if job is None and (recorded or any(_alive(w) for w in record.get("workers") or [])):
        return "queued"
    return None


def _alive(entry: dict[str, Any]) -> bool:
    return process_alive(entry.get("pid"), entry.get("create_time"))


def lock_holder(lock: Path) -> int | None:
    """The pid on the first line of a held lock file (:func:`scaling.io.exclusive_lock` writes it;
    for display: the lock itself is the truth, and the holder may run on another machine)."""
    try:
        first = lock.read_text().split("\n", 1)[0].strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(first) if first.isdigit() else None


def local_holder(lock: Path) -> int | None:
    """The pid of the lock's holder when it is a process on this machine that has the lock file
    open (so signalling it cannot hit an unrelated process, e.g. a pid from another node)."""
    pid = lock_holder(lock)
    if pid is None:
        return None
    import psutil

    target = os.path.realpath(lock)
    try:
        files = psutil.Process(pid).open_files()
    except (psutil.Error, OSError):
        return None
    return pid if any(os.path.realpath(f.path) == target for f in files) else None


def slurm_problem() -> str | None:
    """Why SLURM cannot take jobs from here (None: a controller answered ``scontrol ping``)."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "SLURM's commands (sbatch, scontrol) are not on PATH"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not Path(conf).is_file():
        return f"no SLURM configuration at {conf} (set SLURM_CONF)"
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"slurmctld did not answer `scontrol ping` within {PROBE_TIMEOUT_S} s"
    first = next((x.strip() for x in (out.stdout + out.stderr).splitlines() if x.strip()), "")
    if out.returncode != 0 or " is UP" not in out.stdout:
        return f"no reachable slurmctld ({first or f'scontrol ping exit {out.returncode}'})"
    return None


def default_executor() -> str:
    return "slurm" if slurm_problem() is None else "local"
