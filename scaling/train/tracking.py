"""Experiment tracking: a run's metrics, spec and provenance mirrored to TensorBoard, Weights & Biases
or trackio (``[train] report_to``; off by default).

    [train]
    report_to = ["tensorboard", "wandb"]      # or: scaling train RUN --report-to tensorboard,wandb

``metrics.parquet`` stays the run's record; a tracker is a mirror of it. Every time the trainer
commits metrics rows (:meth:`scaling.train.records.MetricsLog.write`) the new ones go to each
tracker as scalars named ``<kind>/<column>`` (``train/loss``, ``train/lr``, ``eval/loss``, …) at the
row's optimizer step; the run's ``spec.json`` and its provenance (code, libraries, machine) go with
the first commit, and ``result.json``'s status and final losses when the run ends:

- ``tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir runs/<sweep>/runs``
  shows every run), written with torch's ``SummaryWriter``;
- ``wandb``: the W&B run ``<run id>`` (project ``$WANDB_PROJECT``, else the sweep's name; group the
  sweep; files in ``RUN/wandb/``). ``WANDB_MODE=offline`` trains without network (``wandb sync
  RUN/wandb/offline-run-*`` uploads later);
- ``trackio``: the trackio run ``<run id>`` in the project named after the sweep (trackio's own local
  store; ``trackio show``).

Each is an optional extra (``pip install 'scaling[tensorboard]'``, ``[wandb]``, ``[trackio]``); one
listed but not installed is refused before the job touches its run directory. A tracker that fails
while the run trains (a network error, a full quota) is named once on stderr and gets no more rows
from that process; the training, and ``metrics.parquet``, go on.

Resuming never logs a step twice. A job that resumes from the checkpoint at step ``s`` trains and
logs the steps after ``s`` again (:class:`~scaling.train.records.MetricsLog` supersedes the rows an
earlier process logged past it). TensorBoard gets them again and hides the superseded ones itself
(``purge_step=s+1``: events from step s+1 on, written earlier, are dropped when the logs are read);
W&B and trackio keep a history that cannot be rewritten (and offline, none to ask), so they resume the
same run (its id is the run id, ``resume="allow"``) and are sent only the steps after the last one an
earlier process committed, which they already hold.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaling.runspec import TRACKERS, RunDir, open_run
from scaling.train.records import METRIC_COLUMNS, failure_reason, provenance, require_trackers

SCALARS = [c for c in METRIC_COLUMNS if c not in ("kind", "step")]
"""The metrics columns each row sends, as ``<kind>/<column>`` (an empty cell is left out)."""
SUMMARY = ("status", "error", "final_eval_loss", "final_train_loss", "steps", "tokens", "flops",
           "trainable_params", "wall_time_s", "tokens_per_s", "peak_memory_bytes")  # fmt: skip
"""What of ``result.json`` each tracker gets when the run ends."""


def checked_run(run_dir: str | os.PathLike) -> RunDir:
    """:func:`scaling.runspec.open_run`, plus the run's trackers installed
    (:func:`scaling.train.records.require_trackers`)."""
    run = open_run(run_dir)
    require_trackers(run.spec["train"].get("report_to", []))
    return run


def wandb_id(run_id: str) -> str:
    """The W&B run id of a run: its run id, less the characters W&B ids may not hold."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", run_id)[:128]


class Tracker:
    """The trackers of one run as one process logs to them (none: every call does nothing)."""

    def __init__(self, spec: dict[str, Any], run_path: Path) -> None:
        self.spec, self.path = spec, Path(run_path)
        self.names: list[str] = list(spec["train"].get("report_to") or [])
        self.backends: dict[str, _Backend] = {}
        self.sent = 0  # rows of this process already handed on

    def start(self, step: int, committed: int) -> None:
        """This process resumes after ``step``; earlier ones committed rows up to ``committed``."""
        if not self.names:
            return
        context = {"spec": self.spec, "provenance": provenance(self.spec["seed"])}
        for name in self.names:
            make = functools.partial(
                _BACKENDS[name], self.spec, self.path, step, committed, context
            )
            if (backend := self._guard(name, make)) is not None:
                self.backends[name] = backend

    def log(self, rows: list[dict[str, Any]]) -> None:
        """``rows``: every row this process has committed so far; the new ones are sent."""
        new, self.sent = rows[self.sent :], len(rows)
        for name, backend in list(self.backends.items()):
            self._guard(name, lambda b=backend: b.log(new))

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Send the run's outcome and close every tracker; return ``result`` unchanged."""
        summary = {k: result.get(k) for k in SUMMARY}
        for name, backend in list(self.backends.items()):
            self._guard(name, lambda b=backend: b.finish(summary))
        self.backends = {}
        return result

    def _guard(self, name: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as e:  # a mirror failing must not fail the run it mirrors
            self.backends.pop(name, None)
            print(f"warning: report_to {name} failed ({failure_reason(e)}); it gets no more rows "
                  "from this process (metrics.parquet is complete)", file=sys.stderr)  # fmt: skip
            return None


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {f"{row['kind']}/{c}": row[c] for c in SCALARS if row.get(c) is not None}


class _Backend:
    def log(self, rows: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def finish(self, summary: dict[str, Any]) -> None:
        raise NotImplementedError


class _TensorBoard(_Backend):
    def __init__(self, spec, path, step, committed, context) -> None:
        from torch.utils.tensorboard import SummaryWriter

        logdir = path / "tensorboard"
        # Events an earlier process wrote past the checkpoint are superseded: TensorBoard drops
        # every event at or after purge_step from the files written before this one.
        purge = step + 1 if logdir.exists() else None
        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=purge)
        for key, value in context.items():
            self.writer.add_text(key, _markdown_json(value), global_step=step)
        self.writer.flush()

    def log(self, rows):
        for row in rows:
            for tag, value in _scalars(row).items():
                self.writer.add_scalar(tag, value, global_step=row["step"])
        self.writer.flush()  # a reader (or a kill) sees every committed row

    def finish(self, summary):
        self.writer.add_text("result", _markdown_json(summary), global_step=summary["steps"] or 0)
        self.writer.close()


def _markdown_json(value: Any) -> str:
    """TensorBoard renders text as Markdown: a code block keeps the JSON readable."""
    return "```\n" + json.dumps(value, indent=2, default=str) + "\n```"


class _StepHistory(_Backend):
    """W&B and trackio: a resumed run sends only the steps after those already committed."""

    run: Any

    def __init__(self, committed: int) -> None:
        self.after = committed

    def log(self, rows):
        for row in rows:
            if row["step"] > self.after:
                self.run.log(_scalars(row), step=row["step"])


class _WandB(_StepHistory):
    def __init__(self, spec, path, step, committed, context) -> None:
        import wandb

        super().__init__(committed)
        sweep = spec.get("sweep") or "scaling"
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or sweep, group=sweep, id=wandb_id(spec["run_id"]),
            name=spec["run_id"], job_type=spec["method"], dir=str(path), resume="allow",
            config=context, reinit="create_new",
            tags=[spec["method"], str(spec["backbone"])[-64:]],
        )  # fmt: skip

    def finish(self, summary):
        self.run.summary.update(summary)
        if summary["status"] == "cancelled":  # preempted: W&B shows it as such, not as crashed
            self.run.mark_preempting()
        self.run.finish(exit_code=0 if summary["status"] in ("success", "diverged") else 1)


class _Trackio(_StepHistory):
    def __init__(self, spec, path, step, committed, context) -> None:
        import trackio

        super().__init__(committed)
        sweep = spec.get("sweep") or "scaling"
        # embed/auto-log off: a job opens no dashboard and logs exactly metrics.parquet's rows.
        self.run = trackio.init(project=sweep, name=spec["run_id"], group=sweep, config=context,
                                resume="allow", embed=False, auto_log_gpu=False,
                                auto_log_cpu=False)  # fmt: skip

    def finish(self, summary):
        self.run.log({f"result/{k}": v for k, v in summary.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)})  # fmt: skip
        self.run.finish()


_BACKENDS: dict[str, Callable[..., _Backend]] = {
    "tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio,
}  # fmt: skip
assert set(_BACKENDS) == set(TRACKERS)
