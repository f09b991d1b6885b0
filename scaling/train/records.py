"""What a run records besides its result: its metrics (append-only segments and the table compacted
from them), peak memory, provenance (which code, libraries and machine produced a result), and the
one-line reason for an OS error.

    >>> from scaling.train.records import METRIC_COLUMNS, MetricsLog, provenance
    >>> log = MetricsLog(run.path); log.open(); log.begin(start=checkpoint_step)
    >>> log.write(rows_of_this_process)       # its own segment, then metrics.parquet from all of them
    >>> provenance(seed=0)["git_sha"], provenance(seed=0)["device"]

Metrics rows live in ``metrics.segments/<life>-from-<step>.parquet``: one file per process that
trained the run (its *life*), holding only that process's rows and named after the checkpoint step it
resumed from. A process rewrites only its own file (atomically), so no write, failed or not, can
lose a row an earlier process committed. The run's rows are every segment's rows up to the step the
next process resumed from (later rows were logged past the checkpoint before a hard kill, and are
trained and logged again); ``metrics.parquet`` is that table, rewritten after every segment write,
so readers see what they always saw. Once the run succeeds the segments are removed and
``metrics.parquet`` is the record. An unreadable segment is never skipped: the job refuses to go on.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import platform
import re
import resource
import shutil
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import torch

from scaling import io
from scaling.errors import ScalingError, one_line
from scaling.provenance import git_state
from scaling.runspec import METRICS_FILE, RESULT_FILE, SPEC_FILE, check_spec, open_run

if TYPE_CHECKING:
    from scaling.train.tracking import Tracker

METRIC_COLUMNS = {
    "kind": pl.String, "step": pl.Int64, "tokens": pl.Int64, "flops": pl.Float64,
    "loss": pl.Float64, "lr": pl.Float64, "grad_norm": pl.Float64, "tokens_per_s": pl.Float64,
    "peak_memory_bytes": pl.Int64, "wall_s": pl.Float64,
    "accuracy": pl.Float64, "gen_tokens": pl.Float64, "examples": pl.Int64, "eval_flops": pl.Float64,
}  # fmt: skip
"""``metrics.parquet``: one ``train`` row per logged step, one ``eval`` row per held-out loss
evaluation and one ``task/<name>`` row per task evaluation (:mod:`scaling.train.tasks`: ``loss`` is
its task loss, with ``accuracy``, ``gen_tokens``, ``examples`` and ``eval_flops``, the evaluation's
own FLOPs; ``flops`` is, as in every row, the training FLOPs so far)."""
TASK_COLUMNS = ("accuracy", "gen_tokens", "examples", "eval_flops")
"""Added with task evaluations: metrics written before them lack these (read back as nulls)."""


def peak_memory_bytes() -> int:
    """CUDA's peak allocation on GPU; on CPU the process's peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def provenance(seed: int) -> dict[str, Any]:
    """Which code, libraries and machine produced a result."""
    from importlib import metadata

    versions = {}
    for pkg in ("scaling", "torch", "transformers", "peft", "bitsandbytes", "polars"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    state = git_state()  # the same as `scaling --version`
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name()}"
    else:
        device = (
            f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    return {
        "git_sha": state and state[0], "git_dirty": state and state[1],
        "versions": versions, "python": platform.python_version(), "device": device,
        "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "seed": seed,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Metrics segments

SEGMENTS = "metrics.segments"
"""In a run directory: the metrics rows of an unfinished run, one file per process (see above)."""
_SEGMENT = re.compile(r"(\d{4,})-from-(\d{7,})\.parquet")


class MetricsUnreadable(ScalingError):
    """A metrics file the run's history depends on cannot be read: going on would lose its rows."""


class MetricsLog:
    """The metrics of one run as this process sees them: earlier processes' rows, read once, and its
    own segment."""

    def __init__(self, run_path: Path, tracker: Tracker | None = None) -> None:
        self.tracker = tracker
        """Where every commit is mirrored (:mod:`scaling.train.tracking`): sent the rows as written."""
        self.dir = run_path / SEGMENTS
        self.table = run_path / METRICS_FILE
        self.earlier: list[tuple[int, int, pl.DataFrame]] = []  # (life, resumed from step, rows)
        self.life, self.start = 0, 0
        self.before = pl.DataFrame(schema=METRIC_COLUMNS)
        self.unreadable: MetricsUnreadable | None = None

    def segments(self) -> list[tuple[int, int, Path]]:
        """(life, resumed from step, path) of every segment, oldest first (other files ignored)."""
        found = []
        for path in self.dir.iterdir() if self.dir.is_dir() else ():
            if m := _SEGMENT.fullmatch(path.name):
                found.append((int(m[1]), int(m[2]), path))
        return sorted(found)

    def open(self) -> None:
        """Read the earlier processes' segments (a run from before segments existed: its
        ``metrics.parquet`` stands for one); MetricsUnreadable names any that cannot be read."""
        segments = self.segments()
        if not segments and self.table.is_file():
            try:
                self.earlier = [(0, 0, _read(self.table, "metrics table"))]
            except MetricsUnreadable as e:  # fatal only if a checkpoint needs its rows (begin)
                self.unreadable = e
            return
        self.earlier = [(life, start, _read(path, "metrics segment"))
                        for life, start, path in segments]  # fmt: skip

    def begin(self, start: int) -> None:
        """This process resumes after step ``start``: rows logged past it are superseded."""
        if self.unreadable is not None and start > 0:
            raise self.unreadable
        self.life = max((life for life, _, _ in self.earlier), default=-1) + 1
        self.start = start
        kept, bound = [], start
        for _, first, frame in reversed(self.earlier):
            kept.append(frame.filter(pl.col("step") <= bound))
            bound = min(bound, first)
        self.before = pl.concat([pl.DataFrame(schema=METRIC_COLUMNS), *reversed(kept)])
        if self.earlier and not self.segments():  # adopt a pre-segments table as the first life
            life, first, frame = self.earlier[0]
            io.write_parquet(frame, self._path(life, first))
        if self.tracker is not None:  # steps up to `committed` went to the trackers before
            committed = max((f["step"].max() or 0 for _, _, f in self.earlier), default=0)
            self.tracker.start(start, int(committed))

    def frame(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        """The run's metrics: earlier processes' committed rows, then ``rows`` (this process's)."""
        return pl.concat([self.before, pl.DataFrame(rows, schema=METRIC_COLUMNS)])

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Commit ``rows`` (all of this process's, so far) to its segment, then rewrite the table."""
        if rows:
            io.write_parquet(
                pl.DataFrame(rows, schema=METRIC_COLUMNS), self._path(self.life, self.start)
            )
        io.write_parquet(self.frame(rows), self.table)
        if self.tracker is not None:
            self.tracker.log(rows)

    def compacted(self) -> None:
        """The run succeeded and ``metrics.parquet`` holds every row: the segments have served."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def _path(self, life: int, start: int) -> Path:
        return self.dir / f"{life:04d}-from-{start:07d}.parquet"


def _read(path: Path, what: str) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for a damaged file
        raise MetricsUnreadable(f"unreadable {what} {path}: {one_line(e)}") from None
    frame = frame.with_columns(
        pl.lit(None).alias(c) for c in TASK_COLUMNS if c not in frame.columns
    )
    missing = [c for c in METRIC_COLUMNS if c not in frame.columns]
    if missing:
        raise MetricsUnreadable(f"{what} {path} lacks column(s) {', '.join(missing)}")
    return frame.select(list(METRIC_COLUMNS)).cast(METRIC_COLUMNS)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Run options from the command line


def require_trackers(report_to: list[str]) -> None:
    """Refuse trackers that are not installed here (bad input: before the job writes anything)."""
    missing = [name for name in report_to if importlib.util.find_spec(name) is None]
    if missing:
        extras = ",".join(missing)
        raise ScalingError(
            f"train.report_to lists {', '.join(missing)}, not installed here: "
            f"pip install 'scaling[{extras}]' (or remove it: --report-to none)"
        )


def set_train_options(run_dir: str | os.PathLike, overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply ``scaling train --set train.KEY=VALUE`` overrides (:func:`scaling.config.parse_overrides`)
    to the run's ``[train]`` table and record them in its ``spec.json``, under the run's lock (never
    under a running trainer); return the spec as written. Only ``[train]``, how the job runs, may
    change here: anything else would change the run's result under the same run id."""
    run = open_run(run_dir)
    other = [key for key in overrides if key != "train"]
    if other:
        raise ScalingError(
            f"--set {other[0]}: `scaling train` changes only train.* (how the job runs); "
            f"{other[0]} changes the run's result and id: re-plan with `scaling sweep --set`"
        )
    table = overrides.get("train")
    if not isinstance(table, dict):
        raise ScalingError("--set train: set its keys, e.g. --set train.log_every=5")
    spec = _with_train(run.spec, table)
    if spec == run.spec:
        return spec
    require_trackers(spec["train"].get("report_to", []))  # not installed: refused, spec unchanged
    with io.exclusive_lock(run.lock_path, f"run {spec['run_id']}"):
        # read again under the lock: another `--set` that wrote since the read above is kept
        current = open_run(run_dir).spec
        spec = _with_train(current, table)
        if spec != current:
            io.write_json(run.path / SPEC_FILE, spec)
    return spec


def _with_train(spec: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with ``table`` over its ``[train]`` table, checked (one-line error)."""
    out = {**spec, "train": {**spec["train"], **table}}
    try:
        check_spec(out)
    except ScalingError as e:
        raise ScalingError(f"--set: {e}") from None
    return out


# --------------------------------------------------------------------------------------------------
# Leftovers and errors

_TEMP = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]+\.tmp")  # what scaling.io's mkstemp/mkdtemp name
TRAINER_OUTPUTS = {
    "": tuple(map(re.escape, (RESULT_FILE, METRICS_FILE, "model", "checkpoints", SEGMENTS))),
    "checkpoints": (r"step-\d{7,}",),
    SEGMENTS: (_SEGMENT.pattern,),
}
"""Per folder of a run directory, the names (patterns) the trainer writes there: the only temporary
siblings it may clean up (the planner and the launcher write spec.json and launch.json)."""


def remove_stale_temporaries(run_path: Path) -> list[str]:
    """Remove temporary files and folders left by trainer writes a killed process never finished
    (call only under the run's lock: no live writer can own them); return what was removed."""
    removed = []
    for folder, names in TRAINER_OUTPUTS.items():
        where = run_path / folder
        for path in where.iterdir() if where.is_dir() else ():
            m = _TEMP.fullmatch(path.name)
            if m is None or not any(re.fullmatch(n, m["name"]) for n in names):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(str(path.relative_to(run_path)))
    return removed


def discard_outputs(run_path: Path) -> None:
    """Remove everything the trainer wrote into a run directory (``--force``; under the lock)."""
    for name in (RESULT_FILE, METRICS_FILE):
        (run_path / name).unlink(missing_ok=True)
    for name in ("checkpoints", "model", SEGMENTS):
        shutil.rmtree(run_path / name, ignore_errors=True)


def set_aside(ckpt: Path) -> str:
    """Rename an unreadable checkpoint out of the ``step-*`` names a resume picks from (kept for
    inspection; removed with the other checkpoints once the run succeeds); return its new name."""
    n, target = 0, ckpt.with_name(f"unreadable-{ckpt.name}")
    while target.exists():
        n += 1
        target = ckpt.with_name(f"unreadable-{ckpt.name}.{n}")
    os.replace(ckpt, target)
    return target.name


_OS_REASONS = {
    errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}  # fmt: skip


def failure_reason(e: BaseException) -> str:
    """One line saying why: ``disk full: …`` / ``permission denied: …`` for the OS errors a user
    can act on, ``TypeName: message`` for anything else."""
    if isinstance(e, OSError) and e.errno in _OS_REASONS:
        where = f" ({e.filename})" if e.filename else ""
        return f"{_OS_REASONS[e.errno]}: {e.strerror or one_line(e)}{where}"
    if isinstance(e, ScalingError):
        return one_line(e)
    return f"{type(e).__name__}: {one_line(e)}"
