"""Where every run of a sweep stands, from its files and the scheduler: ``scaling status RUN_DIR``.

    >>> from scaling import status
    >>> s = status.collect("runs/quickstart")
    >>> [(r.run_id, r.state) for r in s.runs][:2]
    [('ladder-r2-1e11-s0-…', 'success'), ('ladder-r4-1e11-s0-…', 'running')]
    >>> print(status.render(s))                     # the table and a summary line
    >>> status.cancel("runs/quickstart", only=["lora-r8-1e11-s0-…"])   # scaling cancel

States: ``planned`` (never submitted), ``queued``, ``running``, ``success``, ``failed``, ``diverged``,
``cancelled``, ``timed-out``, and ``unknown`` (submitted, no result yet, scheduler unreachable).
They come from, in order of precedence:

1. ``runs/<id>/result.json`` written by the job (:mod:`scaling.train`) after the latest submission
   with a final status (success, failed, diverged);
2. the scheduler, for a job that is still queued or running: SLURM's ``squeue`` (plus ``sacct`` when
   accounting is on), the worker processes of the local executor;
3. how the job ended: a ``cancelled`` result (``SIGTERM``: cancelled; ``SIGUSR2``, the time-out and
   preemption signal, with the job gone: timed-out), SLURM's final state, ``scaling cancel``'s mark,
   the job's own record of an exception (``launch/<submission>/jobs/<id>.json``, submitit's result
   pickle) — else ``failed``: the job ended without a result.

A result older than the latest submission belongs to an earlier attempt: it still gives progress
(tokens done, last loss) but never the state. The records (``runs/<id>/launch.json``, written by
:mod:`scaling.launch`) hold the job ids, so status survives restarts of the launching shell.

Cancelling (``scaling cancel``) acts on queued and running runs only: one ``scancel`` for SLURM (a
running job gets SIGTERM: it checkpoints and records ``cancelled``); for the local executor a queued
run is claimed so that no worker starts it and a running one gets SIGTERM. The run's record gets
``cancelled_at``, so it shows as cancelled however its job ended, and the next launch resubmits it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import write_json

STATES = ("planned", "queued", "running", "success", "failed", "diverged", "cancelled", "timed-out",
          "unknown")  # fmt: skip
FINAL = ("success", "failed", "diverged")
"""Result statuses that end a run; ``cancelled`` may be followed by a requeue."""
RELAUNCH = ("planned", "failed", "cancelled", "timed-out")
"""States ``scaling launch`` submits again (``--force`` adds success and diverged)."""
RECORD = "launch.json"
SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "CONFIGURING",
                "SUSPENDED", "STOPPED", "RESIZING", "SPECIAL_EXIT"}  # fmt: skip
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
SLURM_ENDED = {"CANCELLED": "cancelled", "TIMEOUT": "timed-out", "DEADLINE": "timed-out",
               "FAILED": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed",
               "BOOT_FAIL": "failed", "PREEMPTED": "failed"}  # fmt: skip
PROBE_TIMEOUT_S = 15


# --------------------------------------------------------------------------------------------------
# Files


def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None for a missing, half-written or foreign file (status never fails on one)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


def _progress(run_path: Path) -> tuple[int | None, float | None, float | None]:
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


# --------------------------------------------------------------------------------------------------
# Schedulers


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


# --------------------------------------------------------------------------------------------------
# One run


@dataclasses.dataclass
class RunStatus:
    run_id: str
    method: str
    dial: str
    budget: float
    state: str
    executor: str | None = None
    job_id: str | None = None
    tokens_done: int = 0
    tokens_planned: int = 0
    flops_done: float = 0.0
    flops_planned: float = 0.0
    last_loss: float | None = None
    eval_loss: float | None = None
    error: str | None = None
    log: str | None = None
    submitted_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _submitit_error(record: dict[str, Any]) -> str | None:
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


def _scheduler_state(record: dict[str, Any], job: dict[str, Any] | None,
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
    if executor == "local":
        if job is not None and not job.get("ended_at") and not job.get("cancelled"):
            if process_alive(job.get("pid"), job.get("create_time")):
                return "running"
        workers = record.get("workers") or []
        if job is None and any(process_alive(w.get("pid"), w.get("create_time")) for w in workers):
            return "queued"
    return None


def run_state(run_path: Path, record: dict[str, Any] | None, result: dict[str, Any] | None,
              job: dict[str, Any] | None, slurm: dict[str, str] | None) -> tuple[str, str | None]:  # fmt: skip
    """(state, error) of one run; see the module docstring for the rules."""
    if record is None:
        return (
            (result.get("status", "failed"), result.get("error")) if result else ("planned", None)
        )
    fresh = (
        result is not None
        and (run_path / "result.json").stat().st_mtime >= record.get("submitted_at", 0) - 1.0
    )
    status = result.get("status") if fresh else None
    if status in FINAL:
        return status, result.get("error")
    sched = _scheduler_state(record, job, slurm)
    if sched in ("queued", "running"):
        return sched, None
    if status == "cancelled":
        if result.get("signal") == "SIGUSR2" or sched == "TIMEOUT":
            return "timed-out", result.get("error")
        return "cancelled", result.get("error")
    if record.get("cancelled_at"):
        return "cancelled", "cancelled by `scaling cancel`"
    if sched in SLURM_ENDED:
        return SLURM_ENDED[sched], f"SLURM state {sched}"
    error = (job or {}).get("error") or _submitit_error(record)
    if error:
        return ("timed-out" if "timed-out" in error else "failed"), error
    if sched == "unknown":
        return "unknown", "scheduler unreachable"
    return "failed", f"job {record.get('job_id')} ended without a result (log: {record.get('log')})"


# --------------------------------------------------------------------------------------------------
# A sweep


@dataclasses.dataclass
class SweepStatus:
    run_dir: str
    sweep: str | None
    runs: list[RunStatus]
    scheduler_reachable: bool | None
    """None: no SLURM job needed asking."""

    @property
    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STATES}
        for r in self.runs:
            counts[r.state] += 1
        return {s: n for s, n in counts.items() if n}

    def to_dict(self) -> dict[str, Any]:
        flops_done = sum(r.flops_done for r in self.runs)
        flops_planned = sum(r.flops_planned for r in self.runs)
        return {
            "run_dir": self.run_dir, "sweep": self.sweep,
            "runs": [r.to_dict() for r in self.runs],
            "summary": {"runs": len(self.runs), "counts": self.counts,
                        "tokens_done": sum(r.tokens_done for r in self.runs),
                        "tokens_planned": sum(r.tokens_planned for r in self.runs),
                        "flops_done": flops_done, "flops_planned": flops_planned},
            "scheduler_reachable": self.scheduler_reachable,
        }  # fmt: skip


def collect(run_dir: str | Path, only: list[str] | None = None) -> SweepStatus:
    """The state, progress and last loss of every run (or of ``only``) in ``run_dir``."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    rows = manifest.to_dicts()
    if only is not None:
        wanted = set(only)
        rows = [r for r in rows if r["run_id"] in wanted]
    records = {
        r["run_id"]: read_json_or_none(run_dir / "runs" / r["run_id"] / RECORD) for r in rows
    }
    results = {r["run_id"]: read_json_or_none(run_dir / "runs" / r["run_id"] / "result.json")
               for r in rows}  # fmt: skip
    slurm_ids = [
        str(rec["job_id"]) for rid, rec in records.items()
        if rec and rec.get("executor") == "slurm" and (results[rid] or {}).get("status") not in FINAL
    ]  # fmt: skip
    slurm = slurm_states(slurm_ids)
    out = []
    for row in rows:
        rid = row["run_id"]
        path = run_dir / "runs" / rid
        record, result = records[rid], results[rid]
        job = read_json_or_none(job_file(record["folder"], rid)) if record else None
        state, error = run_state(path, record, result, job, slurm)
        tokens, last, last_eval = _progress(path)
        if result is not None and result.get("tokens") is not None:
            tokens = max(tokens or 0, int(result["tokens"]))
            last_eval = (
                result.get("final_eval_loss", last_eval) if state == "success" else last_eval
            )
        fpt = float(row.get("flops_per_token") or 0.0)
        out.append(
            RunStatus(
                run_id=rid, method=row.get("method", ""), dial=row.get("dial") or "",
                budget=float(row.get("budget") or 0.0), state=state,
                executor=(record or {}).get("executor"),
                job_id=(record or {}).get("job_id") or (job or {}).get("job_id"),
                tokens_done=tokens or 0, tokens_planned=int(row.get("tokens") or 0),
                flops_done=(tokens or 0) * fpt, flops_planned=float(row.get("realised_flops") or 0),
                last_loss=last, eval_loss=last_eval, error=error,
                log=(record or {}).get("log") or (job or {}).get("log"), submitted_at=(record or {}).get("submitted_at"),
            )
        )  # fmt: skip
    meta = read_json_or_none(run_dir / "sweep.json") or {}
    reachable = None if not slurm_ids else slurm is not None
    return SweepStatus(str(run_dir), meta.get("sweep"), out, reachable)


# --------------------------------------------------------------------------------------------------
# Rendering


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _sci(x: float) -> str:
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _loss(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.4f}"


def render(s: SweepStatus) -> str:
    """A table of runs, the errors of failed ones, and a summary line."""
    from scaling.sweep import budget_label

    header = ("run id", "budget", "method", "dial", "state", "job", "tokens done/planned", "loss",
              "eval")  # fmt: skip
    rows = [
        (r.run_id, budget_label(r.budget), r.method, r.dial, r.state, r.job_id or "-",
         f"{_si(r.tokens_done)}/{_si(r.tokens_planned)} "
         f"{100 * r.tokens_done / r.tokens_planned if r.tokens_planned else 0:3.0f}%",
         _loss(r.last_loss), _loss(r.eval_loss))
        for r in s.runs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 6, 7, 8}

    def fmt(row) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "  ".join(cells).rstrip()

    d = s.to_dict()["summary"]
    lines = [f"sweep {s.sweep or '?'} in {s.run_dir}: {len(s.runs)} run(s)", "",
             fmt(header), *map(fmt, rows)]  # fmt: skip
    errors = [r for r in s.runs if r.error and r.state in ("failed", "timed-out", "unknown")]
    if errors:
        lines += ["", "errors:", *(f"  {r.run_id}: {r.error}" for r in errors)]
    if s.scheduler_reachable is False:
        lines += ["", "note: SLURM did not answer (squeue); states of unfinished jobs are unknown"]
    counts = ", ".join(f"{n} {state}" for state, n in s.counts.items()) or "no runs"
    share = d["flops_done"] / d["flops_planned"] if d["flops_planned"] else 0.0
    lines += ["", f"summary: {counts}; compute {_sci(d['flops_done'])} / "
                  f"{_sci(d['flops_planned'])} FLOPs ({share:.1%})"]  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Waiting, claiming, cancelling


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


def cancel(run_dir: str | Path, only: list[str] | None = None) -> list[str]:
    """Cancel the queued and running jobs of ``run_dir`` (or of ``only``); return their run ids.

    SLURM: one ``scancel`` (a running job gets SIGTERM, checkpoints and records ``cancelled``).
    Local: a queued run is claimed so no worker starts it; a running one gets SIGTERM."""
    run_dir = Path(run_dir).absolute()
    read_manifest(run_dir)
    check_only(run_dir, only)
    with lock(run_dir):
        s = collect(run_dir, only)
        if s.scheduler_reachable is False:
            raise ScalingError("SLURM did not answer (squeue): cannot tell which jobs to cancel")
        active = [r for r in s.runs if r.state in ("queued", "running")]
        slurm_ids = [str(r.job_id) for r in active if r.executor == "slurm"]
        if slurm_ids:
            try:
                out = subprocess.run(["scancel", *slurm_ids], capture_output=True, text=True,
                                     timeout=PROBE_TIMEOUT_S)  # fmt: skip
            except (OSError, subprocess.TimeoutExpired) as e:
                raise ScalingError(f"scancel failed: {e}") from None
            # A job that ended since squeue answered is not an error; anything else is.
            benign = ("already completing or completed", "Invalid job id")
            errors = [
                x for x in out.stderr.splitlines() if x.strip() and not any(b in x for b in benign)
            ]
            if out.returncode != 0 and errors:
                raise ScalingError(f"scancel failed: {errors[0].strip()}")
        now = time.time()
        for r in active:
            path = run_dir / "runs" / r.run_id / RECORD
            record = read_json_or_none(path) or {}
            if r.executor == "local":
                _cancel_local(record, r.run_id, now)
            write_json(path, record | {"cancelled_at": now})
    return [r.run_id for r in active]


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


def fmt_minutes(minutes: int | None) -> str:
    """Minutes → ``HH:MM:SS`` (hours may exceed 24, as sbatch reads it)."""
    return "-" if minutes is None else f"{minutes // 60:02d}:{minutes % 60:02d}:00"
