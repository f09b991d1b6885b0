"""The executors behind ``scaling launch``: what each job runs, and how a batch of runs is submitted.

    >>> from scaling.launch.executors import TrainJob, sbatch_script, submit
    >>> ids, extra = submit("slurm", opts, folder, [run_path, ...], name, minutes, target=None)

Built on submitit (``AutoExecutor`` with an explicit ``cluster``: it would pick SLURM whenever ``srun``
is on PATH):

- ``slurm``: one ``sbatch --array`` for the whole submission (``executor.batch()``); each task runs
  :class:`TrainJob`, i.e. ``scaling.train.train(RUN_DIR/runs/<id>)``. SLURM sends ``SIGUSR2`` 90 s before
  the time limit (and on preemption): the training loop saves a checkpoint and hands the signal to
  submitit, which calls :meth:`TrainJob.checkpoint` and requeues the task (at most ``max_requeues``
  time-outs); the requeued task resumes from the run's checkpoint and appends to the same log.
- ``local``: ``array_parallelism`` worker processes (:class:`LocalWorker`) that take runs one at a
  time, each with its share of the machine's cores. Each records itself (:func:`worker_record`):
  ``launch.json`` holds the pids of submitit's controllers, and a worker outlives a killed controller.
- ``debug``: every run in this process, one after the other (``pdb``-friendly); the launching
  process records itself as the submission's worker the same way.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.io import write_json
from scaling.launch.records import claim, job_file, worker_file
from scaling.launch.spec import LaunchSpec, slurm_mem
from scaling.runspec import read_json_or_none


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

        path = job_file(self.folder, self.run_id)
        previous = read_json_or_none(path) or {}
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


@contextlib.contextmanager
def worker_record(folder: str | Path) -> Iterator[None]:
    """Record this process as a worker of the submission in ``folder`` while the block runs: status
    reads the runs it has not taken yet as queued while it lives (and its end, however it ends)."""
    import psutil

    me = psutil.Process()
    path = worker_file(folder, me.pid)
    record = {"pid": me.pid, "create_time": me.create_time(), "started_at": time.time(),
              "ended_at": None}  # fmt: skip
    write_json(path, record)
    try:
        yield
    finally:
        write_json(path, record | {"ended_at": time.time()})


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
        with worker_record(self.folder):
            while True:
                if self.current is None:
                    self.current = next(
                        (r for r in self.runs if claim(self.folder, Path(r).name)), None
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


def submit(executor: str, opts: LaunchSpec, folder: Path, paths: list[str], name: str,
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


def run_debug(jobs: list[Any]) -> None:
    """The debug executor runs nothing until asked: run each job here, in order (errors recorded)."""
    for job in jobs:
        job.exception()  # runs it; an exception is recorded in its job file and shows in status
