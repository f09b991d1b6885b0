"""One planned run, start to finish: ``scaling train RUN_DIR/runs/<run_id>`` (and what jobs call).

    >>> from scaling.train import train
    >>> result = train("runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d")
    >>> result["status"], result["final_eval_loss"]
    ('success', 1.234)

The job trains exactly the run in ``spec.json`` (written by ``scaling sweep``): the method built on
its backbone, ``steps`` optimizer steps of ``batch_tokens`` tokens, the learning-rate schedule laid
over exactly those steps, batches drawn in an order fixed by the run's seed (:mod:`scaling.train.data`).
It writes, atomically and only into the run directory:

- ``metrics.parquet``: one ``train`` row per logged step (step, tokens, cumulative FLOPs from the
  planned FLOPs per token, mean train loss since the previous row, learning rate, gradient norm,
  tokens/s, peak memory — CUDA's peak allocation on GPU, the process's peak RSS on CPU, wall time)
  and one ``eval`` row per held-out evaluation (periodic, and always at the last step);
- ``result.json``: status (``success | failed | diverged | cancelled``), final losses, planned vs
  realised steps, tokens and FLOPs, parameter counts, wall time and provenance;
- ``model/``: the trained side net or adapter (``MethodModel.save``);
- ``checkpoints/step-XXXXXXX/``: trainable weights, optimizer, scheduler, RNG state and the step (the
  data position follows from the step), every ``train.checkpoint_every_minutes`` and on SIGTERM,
  SIGUSR2 or SIGINT. Removed once the run succeeds.

Resuming: ``train`` on a run with a checkpoint continues from it; metrics rows past the checkpoint
(logged before a hard kill) are dropped, so a resumed run has every step exactly once and, on CPU,
the same final loss as an uninterrupted run. On a signal the job finishes its current step, saves a
checkpoint, records ``cancelled`` and then hands the signal to whatever handler was installed before
(under submitit, its checkpoint-and-requeue handler), so SLURM preemption and time-outs lose nothing.

Failures: bad input (a missing or foreign ``spec.json``, an unusable dataset or backbone) raises
:class:`~scaling.errors.ScalingError` before anything is written. An exception while training is
recorded as ``failed`` with its message; a non-finite loss, or a smoothed loss above
``train.diverge_ratio`` × the first step's, stops the run as ``diverged``. Both keep their logs.
"""

from __future__ import annotations

import dataclasses
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
from scaling.arch import PRESET_HUB_IDS
from scaling.errors import ScalingError
from scaling.methods.backbone import compute_dtype, quiet_libraries
from scaling.runspec import RESULT_FORMAT_VERSION, RunDir, open_run, recorded_config
from scaling.train import data
from scaling.train.objective import (
    evaluate,
    loss_kernel,
    make_optimizer,
    micro_step,
    n_labels,
    schedule,
)
from scaling.train.records import METRIC_COLUMNS, peak_memory_bytes, provenance
from scaling.train.signals import Progress, Signals
from scaling.train.tokenizers import load_tokenizer

SMOOTHING = 10  # steps averaged before comparing with diverge_ratio × the first loss


def backbone_path(ref: str) -> str:
    """What ``from_pretrained`` should load for a planned backbone reference."""
    if ref.lower() in PRESET_HUB_IDS:
        return PRESET_HUB_IDS[ref.lower()]  # a preset is a shape; its weights live on the hub
    path = Path(ref).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() and path.name == "config.json":
        return str(path.parent.resolve())
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return ref  # org/name: a hub id (network or a warm cache)
    raise ScalingError(f"backbone not found: {ref} (no such model directory)")


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
    run = open_run(run_dir)
    previous = run.result()
    if previous is not None and previous.get("status") == "success" and not force:
        return previous
    spec = run.spec
    backbone = backbone_path(spec["backbone"])
    fields = methods.config_class(spec["method"]).field_names()
    cfg = methods.config(spec["method"], **recorded_config(spec["method_config"], fields))
    # Bad input surfaces here, before the run directory is touched.
    tokenizer = load_tokenizer(backbone)
    seqs_per_step = spec["batch_tokens"] // spec["seq_len"]
    tokens = data.prepare(spec["dataset"], tokenizer, seq_len=spec["seq_len"],
                          train_sequences=spec["steps"] * seqs_per_step,
                          max_epochs=spec["dataset"].get("max_epochs"))  # fmt: skip
    vocab = spec.get("backbone_config", {}).get("vocab_size")
    if vocab is not None and len(tokenizer) > vocab:
        raise ScalingError(
            f"tokenizer of {backbone} has {len(tokenizer)} tokens, the model only {vocab} embeddings"
        )
    if force:
        for path in (run.result_path, run.metrics_path):
            path.unlink(missing_ok=True)
        for path in (run.checkpoints, run.model_dir):
            shutil.rmtree(path, ignore_errors=True)
    quiet_libraries()
    job = _Job(run, tokens)
    with Signals() as signals:
        try:
            torch.manual_seed(spec["seed"])
            job.setup(cfg.build(backbone))
            return job.loop(signals, on_step)
        except Exception as e:  # recorded, never dropped: the run shows as failed with its error
            return job.finish("failed", error=f"{type(e).__name__}: {e}", tb=traceback.format_exc())


class _Job:
    """The training loop of one run and everything it records."""

    def __init__(self, run: RunDir, tokens: data.TokenData) -> None:
        self.run, self.spec, self.tokens = run, run.spec, tokens
        self.started = time.time()
        self.steps: int = self.spec["steps"]
        self.micro: int = self.spec["micro_batch_size"]
        self.seqs_per_step = self.spec["batch_tokens"] // self.spec["seq_len"]
        t = self.spec["train"]
        self.log_every = int(t.get("log_every", 10))
        self.eval_every = int(t.get("eval_every", 0)) or max(1, math.ceil(self.steps / 4))
        self.ckpt_seconds = 60.0 * float(t.get("checkpoint_every_minutes", 10.0))
        self.diverge_ratio = float(t.get("diverge_ratio", 4.0))
        self.keep = int(t.get("keep_checkpoints", 1))
        self.rows: list[dict[str, Any]] = []
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
        self.write_metrics()  # the rows up to this step go with the checkpoint
        with io.atomic_dir(target, owned=lambda p: (p / "state.pt").is_file()) as tmp:
            torch.save(payload, tmp / "state.pt")
        for old in sorted(self.run.checkpoints.glob("step-*[0-9]"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> None:
        ckpt = self.run.latest_checkpoint()
        if ckpt is None:
            return  # any rows logged before a kill with no checkpoint are rewritten from step 1
        payload = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in payload["model"].items():
                named[name].copy_(value)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng"])
        if payload["cuda_rng"]:
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        self.state = _State(**payload["state"])
        if self.run.metrics_path.is_file():
            old = pl.read_parquet(self.run.metrics_path)
            self.rows = old.filter(pl.col("step") <= self.state.step).to_dicts()

    # -- records -----------------------------------------------------------------------------------

    def write_metrics(self) -> None:
        frame = pl.DataFrame(self.rows, schema=METRIC_COLUMNS)
        io.write_parquet(frame, self.run.metrics_path)

    def finish(
        self, status: str, *, error: str | None = None, tb: str | None = None,
        signal: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        spec = self.spec
        done = self.state.step
        if status == "success":
            self.model.save(self.run.model_dir)
        if self.model is not None:
            self.write_metrics()
        trainable = sum(p.numel() for p in self.params)
        result = {
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
            "data": self.tokens.source, "train_sequences_available": len(self.tokens.train_ids),
            "signal": signal,
            "provenance": provenance(spec["seed"]) | {"precision": getattr(self, "precision", None)},
        }  # fmt: skip
        if tb is not None:
            result["traceback"] = tb
        io.write_json(self.run.result_path, result)
        if status == "success":
            shutil.rmtree(self.run.checkpoints, ignore_errors=True)
        return result

    def _mean_throughput(self) -> float | None:
        rates = [r["tokens_per_s"] for r in self.rows if r["kind"] == "train" and r["tokens_per_s"]]
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
        idx = data.batch_indices(len(self.tokens.train_ids), seed=self.spec["seed"],
                                 start=self.state.step * self.seqs_per_step,
                                 count=self.seqs_per_step)  # fmt: skip
        ids, labels = self.tokens.train_ids[idx], self.tokens.train_labels[idx]
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
        spec, s = self.spec, self.state
        progress = Progress(spec["run_id"], self.steps, s.step)
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
                progress.step(row)
                if on_step is not None:
                    on_step(s.step)
                if s.step == self.steps:
                    break
                if signals.received is not None:
                    self.save_checkpoint()
                    name = signal.Signals(signals.received).name
                    progress.line(f"{name}: checkpoint at step {s.step}/{self.steps}")
                    result = self.finish(
                        "cancelled",
                        error=f"interrupted by {name} at step {s.step}/{self.steps}; "
                        "resumable from checkpoint",
                        signal=name,
                    )
                    progress.close()
                    signals.chain()
                    return result
                if time.monotonic() - last_ckpt > self.ckpt_seconds:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        finally:
            progress.close()
        return self.finish("success")
