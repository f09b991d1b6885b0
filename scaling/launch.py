"""Submit a sweep's runs as one job array, safely repeatable: ``scaling launch RUN_DIR``.

    >>> from scaling import launch
    >>> out = launch.launch("runs/quickstart", launch.LaunchSpec(executor="slurm", partition="gpu",
    ...                     gpus_per_node=1, mem="32GB", time="auto", throughput=2e14))
    >>> out.job_ids[:2], out.skipped            # ['812_0', '812_1'], {'success': 3, 'running': 1}
    >>> status.cancel("runs/quickstart")        # scancel every queued or running job (scaling.status)

Built on submitit (``AutoExecutor`` with an explicit ``cluster``: it would pick SLURM whenever
``srun`` is on PATH). Executors:

- ``slurm``: one ``sbatch --array`` for the whole submission (``executor.batch()``); each task runs
  :class:`TrainJob`, i.e. ``scaling.train.train(RUN_DIR/runs/<id>)``. SLURM sends ``SIGUSR2`` 90 s before
  the time limit (and on preemption): the training loop saves a checkpoint and hands the signal to
  submitit, which calls :meth:`TrainJob.checkpoint` and requeues the task (at most ``max_requeues``
  time-outs); the requeued task resumes from the run's checkpoint and appends to the same log.
- ``local``: ``array_parallelism`` worker processes (default 1) that take runs one at a time;
  the default when no SLURM controller answers.
- ``debug``: every run in this process, one after the other (``pdb``-friendly).

Idempotent: a launch submits only runs that are planned, failed, cancelled or timed out — never one
that is queued or running, and a finished one (success, diverged) only with ``force`` (its outputs
are first moved to ``runs/<id>/archive/<time>/``). A lock file serialises concurrent launches. The
records stay in the run directory, so ``scaling status`` works from any shell, later:

- ``runs/<id>/launch.json``: the latest submission of the run (executor, job id, log, time limit,
  ``cancelled_at``) and its earlier ones under ``history``;
- ``launch/<submission>/``: submitit's folder (sbatch script, pickles, logs ``<job>_0_log.{out,err}``),
  ``submission.json`` (options, runs, job ids, wall time) and ``jobs/<id>.json``, written by the job
  itself (pid, host, attempt, start, end, exception).

Nothing is recorded unless the submission succeeded. Time limits (``time = "auto"``): each run needs
planned FLOPs / throughput × ``time_margin`` + :data:`STARTUP_S` (only the FLOPs still to do for an
interrupted run); one array has one limit, the largest of its runs'. The throughput (FLOP/s) is
``throughput`` when given, else measured on this sweep's finished runs (realised FLOPs / wall time,
per method), else the limit is :data:`DEFAULT_TIME`. SLURM memory sizes use SLURM's units (1G = 1024M).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling import status
from scaling.config import Config, check, check_choice, check_positive_int
from scaling.errors import ScalingError
from scaling.io import write_json

EXECUTORS = ("slurm", "local", "debug")
STARTUP_S = 120.0
"""Seconds a job spends outside the training loop (start-up, model and data loading, evaluation)."""
MIN_TIME_MIN = 5
"""Shortest limit ``auto`` gives: submitit signals 90 s before the limit; at ≤ 2 min a job is
signalled as it starts (shared/notes/slurm-on-localhost.md)."""
DEFAULT_TIME = "01:00:00"
"""``auto`` without any throughput figure; a run that needs longer requeues and resumes."""
ARCHIVED = ("result.json", "metrics.parquet", "checkpoints", "model")
"""What a forced re-run moves aside (never deletes)."""


# --------------------------------------------------------------------------------------------------
# Options


def slurm_mem(text: str) -> str:
    """``32GB`` / ``32G`` / ``1.5TiB`` / ``500MB`` → sbatch's ``--mem`` (``32G``, ``1536G``, ``500M``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])(?:I?B)?\s*", str(text), re.IGNORECASE)
    if m is None or float(m[1]) <= 0:
        raise ScalingError(
            f"invalid memory size {text!r}: give a positive size, e.g. 32GB or 500MB"
        )
    value, unit = float(m[1]), m[2].upper()
    if value.is_integer():
        return f"{int(value)}{unit}"
    if unit == "K":
        return f"{math.ceil(value)}K"
    return f"{math.ceil(value * 1024)}{'KMGT'['KMGT'.index(unit) - 1]}"


def parse_time(text: str) -> int:
    """``HH:MM:SS`` or ``D-HH:MM:SS`` → whole minutes (rounded up); at least 3."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):([0-5]?\d):([0-5]?\d)\s*", str(text))
    if m is None:
        raise ScalingError(
            f"invalid time {text!r}: use auto, HH:MM:SS or D-HH:MM:SS (e.g. 02:30:00)"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = math.ceil((((days * 24 + hours) * 60 + minutes) * 60 + seconds) / 60)
    if total < 3:
        raise ScalingError(
            f"time {text!r} is too short: submitit signals jobs 90 s before their limit; "
            "give at least 00:03:00"
        )
    return total


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchSpec(Config):
    """How to submit a sweep's runs (``[launch]`` in a sweep spec; ``scaling launch`` flags win)."""

    executor: str | None = None
    """``slurm``, ``local`` or ``debug``; unset: slurm when a controller answers, else local."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    """SLURM node features, e.g. ``a100``."""
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    """Memory per node in SLURM's units, e.g. ``32GB``."""
    time: str = "auto"
    """Time limit per job: ``HH:MM:SS``, or ``auto`` (from planned FLOPs and a throughput)."""
    throughput: float | None = None
    """Training FLOP/s of one job for ``time = "auto"`` (unset: measured on finished runs)."""
    time_margin: float = 1.5
    """Factor on the estimated training time for ``time = "auto"``."""
    array_parallelism: int | None = None
    """SLURM: most array tasks running at once (default: all); local: worker processes (default 1)."""
    max_requeues: int = 3
    """Time-outs after which a job stops requeuing itself (submitit's ``max_num_timeout``)."""
    slurm_extra: dict[str, str] = dataclasses.field(default_factory=dict)
    """Any other sbatch option, e.g. ``{mail-type = "END"}`` (written as ``#SBATCH --KEY=VALUE``)."""

    def __post_init__(self) -> None:
        if self.executor is not None:
            check_choice("launch.executor", self.executor, EXECUTORS)
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            check(value is None or (isinstance(value, str) and value.strip() != ""),
                  f"launch.{key} must be a non-empty string")  # fmt: skip
        for key in ("gpus_per_node", "cpus_per_task", "array_parallelism"):
            check_positive_int(f"launch.{key}", getattr(self, key), allow_none=True)
        check(isinstance(self.max_requeues, int) and self.max_requeues >= 0,
              "launch.max_requeues must be an integer ≥ 0")  # fmt: skip
        if self.mem is not None:
            slurm_mem(self.mem)
        if self.time != "auto":
            parse_time(self.time)
        for key in ("throughput", "time_margin"):
            value = getattr(self, key)
            check(value is None or (isinstance(value, (int, float)) and math.isfinite(value)
                                    and value > 0), f"launch.{key} must be a positive number")  # fmt: skip
        check(isinstance(self.slurm_extra, dict) and all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", k)
            for k in self.slurm_extra
        ), "launch.slurm_extra keys must be sbatch option names, e.g. mail-type")  # fmt: skip


def resolve_options(run_dir: Path, overrides: dict[str, Any] | None = None) -> LaunchSpec:
    """The spec's ``[launch]`` table (from ``sweep.json``), then ``overrides`` (unset ones ignored)."""
    meta = status.read_json_or_none(run_dir / "sweep.json") or {}
    base = dict((meta.get("spec") or {}).get("launch") or {})
    extra = {**base.get("slurm_extra", {}), **(overrides or {}).get("slurm_extra", {})}
    merged = base | {k: v for k, v in (overrides or {}).items() if v is not None}
    return LaunchSpec.from_dict(merged | {"slurm_extra": extra}, where="launch options")


# --------------------------------------------------------------------------------------------------
# Executors


def slurm_problem() -> str | None:
    """Why SLURM cannot take jobs from here (None: a controller answered ``scontrol ping``)."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "SLURM's commands (sbatch, scontrol) are not on PATH"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not Path(conf).is_file():
        return f"no SLURM configuration at {conf} (set SLURM_CONF)"
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True,
                             timeout=status.PROBE_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"slurmctld did not answer `scontrol ping` within {status.PROBE_TIMEOUT_S} s"
    first = next((x.strip() for x in (out.stdout + out.stderr).splitlines() if x.strip()), "")
    if out.returncode != 0 or " is UP" not in out.stdout:
        return f"no reachable slurmctld ({first or f'scontrol ping exit {out.returncode}'})"
    return None


def default_executor() -> str:
    return "slurm" if slurm_problem() is None else "local"


def slurm_parameters(opts: LaunchSpec, *, name: str, minutes: int) -> dict[str, Any]:
    """submitit's native SLURM parameters (``_make_sbatch_string`` names) for these options."""
    # One thread per allocated CPU (torch's default, one per core of the node, oversubscribes a
    # shared node); a value exported by the user (sbatch passes the environment) wins.
    setup = ["export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"]
    params: dict[str, Any] = {"job_name": name, "time": minutes, "setup": setup}
    for key in ("partition", "account", "qos", "constraint", "cpus_per_task", "gpus_per_node",
                "array_parallelism"):  # fmt: skip
        if getattr(opts, key) is not None:
            params[key] = getattr(opts, key)
    if opts.mem is not None:
        params["mem"] = slurm_mem(opts.mem)
    if opts.slurm_extra:
        params["additional_parameters"] = {k: str(v) for k, v in opts.slurm_extra.items()}
    return params


def sbatch_script(opts: LaunchSpec, *, folder: str | Path, tasks: int, name: str, minutes: int,
                  python: str | None = None) -> str:  # fmt: skip
    """The sbatch script submitit writes for an array of ``tasks`` runs (``--dry-run``, golden test)."""
    from submitit.slurm.slurm import _make_sbatch_string

    python = shlex.quote(sys.executable) if python is None else python
    command = f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    params = slurm_parameters(opts, name=name, minutes=minutes)
    return _make_sbatch_string(command=command, folder=folder, map_count=tasks if tasks > 1 else None,
                               **params)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# What jobs run


def _default_target(run: str) -> dict[str, Any]:
    from scaling.train import train

    return train(run)


def _job_environment() -> tuple[str | None, str | None]:
    """(job id, stdout log) as submitit sees them inside a job; (None, None) elsewhere."""
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        return str(env.job_id), str(env.paths.stdout)
    except Exception:  # not inside a submitit job
        return None, None


class TrainJob:
    """One run as a checkpointable submitit callable: ``train(run)``, recorded in ``jobs/<id>.json``.

    ``target`` replaces :func:`scaling.train.train` (tests); it must accept the run path."""

    def __init__(self, run: str, folder: str, target: Callable[[str], Any] | None = None) -> None:
        self.run, self.folder, self.target = str(run), str(folder), target

    @property
    def run_id(self) -> str:
        return Path(self.run).name

    def __call__(self) -> Any:
        import psutil

        path = status.job_file(self.folder, self.run_id)
        previous = status.read_json_or_none(path) or {}
        job_id, log = _job_environment()
        me = psutil.Process()
        record = {"run_id": self.run_id, "pid": me.pid, "create_time": me.create_time(),
                  "host": socket.gethostname(), "job_id": job_id, "log": log,
                  "attempt": int(previous.get("attempt", 0)) + 1, "started_at": time.time(),
                  "ended_at": None, "status": None, "error": None}  # fmt: skip
        write_json(path, record)
        try:
            result = (self.target or _default_target)(self.run)
        except Exception as e:
            write_json(
                path, record | {"ended_at": time.time(), "error": f"{type(e).__name__}: {e}"}
            )
            raise
        done = result.get("status") if isinstance(result, dict) else None
        write_json(path, record | {"ended_at": time.time(), "status": done})
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Requeue the same run: training resumes from the checkpoint it saved on the signal."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainJob(self.run, self.folder, self.target))


class LocalWorker:
    """A local worker process: trains unclaimed runs of its submission one at a time."""

    def __init__(self, runs: list[str], folder: str, target: Callable[[str], Any] | None = None,
                 threads: int | None = None):  # fmt: skip
        self.runs, self.folder, self.target = list(runs), str(folder), target
        self.threads = threads
        self.current: str | None = None

    def __call__(self) -> dict[str, Any]:
        if self.threads:
            import torch

            # Workers share the machine's cores: N workers each using every core oversubscribe.
            torch.set_num_threads(self.threads)
        done: dict[str, Any] = {}
        while True:
            if self.current is None:
                self.current = next(
                    (r for r in self.runs if status.claim(self.folder, Path(r).name)), None
                )
                if self.current is None:
                    return done
            try:
                result = TrainJob(self.current, self.folder, self.target)()
                done[Path(self.current).name] = (
                    result.get("status") if isinstance(result, dict) else None
                )
            except Exception as e:  # recorded in the job file; the other runs still train
                done[Path(self.current).name] = f"error: {e}"
            self.current = None

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self)  # resumes self.current first


# --------------------------------------------------------------------------------------------------
# Time limits


def measured_throughput(run_dir: Path) -> dict[str, float]:
    """FLOP/s per method (and ``""`` over all) from the sweep's successful results: realised FLOPs
    over wall time (start-up and evaluation included), at most the training loop's own rate."""
    per: dict[str, list[float]] = {}
    for path in sorted((run_dir / "runs").glob("*/result.json")):
        r = status.read_json_or_none(path) or {}
        flops, wall = r.get("flops"), r.get("wall_time_s")
        if r.get("status") == "success" and flops and wall and wall > 0:
            rate = float(flops) / float(wall)  # a resumed run's wall time is its last attempt's:
            if r.get("tokens_per_s") and r.get("flops_per_token"):  # bound it by the loop's rate
                rate = min(rate, float(r["tokens_per_s"]) * float(r["flops_per_token"]))
            per.setdefault(str(r.get("method")), []).append(rate)
    out = {m: statistics.median(v) for m, v in per.items()}
    if per:
        out[""] = statistics.median([x for v in per.values() for x in v])
    return out


def time_limits(run_dir: Path, runs: list[status.RunStatus], opts: LaunchSpec
                ) -> tuple[int, dict[str, float], str]:  # fmt: skip
    """(minutes for the array, estimated seconds per run, where the figure came from)."""
    if opts.time != "auto":
        return parse_time(opts.time), {}, f"--time {opts.time}"
    measured = {} if opts.throughput else measured_throughput(run_dir)
    if not opts.throughput and not measured:
        return (parse_time(DEFAULT_TIME), {},
                "no throughput figure yet: --throughput FLOP/s or a finished run sets it")  # fmt: skip
    est = {}
    for r in runs:
        rate = opts.throughput or measured.get(r.method, measured[""])
        left = max(r.flops_planned - r.flops_done, 0.0) if r.state != "success" else r.flops_planned
        est[r.run_id] = left / rate * opts.time_margin + STARTUP_S
    minutes = max(MIN_TIME_MIN, math.ceil(max(est.values(), default=0.0) / 60))
    source = (f"{opts.throughput:.3g} FLOP/s (--throughput)" if opts.throughput else
              f"{measured['']:.3g} FLOP/s measured on finished runs")  # fmt: skip
    return (
        minutes,
        est,
        f"auto: {source} × margin {opts.time_margin:g} + {STARTUP_S:.0f} s start-up",
    )


# --------------------------------------------------------------------------------------------------
# Launching


@dataclasses.dataclass
class Launched:
    """What :func:`launch` did (or, with ``dry_run``, would do)."""

    run_dir: str
    executor: str
    submission: str | None
    run_ids: list[str]
    job_ids: list[str]
    skipped: dict[str, int]
    time_limit_min: int | None
    time_source: str
    estimates_s: dict[str, float]
    dry_run: bool
    script: str | None
    wall_s: float
    """Seconds spent submitting (executor set-up, pickles, sbatch, records)."""


def launch(run_dir: str | Path, opts: LaunchSpec | dict[str, Any] | None = None, *,
           only: list[str] | None = None, force: bool = False, dry_run: bool = False,
           target: Callable[[str], Any] | None = None) -> Launched:  # fmt: skip
    """Submit the runs of ``run_dir`` (or ``only`` those) that need it; see the module docstring."""
    run_dir = Path(run_dir).absolute()
    status.read_manifest(run_dir)
    if not isinstance(opts, LaunchSpec):
        opts = resolve_options(run_dir, opts)
    status.check_only(run_dir, only)
    executor = opts.executor or default_executor()
    if executor == "slurm" and not dry_run and (problem := slurm_problem()) is not None:
        raise ScalingError(f"cannot submit to SLURM: {problem}")
    with status.lock(run_dir) if not dry_run else contextlib.nullcontext():
        current = status.collect(run_dir, only)
        wanted = status.RELAUNCH + (("success", "diverged") if force else ())
        chosen = [r for r in current.runs if r.state in wanted]
        skipped = dict(Counter(r.state for r in current.runs if r.state not in wanted))
        minutes, estimates, source = time_limits(run_dir, chosen, opts)
        name = f"scaling-{current.sweep or run_dir.name}"
        sub = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        folder = run_dir / "launch" / sub
        out = Launched(str(run_dir), executor, None if dry_run else sub,
                       [r.run_id for r in chosen], [], skipped, minutes if chosen else None,
                       source, estimates, dry_run, None, 0.0)  # fmt: skip
        if executor == "slurm" and chosen:
            out.script = sbatch_script(opts, folder=folder, tasks=len(chosen), name=name,
                                       minutes=minutes)  # fmt: skip
        if dry_run or not chosen:
            out.submission = None
            return out
        start = time.perf_counter()
        for r in chosen:
            if r.state in ("success", "diverged"):
                _archive(run_dir / "runs" / r.run_id)
        paths = [str(run_dir / "runs" / r.run_id) for r in chosen]
        out.job_ids, extra = _submit(executor, opts, folder, paths, name, minutes, target)
        _write_records(run_dir, folder, executor, out, minutes, estimates, extra, opts)
        out.wall_s = time.perf_counter() - start
        write_json(
            folder / "submission.json", dataclasses.asdict(out) | {"options": opts.to_dict()}
        )
    if executor == "debug":
        _run_debug(extra["jobs"])
    return out


def _archive(run_path: Path) -> None:
    dest = run_path / "archive" / time.strftime("%Y%m%d-%H%M%S")
    for name in ARCHIVED:
        if (run_path / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(run_path / name, dest / name)


def _submit(executor: str, opts: LaunchSpec, folder: Path, paths: list[str], name: str,
            minutes: int, target) -> tuple[list[str], dict[str, Any]]:  # fmt: skip
    """Submit through submitit; on failure remove every trace and raise a one-line error."""
    import submitit

    kwargs = {} if executor == "debug" else {f"{executor}_max_num_timeout": opts.max_requeues}
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=executor, **kwargs)
        if executor == "slurm":
            params = slurm_parameters(opts, name=name, minutes=minutes)
            ex.update_parameters(**{f"slurm_{k}": v for k, v in params.items()})
            calls = [TrainJob(p, str(folder), target) for p in paths]
        elif executor == "local":
            workers = min(opts.array_parallelism or 1, len(paths))
            ex.update_parameters(timeout_min=minutes * len(paths), name=name)
            threads = max(1, (os.cpu_count() or 1) // workers)
            calls = [LocalWorker(paths, str(folder), target, threads) for _ in range(workers)]
        else:
            calls = [TrainJob(p, str(folder), target) for p in paths]
        with contextlib.redirect_stderr(io.StringIO()), ex.batch():  # sbatch errors: see below
            jobs = [ex.submit(c) for c in calls]
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        first = next((x.strip() for x in str(e).splitlines() if x.strip()), type(e).__name__)
        raise ScalingError(
            f"submission to {executor} failed, nothing was recorded: {first}"
        ) from None
    ids = [str(j.job_id) for j in jobs]
    if executor == "local":
        import psutil

        workers = []
        for j in jobs:
            with contextlib.suppress(psutil.Error):
                workers.append({"pid": int(j.job_id), "create_time": psutil.Process(int(j.job_id)).create_time(),
                                "log": str(j.paths.stdout)})  # fmt: skip
        return ["local"] * len(paths), {"workers": workers, "jobs": jobs}
    if executor == "debug":
        ids = [f"debug-{i}" for i in range(len(ids))]
    return ids, {"jobs": jobs}


def _write_records(run_dir: Path, folder: Path, executor: str, out: Launched, minutes: int,
                   estimates: dict[str, float], extra: dict[str, Any], opts: LaunchSpec) -> None:  # fmt: skip
    now = time.time()
    for i, (rid, jid) in enumerate(zip(out.run_ids, out.job_ids, strict=True)):
        path = run_dir / "runs" / rid / status.RECORD
        old = status.read_json_or_none(path) or {}
        history = [*old.pop("history", []), old] if old else []
        log = str(folder / f"{jid}_0_log.out") if executor == "slurm" else None
        record = {"run_id": rid, "submission": out.submission, "folder": str(folder),
                  "executor": executor, "job_id": jid if executor != "local" else None,
                  "array_index": i, "log": log, "submitted_at": now, "time_limit_min": minutes,
                  "estimate_s": estimates.get(rid), "max_requeues": opts.max_requeues,
                  "cancelled_at": None, "history": history}  # fmt: skip
        if executor == "local":
            record["workers"] = extra["workers"]
        write_json(path, record)


def _run_debug(jobs: list[Any]) -> None:
    """The debug executor runs nothing until asked: run each job here, in order (errors recorded)."""
    for job in jobs:
        job.exception()  # runs it; an exception is recorded in its job file and shows in status
