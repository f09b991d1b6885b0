"""One planned run, start to finish: ``scaling train RUN_DIR/runs/<run_id>`` (and what jobs call).

    >>> from scaling.train import train
    >>> result = train("runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d")
    >>> result["status"], result["final_eval_loss"]
    ('success', 1.234)

The job trains exactly the run in ``spec.json`` (written by ``scaling sweep``): the method built on
its backbone, ``steps`` optimizer steps of ``batch_tokens`` tokens, the learning-rate schedule laid
over exactly those steps, batches drawn in an order fixed by the run's seed (:mod:`scaling.train.data`).
It holds the run's lock (:data:`scaling.runspec.RUN_LOCK`) for its whole life, so a second trainer on
the same run is refused with a one-line error and changes nothing. It writes, atomically and only
into the run directory:

- ``metrics.parquet``: one ``train`` row per logged step (step, tokens, cumulative FLOPs from the
  planned FLOPs per token, mean train loss since the previous row, learning rate, gradient norm,
  tokens/s, peak memory — CUDA's peak allocation on GPU, the process's peak RSS on CPU, wall time)
  and one ``eval`` row per held-out evaluation (periodic, and always at the last step), plus one
  ``task/<name>`` row per task evaluation the spec names (:mod:`scaling.train.tasks`). Rebuilt after
  every write from ``metrics.segments/``, where an unfinished run's rows are committed
  (:class:`~scaling.train.records.MetricsLog`); once the run succeeds it is the only record;
- ``result.json``: status (``success | failed | diverged | cancelled``), final losses, planned vs
  realised steps, tokens and FLOPs, parameter counts, wall time and provenance (strict JSON: a
  non-finite loss is ``null`` and named in ``non_finite``);
- ``model/``: the trained side net or adapter (``MethodModel.save``);
- ``checkpoints/step-XXXXXXX/``: trainable weights, optimizer, scheduler, RNG state and the step (the
  data position follows from the step), every ``train.checkpoint_every_minutes`` and on SIGTERM,
  SIGUSR2 or SIGINT; the last two (or ``train.keep_checkpoints``) are kept. Removed once the run
  succeeds.

Resuming: ``train`` on a run with a checkpoint continues from the newest one that loads (an unreadable
one is set aside as ``checkpoints/unreadable-step-…`` and the one before it used; with none usable the
run is recorded ``failed`` with the reason, its records untouched); metrics rows past that checkpoint
(logged before a hard kill) are superseded, so a resumed run has every step exactly once and, on CPU,
the same final loss as an uninterrupted run. On a signal the job finishes its current step, saves a
checkpoint, records ``cancelled`` and then hands the signal to whatever handler was installed before
(under submitit, its checkpoint-and-requeue handler), so SLURM preemption and time-outs lose nothing.

Failures: bad input (a missing, foreign or inconsistent ``spec.json``, an unusable dataset or
backbone) and a run another process is training raise :class:`~scaling.errors.ScalingError` before
anything is written. An exception while training is recorded as ``failed`` with its reason (``disk
full: …``, ``permission denied: …``, ``TypeName: message``); a non-finite loss, or a smoothed loss
above ``train.diverge_ratio`` × the first step's, stops the run as ``diverged``. Both keep their
logs. When not even ``result.json`` can be written, the :class:`OSError` is raised (the CLI prints it
on one line). Temporary files a killed trainer left behind are removed when the next one starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from scaling import io, methods
from scaling.errors import ScalingError
from scaling.methods.backbone import compute_dtype, quiet_libraries
from scaling.runspec import RESULT_FORMAT_VERSION, RunDir, recorded_config
from scaling.train import data, shards, tasks, tracking
from scaling.train.objective import (
    evaluate,
    loss_kernel,
    make_optimizer,
    micro_step,
    n_labels,
    schedule,
)
from scaling.train.records import (
    METRIC_COLUMNS,
    MetricsLog,
    discard_outputs,
    failure_reason,
    peak_memory_bytes,
    provenance,
    remove_stale_temporaries,
    set_aside,
)
from scaling.train.signals import Progress, Signals
from scaling.train.tokenizers import backbone_path, load_tokenizer

SMOOTHING = 10  # steps averaged before comparing with diverge_ratio × the first loss
KEEP_CHECKPOINTS = 2  # at least: an unreadable newest checkpoint falls back to the one before


@dataclasses.dataclass
class _State:
    """What a checkpoint holds besides weights and optimizer: where the loop is."""

    step: int = 0
    first_loss: float | None = None
    recent: list[float] = dataclasses.field(default_factory=list)
    interval_loss: float = 0.0
    interval_steps: int = 0


def train(
    run_dir: str | os.PathLike,
    *,
    force: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train the run in ``run_dir`` (resuming from its checkpoint); return the result it writes.

    A run that already succeeded is not trained again unless ``force`` (which starts it afresh).
    ``on_step(step)`` is called after each optimizer step (progress hooks, tests).
    """
    run = tracking.checked_run(run_dir)  # spec.json checked strictly, its trackers installed
    spec = run.spec
    fields = methods.config_class(spec["method"]).field_names()
    cfg = methods.config(spec["method"], **recorded_config(spec["method_config"], fields))
    previous = _previous_result(run, force)
    if _succeeded(previous) and not force:
        return previous
    # Bad input surfaces here, before the run directory is touched (the lock file included).
    backbone = backbone_path(spec["backbone"])
    tokenizer = load_tokenizer(backbone)
    tokens = _prepare_data(spec, backbone, tokenizer)
    evals = tasks.prepare(spec.get("evaluations", []), tokenizer, spec["dataset"])
    with io.exclusive_lock(run.lock_path, f"run {spec['run_id']}"):
        return _train_locked(run, cfg, backbone, tokens, force=force, on_step=on_step, evals=evals)


def _previous_result(run: RunDir, force: bool) -> dict[str, Any] | None:
    """The run's ``result.json``; an unreadable one is refused (it may record a success) unless
    ``force`` is about to replace it."""
    try:
        previous = run.result()
    except ScalingError as e:
        if force:
            return None
        raise ScalingError(f"{e}; `scaling train --force` retrains the run from scratch") from None
    if previous is not None and not isinstance(previous, dict):
        if force:
            return None
        raise ScalingError(f"{run.result_path} is not a JSON object; `--force` retrains the run")
    return previous


def _succeeded(result: dict[str, Any] | None) -> bool:
    return result is not None and result.get("status") == "success"


def _prepare_data(spec: dict[str, Any], backbone: str, tokenizer) -> shards.RunData:
    """The run's view of its dataset's token shards (prepared by ``scaling sweep``; built here, once
    for all jobs, if the cache lacks them): read batch by batch, never whole."""
    vocab = spec.get("backbone_config", {}).get("vocab_size")
    if vocab is not None and len(tokenizer) > vocab:
        raise ScalingError(
            f"tokenizer of {backbone} has {len(tokenizer)} tokens, the model only {vocab} embeddings"
        )
    seqs_per_step = spec["batch_tokens"] // spec["seq_len"]
    return shards.for_run(spec["dataset"], tokenizer, seq_len=spec["seq_len"],
                          train_sequences=spec["steps"] * seqs_per_step,
                          max_epochs=spec["dataset"].get("max_epochs"))  # fmt: skip


def _train_locked(
    run: RunDir, cfg: methods.MethodConfig, backbone: str, tokens: shards.RunData, *, force: bool,
    on_step: Callable[[int], None] | None, evals: list[tasks.TaskEval] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything that writes, under the run's lock (no other trainer can be writing)."""
    previous = _previous_result(run, force)  # again: another trainer may have finished it meanwhile
    if _succeeded(previous) and not force:
        return previous
    if not os.access(run.path, os.W_OK | os.X_OK):  # nothing could be recorded: train nothing
        raise PermissionError(errno.EACCES, "cannot write in the run directory", str(run.path))
    if force:
        discard_outputs(run.path)
    remove_stale_temporaries(run.path)
    quiet_libraries()
    job = _Job(run, tokens, evals)
    with Signals() as signals:
        try:
            job.metrics.open()
            torch.manual_seed(run.spec["seed"])
            job.setup(cfg.build(backbone))
            return job.loop(signals, on_step)
        except Exception as e:  # recorded, never dropped: the run shows as failed with its reason
            return job.finish("failed", error=failure_reason(e), tb=traceback.format_exc())


class _Job:
    """The training loop of one run and everything it records."""

    def __init__(self, run: RunDir, tokens: shards.RunData, evals: list | None = None) -> None:
        self.run, self.spec, self.tokens = run, run.spec, tokens
        self.evals: list[tasks.TaskEval] = evals or []  # each logs its own row kind (task/<name>)
        self.started = time.time()
        self.steps: int = self.spec["steps"]
        self.micro: int = self.spec["micro_batch_size"]
        self.seqs_per_step = self.spec["batch_tokens"] // self.spec["seq_len"]
        t = self.spec["train"]
        self.log_every = int(t.get("log_every", 10))
        self.eval_every = int(t.get("eval_every", 0)) or max(1, math.ceil(self.steps / 4))
        self.ckpt_seconds = 60.0 * float(t.get("checkpoint_every_minutes", 10.0))
        self.diverge_ratio = float(t.get("diverge_ratio", 4.0))
        self.keep = max(KEEP_CHECKPOINTS, int(t.get("keep_checkpoints", 1)))
        self.metrics = MetricsLog(run.path, tracking.Tracker(run.spec, run.path))
        self.logging = False  # whether this process may write metrics (it knows where it resumed)
        self.rows: list[dict[str, Any]] = []  # this process's rows (earlier ones: self.metrics)
        self.skipped: list[str] = []  # unreadable checkpoints set aside when resuming
        self.state = _State()
        self.model = None
        self.params: list[torch.nn.Parameter] = []
        self.final_eval: float | None = None
        self.final_train: float | None = None

    def setup(self, model) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        opt = self.spec["optimizer"]
        cfg = model.method_config
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, optimizer_used = make_optimizer(self.params, opt, cfg.optimizer)
        self.scheduler = schedule(self.optimizer, opt, self.steps)
        self.grad_clip = opt.get("grad_clip")
        self.loss = cfg.loss
        # What actually ran where the spec leaves a choice to the machine (recorded in result.json).
        self.precision = {
            "compute_dtype": str(compute_dtype(cfg.compute_dtype)).removeprefix("torch."),
            "trainable_dtype": str(self.params[0].dtype).removeprefix("torch."),
            "optimizer": optimizer_used,
            "loss_kernel": loss_kernel(cfg.loss, self.device),
        }

    # -- checkpoints -------------------------------------------------------------------------------

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        step = self.state.step
        target = self.run.checkpoints / f"step-{step:07d}"
        if target.exists():
            return
        payload = {
            "step": step, "model": self._trainable_state(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "state": dataclasses.asdict(self.state),
        }  # fmt: skip
        self.write_metrics()  # the rows up to this step are committed before the checkpoint exists
        created = not self.run.checkpoints.exists()
        try:
            with io.atomic_dir(target, owned=lambda p: (p / "state.pt").is_file()) as tmp:
                torch.save(payload, tmp / "state.pt")
        except BaseException:
            if created:  # leave no empty checkpoints/ behind a failed first save
                with contextlib.suppress(OSError):
                    self.run.checkpoints.rmdir()
            raise
        for old in sorted(self.run.checkpoints.glob("step-*[0-9]"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> None:
        """Continue from the newest checkpoint that loads; newer unreadable ones are set aside. With
        checkpoints but none usable, refuse: starting over would supersede every logged row."""
        found = sorted(self.run.checkpoints.glob("step-*[0-9]"), reverse=True)
        bad: list[tuple[Path, str]] = []
        for ckpt in found:
            try:
                self._restore(ckpt)
            except Exception as e:  # truncated, corrupt or foreign: try the one before
                bad.append((ckpt, failure_reason(e)))
                continue
            for path, why in bad:
                self.skipped.append(f"{path.name}: {why}; set aside as {set_aside(path)}")
            return
        if bad:
            raise ScalingError(
                "no usable checkpoint to resume from ("
                + "; ".join(f"{p.name}: {why}" for p, why in bad)
                + "); the logged metrics are kept: move the checkpoints aside to restart from step "
                "0, or `scaling train --force` to retrain from scratch"
            )

    def _restore(self, ckpt: Path) -> None:
        payload = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        if payload["step"] != int(ckpt.name.removeprefix("step-")):
            raise ValueError(f"holds step {payload['step']}")
        named = dict(self.model.named_parameters())
        trainable = {n: p for n, p in named.items() if p.requires_grad}
        weights = payload["model"]
        if set(weights) != set(trainable) or any(
            weights[n].shape != p.shape for n, p in trainable.items()
        ):
            raise ValueError("its weights are not this run's trainable parameters")
        with torch.no_grad():
            for name, value in weights.items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng"])
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        self.state = _State(**payload["state"])

    # -- records -----------------------------------------------------------------------------------

    def write_metrics(self) -> None:
        self.metrics.write(self.rows)

    def finish(
        self, status: str, *, error: str | None = None, tb: str | None = None,
        signal: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Write the run's records and ``result.json``; return the result as written. A metrics
        write that fails is named in the result (a success needs it: its failure is raised)."""
        metrics_error = None
        if self.logging:
            try:
                self.write_metrics()
            except OSError as e:
                if status == "success":
                    raise
                metrics_error = f"metrics not saved ({failure_reason(e)}): kept to the last write"
        if status == "success":
            self.model.save(self.run.model_dir)
        result = self._result(status, error, signal)
        if metrics_error is not None:
            result["metrics_error"] = metrics_error
        if tb is not None:
            result["traceback"] = tb
        io.write_json(self.run.result_path, result)  # if even this fails, the caller hears of it
        if status == "success":  # the record is complete: what served to resume it can go
            shutil.rmtree(self.run.checkpoints, ignore_errors=True)
            self.metrics.compacted()
        return self.metrics.tracker.finish(io.read_json(self.run.result_path, "result file"))

    def _result(self, status: str, error: str | None, signal: str | None) -> dict[str, Any]:
        spec = self.spec
        done = self.state.step
        trainable = sum(p.numel() for p in self.params)
        return {
            "format_version": RESULT_FORMAT_VERSION, "run_id": spec["run_id"],
            "sweep": spec.get("sweep"), "status": status, "error": error,
            "method": spec["method"], "dial": spec.get("dial"),
            "method_config": spec["method_config"], "backbone": spec["backbone"],
            "budget": spec.get("budget"), "seed": spec["seed"],
            "final_eval_loss": self.final_eval, "final_train_loss": self.final_train,
            "planned_steps": self.steps, "steps": done,
            "planned_tokens": spec["tokens"], "tokens": done * spec["batch_tokens"],
            "planned_flops": spec["tokens"] * spec["flops_per_token"],
            "flops": done * spec["batch_tokens"] * spec["flops_per_token"],
            "flops_per_token": spec["flops_per_token"],
            "trainable_params": trainable, "planned_trainable_params": spec.get("trainable_params"),
            "backbone_params": spec.get("backbone_params"),
            "wall_time_s": time.time() - self.started,
            "tokens_per_s": self._mean_throughput(), "peak_memory_bytes": peak_memory_bytes(),
            "data": self.tokens.source, "train_sequences_available": self.tokens.n_train,
            "signal": signal, "skipped_checkpoints": self.skipped,
            "provenance": provenance(spec["seed"]) | {"precision": getattr(self, "precision", None)},
        } | (tasks.summary(self.metrics.frame(self.rows), self.evals) if self.evals else {})  # fmt: skip

    def _mean_throughput(self) -> float | None:
        rows = self.metrics.frame(self.rows).filter(pl.col("kind") == "train")
        rates = [r for r in rows["tokens_per_s"].to_list() if r]
        return float(np.mean(rates)) if rates else None

    def _row(self, kind: str, loss: float, **extra: Any) -> dict[str, Any]:
        tokens = self.state.step * self.spec["batch_tokens"]
        row = dict.fromkeys(METRIC_COLUMNS)
        row |= {"kind": kind, "step": self.state.step, "tokens": tokens,
                "flops": tokens * self.spec["flops_per_token"], "loss": loss,
                "peak_memory_bytes": peak_memory_bytes(), "wall_s": time.time() - self.started}  # fmt: skip
        row |= extra
        self.rows.append(row)
        return row

    # -- the loop ----------------------------------------------------------------------------------

    def _step(self) -> tuple[float, float]:
        """One optimizer step over ``batch_tokens`` tokens; returns (mean loss, grad norm)."""
        idx = data.batch_indices(self.tokens.n_train, seed=self.spec["seed"],
                                 start=self.state.step * self.seqs_per_step,
                                 count=self.seqs_per_step)  # fmt: skip
        ids, labels = self.tokens.batch(idx)
        n = max(1, n_labels(labels))  # normalise by the whole batch's labelled tokens
        total = 0.0
        for i in range(0, len(idx), self.micro):
            x = torch.from_numpy(ids[i : i + self.micro]).to(self.device)
            y = torch.from_numpy(labels[i : i + self.micro]).to(self.device)
            total += micro_step(self.model, x, y, n_labels=n, loss=self.loss)
        clip = self.grad_clip if self.grad_clip else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip).item()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, norm

    def _diverged(self, loss: float) -> str | None:
        s = self.state
        if not math.isfinite(loss):
            return f"non-finite loss {loss} at step {s.step}"
        if s.first_loss is None:
            s.first_loss = loss
        s.recent = [*s.recent, loss][-SMOOTHING:]
        smooth = sum(s.recent) / len(s.recent)
        if smooth > self.diverge_ratio * s.first_loss:
            return (f"loss {smooth:.4g} (mean of last {len(s.recent)} steps) > "
                    f"{self.diverge_ratio:g} × first loss {s.first_loss:.4g} at step {s.step}")  # fmt: skip
        return None

    def loop(self, signals: Signals, on_step: Callable[[int], None] | None) -> dict[str, Any]:
        self.model.train()
        self.resume()
        self.metrics.begin(self.state.step)
        self.logging = True
        spec, s = self.spec, self.state
        progress = Progress(spec["run_id"], self.steps, s.step)
        for note in self.skipped:
            progress.line(f"resuming at step {s.step}: {note}")
        last_ckpt = time.monotonic()
        interval_seconds, interval_tokens = 0.0, 0  # training steps only (not evaluation)
        try:
            while s.step < self.steps:
                lr = self.scheduler.get_last_lr()[0]
                tic = time.perf_counter()
                loss, norm = self._step()
                interval_seconds += time.perf_counter() - tic
                s.step += 1
                interval_tokens += spec["batch_tokens"]
                s.interval_loss += loss
                s.interval_steps += 1
                self.final_train = loss
                if (reason := self._diverged(loss)) is not None:
                    self._row("train", loss, lr=lr, grad_norm=norm)
                    progress.line(f"diverged: {reason}")
                    return self.finish("diverged", error=reason)
                row = None
                if s.step % self.log_every == 0 or s.step in (1, self.steps):
                    row = self._row("train", s.interval_loss / s.interval_steps, lr=lr, grad_norm=norm,
                                    tokens_per_s=interval_tokens / interval_seconds)  # fmt: skip
                    s.interval_loss, s.interval_steps = 0.0, 0
                    interval_seconds, interval_tokens = 0.0, 0
                    self.write_metrics()
                if s.step % self.eval_every == 0 or s.step == self.steps:
                    self.final_eval = evaluate(self.model, self.tokens.eval_ids,
                                               self.tokens.eval_labels, self.micro, self.loss)  # fmt: skip
                    self._row("eval", self.final_eval)
                    self.write_metrics()
                    progress.line(f"step {s.step}/{self.steps} eval loss {self.final_eval:.4f}")
                for ev, r in tasks.due(self.evals, self.model, s.step, self.steps, self.eval_every):
                    self._row(r.kind, r.loss, **r.columns())  # committed at once: never redone
                    self.write_metrics()
                    progress.line(f"step {s.step}/{self.steps} {ev.name}: {r.describe()}")
                progress.step(row)
                if on_step is not None:
                    on_step(s.step)
                if s.step == self.steps:
                    break
                if signals.received is not None:
                    result = self._interrupted(signal.Signals(signals.received).name, progress)
                    progress.close()
                    signals.chain()
                    return result
                if time.monotonic() - last_ckpt > self.ckpt_seconds:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        finally:
            progress.close()
        return self.finish("success")

    def _interrupted(self, name: str, progress: Progress) -> dict[str, Any]:
        """Checkpoint and record ``cancelled``; ``failed`` with the reason if the checkpoint fails."""
        where = f"at step {self.state.step}/{self.steps}"
        try:
            self.save_checkpoint()
        except Exception as e:  # e.g. disk full: say so, and from where a new attempt starts
            latest = self.run.latest_checkpoint()
            resumes = f"resumes from {latest.name}" if latest else "starts again from step 0"
            reason = (f"interrupted by {name} {where} and the checkpoint failed "
                      f"({failure_reason(e)}); a new attempt {resumes}")  # fmt: skip
            progress.line(reason)
            return self.finish("failed", error=reason, tb=traceback.format_exc(), signal=name)
        progress.line(f"{name}: checkpoint {where}")
        return self.finish(
            "cancelled", error=f"interrupted by {name} {where}; resumable from checkpoint",
            signal=name,
        )  # fmt: skip
