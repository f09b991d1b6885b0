"""Where every run of a sweep stands, from its files and the scheduler: ``scaling status RUN_DIR``.

    >>> from scaling.launch import status
    >>> s = status.collect("runs/quickstart")
    >>> [(r.run_id, r.state) for r in s.runs][:2]
    [('ladder-r2-1e11-s0-…', 'success'), ('ladder-r4-1e11-s0-…', 'running')]
    >>> print(status.render(s))                     # the table and a summary line
    >>> from scaling.launch import cancel; cancel("runs/quickstart", only=[...])  # scaling cancel

States: ``planned`` (never submitted), ``queued``, ``running``, ``success``, ``failed``, ``diverged``,
``cancelled``, ``timed-out``, ``unknown`` (submitted, no result yet, scheduler unreachable) and
``unreadable`` (a record of the run cannot be interpreted: the reason is shown; launch leaves it alone).
They come from, in order of precedence:

0. the run's lock (:data:`~scaling.runspec.RUN_LOCK`): held means a trainer is running it, whatever
   the records say (it dies with its process, so it is never stale); its pid is shown;
1. ``runs/<id>/result.json`` written by the job (:mod:`scaling.train`) after the latest submission
   with a final status (success, failed, diverged);
2. the scheduler, for a job that is still queued or running: SLURM's ``squeue`` (plus ``sacct`` when
   accounting is on), the worker processes of the local and debug executors;
3. how the job ended: a ``cancelled`` result (``SIGTERM``: cancelled; ``SIGUSR2``, the time-out and
   preemption signal, with the job gone: timed-out), SLURM's final state, ``scaling cancel``'s mark,
   the job's own record of an exception (``launch/<submission>/jobs/<id>.json``, submitit's result
   pickle) — else ``failed``: the job ended without a result.

A result older than the latest submission belongs to an earlier attempt: it still gives progress
(tokens done, last loss) but never the state. The records (``runs/<id>/launch.json``, written by
:mod:`scaling.launch`) hold the job ids, so status survives restarts of the launching shell.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from scaling.io import is_locked
from scaling.launch.records import (
    Unreadable,
    progress,
    read_job,
    read_manifest,
    read_record,
    read_result,
)
from scaling.launch.scheduler import (
    SLURM_ENDED,
    lock_holder,
    scheduler_state,
    slurm_states,
    submitit_error,
)
from scaling.runspec import FINAL, RESULT_FILE, RUN_LOCK, SPEC_FILE, budget_label, read_json_or_none

STATES = ("planned", "queued", "running", "success", "failed", "diverged", "cancelled", "timed-out",
          "unknown", "unreadable")  # fmt: skip
ERROR_STATES = ("failed", "timed-out", "unknown", "unreadable")
"""States whose ``error`` says what went wrong (listed under the table)."""
RELAUNCH = ("planned", "failed", "cancelled", "timed-out")
"""States ``scaling launch`` submits again (``--force`` adds success and diverged)."""


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
    pid: int | None = None
    """The trainer's pid while the run's lock is held (it may be a process on another machine)."""
    eta_s: float | None = None
    """A running run's seconds to go: tokens left over its observed rate (``None`` before one)."""
    note: str | None = None
    """A problem that leaves the state standing (unreadable metrics, an unreadable record of a run
    whose lock is held)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_state(run_path: Path, record: dict[str, Any] | None, result: dict[str, Any] | None,
              job: dict[str, Any] | None, slurm: dict[str, str] | None) -> tuple[str, str | None]:  # fmt: skip
    """(state, error) of one run from its type-checked records; see the module docstring."""
    if is_locked(run_path / RUN_LOCK):
        return "running", None
    if record is None:
        return (
            (result.get("status") or "failed", result.get("error")) if result else ("planned", None)
        )
    submitted = record.get("submitted_at") or 0.0
    fresh = result is not None and _mtime(run_path / RESULT_FILE) >= submitted - 1.0
    status = result.get("status") if fresh else None
    if status in FINAL:
        return status, result.get("error")
    sched = scheduler_state(record, job, slurm)
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
    error = (job or {}).get("error") or submitit_error(record)
    if error:
        return ("timed-out" if "timed-out" in error else "failed"), error
    if sched == "unknown":
        return "unknown", "scheduler unreachable"
    return "failed", f"job {record.get('job_id')} ended without a result (log: {record.get('log')})"


def _mtime(path: Path) -> float:
    """Modification time, or -inf for a file gone since it was read (moved by a forced relaunch)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


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


@dataclasses.dataclass
class RunFiles:
    """What one run's files say: launch record, result and job record (None: absent), or the reason
    one of them cannot be read."""

    record: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    problem: str | None = None


def read_run(run_path: Path) -> RunFiles:
    """The run's records, type-checked; an unreadable one is reported, not raised."""
    files = RunFiles()
    try:
        files.record = read_record(run_path)
        files.result = read_result(run_path)
        record = files.record or {}
        files.job = read_job(record.get("folder"), run_path.name)
    except Unreadable as e:
        files.problem = str(e)
    return files


def collect(run_dir: str | Path, only: list[str] | None = None) -> SweepStatus:
    """The state, progress and last loss of every run (or of ``only``) in ``run_dir``."""
    run_dir = Path(run_dir)
    rows = read_manifest(run_dir).to_dicts()
    if only is not None:
        wanted = set(only)
        rows = [r for r in rows if r["run_id"] in wanted]
    files = {r["run_id"]: read_run(run_dir / "runs" / r["run_id"]) for r in rows}
    slurm_ids = [
        str(f.record["job_id"]) for f in files.values()
        if f.record and f.record.get("executor") == "slurm" and f.record.get("job_id") is not None
        and (f.result or {}).get("status") not in FINAL
    ]  # fmt: skip
    slurm = slurm_states(slurm_ids)
    out = [_run_status(run_dir / "runs" / row["run_id"], row, files[row["run_id"]], slurm)
           for row in rows]  # fmt: skip
    meta = read_json_or_none(run_dir / "sweep.json") or {}
    reachable = None if not slurm_ids else slurm is not None
    name = meta.get("sweep")
    return SweepStatus(str(run_dir), name if isinstance(name, str) else None, out, reachable)


def _run_status(path: Path, row: dict[str, Any], f: RunFiles,
                slurm: dict[str, str] | None) -> RunStatus:  # fmt: skip
    """One run's line: its state (the lock first), progress, and what to show about it."""
    locked = is_locked(path / RUN_LOCK)
    note = None
    if locked:  # a trainer holds it: running, even when a record of it cannot be read
        state, error, note = "running", None, f.problem
    elif f.problem:
        state, error = "unreadable", f.problem
    elif not (path / SPEC_FILE).is_file():
        state = "unreadable"
        error = (f"no runs/{path.name}/{SPEC_FILE}: its planning was interrupted (or is being "
                 "written); run the same `scaling sweep` again")  # fmt: skip
    else:
        state, error = run_state(path, f.record, f.result, f.job, slurm)
    record, job, result = f.record or {}, f.job or {}, f.result or {}
    p = progress(path)
    tokens, last_eval = p.tokens, p.eval_loss
    if result.get("tokens") is not None:
        tokens = max(tokens or 0, int(result["tokens"]))
        if state == "success" and result.get("final_eval_loss") is not None:
            last_eval = float(result["final_eval_loss"])
    fpt = _number(row.get("flops_per_token"))
    job_id = record.get("job_id") or job.get("job_id")
    return RunStatus(
        run_id=row["run_id"], method=_text(row.get("method")), dial=_text(row.get("dial")),
        budget=_number(row.get("budget")), state=state, executor=record.get("executor"),
        job_id=None if job_id is None else str(job_id),
        tokens_done=tokens or 0, tokens_planned=int(_number(row.get("tokens"))),
        flops_done=(tokens or 0) * fpt, flops_planned=_number(row.get("realised_flops")),
        last_loss=p.loss, eval_loss=last_eval, error=error,
        log=record.get("log") or job.get("log"), submitted_at=record.get("submitted_at"),
        pid=lock_holder(path / RUN_LOCK) if locked else None,
        eta_s=_eta(state, _number(row.get("tokens")) - (tokens or 0), p.tokens_per_s),
        note="; ".join(x for x in (note, p.problem) if x) or None,
    )  # fmt: skip


def _eta(state: str, tokens_left: float, rate: float | None) -> float | None:
    """Seconds a running run has left at its observed rate; None when that is unknown, and when its
    tokens are all done (it is evaluating or saving: its rate says nothing about that)."""
    return tokens_left / rate if state == "running" and rate and tokens_left > 0 else None


def _number(value: Any) -> float:
    """A manifest cell as a finite number (0 for a missing or mistyped one: display only)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


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
    header = ("run id", "budget", "method", "dial", "state", "job", "tokens done/planned", "loss",
              "eval", "eta")  # fmt: skip
    rows = [
        (r.run_id, budget_label(r.budget), r.method, r.dial, r.state,
         r.job_id or (f"pid {r.pid}" if r.pid is not None else "-"),
         f"{_si(r.tokens_done)}/{_si(r.tokens_planned)} "
         f"{100 * r.tokens_done / r.tokens_planned if r.tokens_planned else 0:3.0f}%",
         _loss(r.last_loss), _loss(r.eval_loss), fmt_seconds(r.eta_s))
        for r in s.runs
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 6, 7, 8, 9}

    def fmt(row) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]  # fmt: skip
        return "  ".join(cells).rstrip()

    d = s.to_dict()["summary"]
    lines = [f"sweep {s.sweep or '?'} in {s.run_dir}: {len(s.runs)} run(s)", "",
             fmt(header), *map(fmt, rows)]  # fmt: skip
    errors = [r for r in s.runs if r.error and r.state in ERROR_STATES]
    if errors:
        lines += ["", "errors:", *(f"  {r.run_id}: {r.error}" for r in errors)]
    notes = [r for r in s.runs if r.note]
    if notes:
        lines += ["", "notes:", *(f"  {r.run_id}: {r.note}" for r in notes)]
    if s.scheduler_reachable is False:
        lines += ["", "note: SLURM did not answer (squeue); states of unfinished jobs are unknown"]
    counts = ", ".join(f"{n} {state}" for state, n in s.counts.items()) or "no runs"
    share = d["flops_done"] / d["flops_planned"] if d["flops_planned"] else 0.0
    lines += ["", f"summary: {counts}; compute {_sci(d['flops_done'])} / "
                  f"{_sci(d['flops_planned'])} FLOPs ({share:.1%})"]  # fmt: skip
    etas = [r.eta_s for r in s.runs if r.eta_s is not None]
    if etas:
        lines.append(f"running: the last of {len(etas)} run(s) with a measured rate ends in "
                     f"~{fmt_seconds(max(etas))} at its observed tokens/s")  # fmt: skip
    return "\n".join(lines)


def fmt_seconds(seconds: float | None) -> str:
    """``None`` → ``-``; else ``42s``, ``17m``, ``3h05m``, ``2d04h``."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_minutes(minutes: int | None) -> str:
    """Minutes → ``HH:MM:SS`` (hours may exceed 24, as sbatch reads it)."""
    return "-" if minutes is None else f"{minutes // 60:02d}:{minutes % 60:02d}:00"
