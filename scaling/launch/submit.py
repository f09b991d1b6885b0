"""Submit a sweep's runs as job arrays (grouped by their time need), safely repeatable: ``scaling launch RUN_DIR``.

    >>> from scaling import launch
    >>> out = launch.launch("runs/quickstart", launch.LaunchSpec(executor="slurm", partition="gpu",
    ...                     gpus_per_node=1, mem="32GB", time="auto", throughput=2e14))
    >>> out.job_ids[:2], out.skipped            # ['812_0', '812_1'], {'success': 3, 'running': 1}
    >>> launch.cancel("runs/quickstart")        # scancel every queued or running job

Executors (:mod:`scaling.launch.executors`): ``slurm`` (one job array, jobs that checkpoint and requeue
themselves at their time limit), ``local`` (worker processes; the default when no SLURM controller
answers) and ``debug`` (in this process).

Idempotent: a launch submits only runs that are planned, failed, cancelled or timed out — never one
that is queued or running (a run whose lock a trainer holds is running, whatever its records say;
an unreadable one is left alone too), and a finished one (success, diverged) only with ``force`` (its outputs
are first moved to ``runs/<id>/archive/<time>/``). A lock file serialises concurrent launches. The
records stay in the run directory, so ``scaling status`` works from any shell, later:

- ``runs/<id>/launch.json``: the latest submission of the run (executor, job id, log, time limit,
  ``cancelled_at``) and its earlier ones under ``history``;
- ``launch/<submission>/``: submitit's folder (sbatch script, pickles, logs ``<job>_0_log.{out,err}``),
  ``submission.json`` (options, runs, job ids, wall time) and ``jobs/<id>.json``, written by the job
  itself (pid, host, attempt, start, end, exception).

Nothing is recorded unless the submission succeeded. Time limits (``time = "auto"``): each run needs
planned FLOPs / throughput × ``time_margin`` + :data:`STARTUP_S` (only the FLOPs still to do for an
interrupted run). The throughput (FLOP/s) is ``throughput`` when given, else measured on this sweep's
finished runs (realised FLOPs / wall time, per method), else the limit is :data:`DEFAULT_TIME`. One
SLURM array has one limit, so runs are grouped by their own need (:func:`time_groups`): a few arrays,
each with the largest need of its group, instead of the largest run's limit for every task — a short
limit also backfills sooner. SLURM memory sizes use SLURM's units (1G = 1024M).

GPUs: a sweep planned for a GPU (``constraints.gpu_mem`` set, or a bf16/fp16 compute dtype) is refused
when its SLURM jobs ask for no GPU (``gpus_per_node`` unset and no ``gpus``/``gres`` in
``slurm_extra``), unless ``allow_cpu``: the trainer would run on the node's CPUs, silently. The
trainer uses one GPU per run, so more than one per task is a warning (:func:`gpu_problems`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import is_locked, write_json
from scaling.launch.executors import run_debug, sbatch_script, submit, worker_record
from scaling.launch.records import RECORD, Unreadable, check_only, lock, read_manifest, read_result
from scaling.launch.scheduler import default_executor, slurm_problem
from scaling.launch.spec import LaunchSpec, parse_time
from scaling.launch.status import RELAUNCH, RunStatus, collect
from scaling.runspec import METRICS_FILE, RESULT_FILE, RUN_LOCK, SWEEP_FILE, read_json_or_none

STARTUP_S = 120.0
"""Seconds a job spends outside the training loop (start-up, model and data loading, evaluation)."""
MIN_TIME_MIN = 5
"""Shortest limit ``auto`` gives: submitit signals 90 s before the limit; at ≤ 2 min a job is
signalled as it starts (docs/slurm-on-localhost.md)."""
DEFAULT_TIME = "01:00:00"
"""``auto`` without any throughput figure; a run that needs longer requeues and resumes."""
ARCHIVED = (RESULT_FILE, METRICS_FILE, "metrics.segments", "checkpoints", "model")
"""What a forced re-run moves aside (never deletes)."""


def resolve_options(run_dir: Path, overrides: dict[str, Any] | None = None) -> LaunchSpec:
    """The spec's ``[launch]`` table (from ``sweep.json``), then ``overrides`` (unset ones ignored)."""
    meta = read_json_or_none(run_dir / SWEEP_FILE) or {}
    spec = meta.get("spec")
    base = spec.get("launch") if isinstance(spec, dict) else None
    if base is not None and not isinstance(base, dict):
        raise ScalingError(f"{run_dir / SWEEP_FILE}: spec.launch must be a table")
    base = dict(base or {})
    if not isinstance(base.get("slurm_extra", {}), dict):
        raise ScalingError(f"{run_dir / SWEEP_FILE}: spec.launch.slurm_extra must be a table")
    extra = {**base.get("slurm_extra", {}), **(overrides or {}).get("slurm_extra", {})}
    merged = base | {k: v for k, v in (overrides or {}).items() if v is not None}
    return LaunchSpec.from_dict(merged | {"slurm_extra": extra}, where="launch options")


def measured_throughput(run_dir: Path) -> dict[str, float]:
    """FLOP/s per method (and ``""`` over all) from the sweep's successful results: realised FLOPs
    over wall time (start-up and evaluation included), at most the training loop's own rate."""
    per: dict[str, list[float]] = {}
    for path in sorted((run_dir / "runs").glob(f"*/{RESULT_FILE}")):
        try:
            r = read_result(path.parent) or {}
        except Unreadable:  # status shows it; it just measures nothing
            continue
        flops, wall = r.get("flops"), r.get("wall_time_s")
        if r.get("status") == "success" and (flops or 0) > 0 and (wall or 0) > 0:
            rate = float(flops) / float(wall)
            # A resumed run's wall time is its last attempt's: bound it by the loop's own rate.
            if (r.get("tokens_per_s") or 0) > 0 and (r.get("flops_per_token") or 0) > 0:
                rate = min(rate, float(r["tokens_per_s"]) * float(r["flops_per_token"]))
            per.setdefault(str(r.get("method")), []).append(rate)
    out = {m: statistics.median(v) for m, v in per.items()}
    if per:
        out[""] = statistics.median([x for v in per.values() for x in v])
    return out


GROUP_FACTOR = 4.0
"""Runs whose time needs lie within this factor of the shortest in their group share one array (and
its limit): at most ×4 of a run's need is ever requested, and a sweep over four decades of compute
needs about seven arrays, not one per run."""


def time_groups(estimates: dict[str, float], run_ids: list[str]) -> list[tuple[int, list[str]]]:
    """``run_ids`` grouped by estimated seconds: [(limit in minutes, ids)], shortest first.

    Greedy over the sorted needs: a group starts at the shortest need not yet placed and takes every
    run needing at most :data:`GROUP_FACTOR` × that; its limit is its longest need (whole minutes, at
    least :data:`MIN_TIME_MIN`). Runs without an estimate join the last group."""
    known = sorted((estimates[r], r) for r in run_ids if r in estimates)
    groups: list[tuple[float, list[str]]] = []
    for need, rid in known:
        if groups and need <= groups[-1][0] * GROUP_FACTOR:
            groups[-1][1].append(rid)
        else:
            groups.append((need, [rid]))
    out = [(max(MIN_TIME_MIN, math.ceil(max(estimates[r] for r in ids) / 60)), ids)
           for _, ids in groups]  # fmt: skip
    unknown = [r for r in run_ids if r not in estimates]
    if unknown:
        if out:
            out[-1][1].extend(unknown)
        else:
            out.append((MIN_TIME_MIN, unknown))
    return out


def planned_for_gpu(run_dir: Path) -> str | None:
    """Why this sweep was planned for a GPU (``None`` when it was not): a ``gpu_mem`` cap, or a
    half-precision compute dtype that only a GPU runs fast."""
    meta = read_json_or_none(run_dir / SWEEP_FILE) or {}
    spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
    cons = spec.get("constraints") if isinstance(spec.get("constraints"), dict) else {}
    if cons.get("gpu_mem"):
        return f"gpu_mem = {cons['gpu_mem']}"
    methods = spec.get("method") if isinstance(spec.get("method"), dict) else {}
    for name, table in sorted(methods.items()):
        dtype = table.get("compute_dtype") if isinstance(table, dict) else None
        if dtype in ("bfloat16", "float16"):
            return f"method.{name}.compute_dtype = {dtype}"
    return None


def gpu_problems(run_dir: Path, opts: LaunchSpec, executor: str) -> list[str]:
    """Warnings about GPUs per task; raises when a GPU sweep would run on SLURM without GPUs."""
    if executor != "slurm":
        return []
    extra = {k.lower() for k in opts.slurm_extra}
    asks = opts.gpus_per_node is not None or bool(
        extra & {"gpus", "gres", "gpus-per-task", "gpus-per-node", "gpus_per_task", "gpus_per_node"}
    )
    why = planned_for_gpu(run_dir)
    if why is not None and not asks and not opts.allow_cpu:
        raise ScalingError(
            f"this sweep is planned for a GPU ({why}) but its jobs ask for none: give "
            "--gpus-per-node 1 (or --allow-cpu to train on the nodes' CPUs)"
        )
    if (opts.gpus_per_node or 0) > 1:
        return [f"--gpus-per-node {opts.gpus_per_node}: each run trains on one GPU, so "
                f"{opts.gpus_per_node - 1} of every task's GPUs would sit idle"]  # fmt: skip
    return []


def time_limits(run_dir: Path, runs: list[RunStatus], opts: LaunchSpec
                ) -> tuple[int, dict[str, float], str]:  # fmt: skip
    """(minutes for the longest run, estimated seconds per run, where the figure came from)."""
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
    """The sbatch script of the first array (``--dry-run`` shows every array's in ``arrays``)."""
    wall_s: float
    """Seconds spent submitting (executor set-up, pickles, sbatch, records)."""
    arrays: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """One entry per job array: ``time_limit_min``, ``run_ids``, ``job_ids`` (and ``script``)."""
    warnings: list[str] = dataclasses.field(default_factory=list)


def launch(run_dir: str | Path, opts: LaunchSpec | dict[str, Any] | None = None, *,
           only: list[str] | None = None, force: bool = False, dry_run: bool = False,
           target: Callable[[str], Any] | None = None) -> Launched:  # fmt: skip
    """Submit the runs of ``run_dir`` (or ``only`` those) that need it; see the module docstring."""
    run_dir = Path(run_dir).absolute()
    read_manifest(run_dir)
    if not isinstance(opts, LaunchSpec):
        opts = resolve_options(run_dir, opts)
    check_only(run_dir, only)
    executor = opts.executor or default_executor()
    warnings = gpu_problems(run_dir, opts, executor)
    if executor == "slurm" and not dry_run and (problem := slurm_problem()) is not None:
        raise ScalingError(f"cannot submit to SLURM: {problem}")
    with contextlib.ExitStack() as running:
        with lock(run_dir) if not dry_run else contextlib.nullcontext():
            current = collect(run_dir, only)
            wanted = RELAUNCH + (("success", "diverged") if force else ())
            chosen = [r for r in current.runs if r.state in wanted]
            skipped = dict(Counter(r.state for r in current.runs if r.state not in wanted))
            chosen = _not_locked_since(run_dir, chosen, skipped)
            minutes, estimates, source = time_limits(run_dir, chosen, opts)
            ids = [r.run_id for r in chosen]
            # Only SLURM arrays have one limit for all their tasks; local workers take runs in turn.
            groups = (time_groups(estimates, ids) if executor == "slurm" and estimates
                      else [(minutes, ids)] if ids else [])  # fmt: skip
            name = f"scaling-{current.sweep or run_dir.name}"
            sub = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
            folder = run_dir / "launch" / sub
            out = Launched(str(run_dir), executor, None if dry_run else sub,
                           [r for _, g in groups for r in g], [], skipped,
                           minutes if chosen else None, source, estimates, dry_run, None, 0.0,
                           [{"time_limit_min": m, "run_ids": g, "job_ids": []} for m, g in groups],
                           warnings)  # fmt: skip
            if executor == "slurm":
                for a in out.arrays:
                    a["script"] = sbatch_script(opts, folder=folder, tasks=len(a["run_ids"]),
                                                name=name, minutes=a["time_limit_min"])  # fmt: skip
                out.script = out.arrays[0]["script"] if out.arrays else None
            if dry_run or not chosen:
                out.submission = None
                return out
            start = time.perf_counter()
            for r in chosen:
                if r.state in ("success", "diverged"):
                    archive(run_dir / "runs" / r.run_id)
            extra: dict[str, Any] = {"jobs": [], "workers": []}
            for a in out.arrays:
                paths = [str(run_dir / "runs" / r) for r in a["run_ids"]]
                try:
                    a["job_ids"], more = submit(executor, opts, folder, paths, name,
                                                a["time_limit_min"], target)  # fmt: skip
                except ScalingError:
                    # Arrays already submitted are recorded, so status and cancel see them.
                    if out.job_ids:
                        _write_records(run_dir, folder, executor, out, estimates, extra, opts)
                    raise
                out.job_ids += a["job_ids"]
                extra["jobs"] += more.get("jobs", [])
                extra["workers"] += more.get("workers", [])
                if "script" in a:
                    del a["script"]
            if executor == "debug":  # recorded before the runs are: none looks abandoned meanwhile
                running.enter_context(worker_record(folder))
            _write_records(run_dir, folder, executor, out, estimates, extra, opts)
            out.wall_s = time.perf_counter() - start
            write_json(
                folder / "submission.json", dataclasses.asdict(out) | {"options": opts.to_dict()}
            )
        if executor == "debug":  # outside the launch lock, so that `scaling cancel` can act
            run_debug(extra["jobs"])
    return out


def _not_locked_since(run_dir: Path, chosen: list[RunStatus], skipped: dict[str, int]
                      ) -> list[RunStatus]:  # fmt: skip
    """``chosen`` less the runs a trainer has locked since ``collect`` looked (counted as running in
    ``skipped``): a run whose lock is held is never submitted, nor are its outputs archived."""
    free = []
    for r in chosen:
        if is_locked(run_dir / "runs" / r.run_id / RUN_LOCK):
            skipped["running"] = skipped.get("running", 0) + 1
        else:
            free.append(r)
    return free


def archive(run_path: Path) -> None:
    dest = run_path / "archive" / time.strftime("%Y%m%d-%H%M%S")
    for name in ARCHIVED:
        if (run_path / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(run_path / name, dest / name)


def _write_records(run_dir: Path, folder: Path, executor: str, out: Launched,
                   estimates: dict[str, float], extra: dict[str, Any], opts: LaunchSpec) -> None:  # fmt: skip
    now = time.time()
    limits = {r: a["time_limit_min"] for a in out.arrays for r in a["run_ids"]}
    index = {r: i for a in out.arrays for i, r in enumerate(a["run_ids"])}
    for rid, jid in zip(out.run_ids, out.job_ids, strict=False):
        minutes = limits[rid]
        path = run_dir / "runs" / rid / RECORD
        old = read_json_or_none(path) or {}
        earlier = old.pop("history", [])  # checked by collect; a list unless edited since
        history = [*(earlier if isinstance(earlier, list) else []), old] if old else []
        log = str(folder / f"{jid}_0_log.out") if executor == "slurm" else None
        record = {"run_id": rid, "submission": out.submission, "folder": str(folder),
                  "executor": executor, "job_id": jid if executor != "local" else None,
                  "array_index": index[rid], "log": log, "submitted_at": now, "time_limit_min": minutes,
                  "estimate_s": estimates.get(rid), "max_requeues": opts.max_requeues,
                  "cancelled_at": None, "history": history}  # fmt: skip
        if executor == "local":
            record["workers"] = extra["workers"]
        write_json(path, record)
