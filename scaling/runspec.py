"""The run record every stage speaks: a run's spec, its id, the files of its directory, its result.

    >>> from scaling import runspec
    >>> run = runspec.open_run("runs/quickstart/runs/ladder-r8-1.2e11-s0-1a2b3c4d")
    >>> run.spec["steps"], run.result_path             # spec.json, validated; where result.json goes
    >>> runspec.budget_label(1.2e11)
    '1.2e11'

The planner (:mod:`scaling.sweep`) writes one :class:`RunSpec` per run as ``runs/<run_id>/spec.json``;
the trainer (:mod:`scaling.train`) reads it back with :func:`open_run` and writes ``result.json`` and
``metrics.parquet`` next to it; the launcher (:mod:`scaling.launch`) adds ``launch.json``; the collector
(:mod:`scaling.fit.collect`) reads them all. This module is what they share, and it imports none of
them: the file names, the format versions, the result statuses and the deterministic run id.

Run ids are ``<method>-<dial>-<budget>-s<seed>-<sha1[:8]>``, the hash taken over everything that
defines the run's result, so the same spec gives the same ids in any process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scaling.config import check, check_positive_int, check_positive_number
from scaling.errors import ScalingError, one_line
from scaling.io import read_json

if TYPE_CHECKING:
    from scaling.arch import Arch
    from scaling.methods.base import MethodConfig

SPEC_FORMAT_VERSION = 1
"""Version of ``runs/<run_id>/spec.json``; ``scaling train`` refuses any other."""
RESULT_FORMAT_VERSION = 1
"""Version of ``runs/<run_id>/result.json``."""
STATUSES = ("success", "failed", "diverged", "cancelled")
"""What ``result.json`` may say: a run ends in one of the first three; ``cancelled`` (a signal) may be
followed by a requeue that resumes it."""
FINAL = ("success", "failed", "diverged")
"""Result statuses that end a run."""

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.parquet"
TASK_KIND = "task/"
"""Prefix of a task evaluation's ``kind`` in metrics.parquet: ``task/<evaluation name>``."""
LAUNCH_RECORD = "launch.json"
"""Written by the launcher: the latest submission of the run and the earlier ones."""
MANIFEST_FILE = "manifest.parquet"
SWEEP_FILE = "sweep.json"
RUN_LOCK = ".train.lock"
"""In a run directory: held (:func:`scaling.io.exclusive_lock`) by the one process training the run,
for its whole life; :func:`scaling.io.is_locked` on it is how status and launch know it is running."""
SWEEP_LOCK = ".sweep.lock"
"""In a sweep directory: held while a plan is written into it (re-planning re-reads under it)."""
SPEC_KEYS = (
    "run_id", "backbone", "method", "method_config", "seed", "seq_len", "batch_tokens",
    "micro_batch_size", "grad_accum_steps", "steps", "tokens", "flops_per_token", "dataset",
    "optimizer", "train",
)  # fmt: skip
"""Keys a ``spec.json`` must hold for a job to train it."""


def digest(data: Any) -> str:
    """sha1 of ``data`` as canonical JSON (sorted keys, no spaces): stable across processes."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """A JSON object, or None for a missing, half-written or foreign file (for readers that must never
    fail on one, such as ``scaling status``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------
# Run ids


def budget_label(budget: float) -> str:
    """1e18 → '1e18', 3.16e17 → '3.16e17' (three significant digits)."""
    text = f"{budget:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def dial_label(cfg: MethodConfig) -> str:
    """Short, config-only tag for run ids: ``r8``, ``w112``, ``r8-d2``, ``r64``."""
    parts = []
    if cfg.kind == "ladder":
        parts.append(f"w{cfg.side_width}" if cfg.side_width else f"r{cfg.reduction}")
        if cfg.name == "xladder":
            parts.append(f"d{cfg.delta}")
        if cfg.side_layers:
            parts.append(f"l{cfg.side_layers}")
    elif cfg.kind == "lora":
        parts.append(f"r{cfg.rank}")
    return "-".join(parts)


IDENTITY_DEFAULTS = {"loss": "plain", "optimizer": "adamw", "use_rslora": False}
"""Method dials added after runs were first planned, at the value that reproduces what runs did before
they existed: left out of the run id while they keep it, so sweeps planned earlier keep their ids, and
filled in for a recorded config that lacks them (:func:`recorded_config`), so earlier runs keep what
they were planned with whatever the defaults are now."""


def recorded_config(config: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """A method config as a run recorded it, completed with the values that reproduce what it did
    before later dials existed (only the dials its method has: ``fields``)."""
    return {k: v for k, v in IDENTITY_DEFAULTS.items() if k in fields} | config


def identity_config(cfg: MethodConfig) -> dict[str, Any]:
    """The method config as run ids hash it (see :data:`IDENTITY_DEFAULTS`)."""
    return {k: v for k, v in cfg.to_dict().items() if IDENTITY_DEFAULTS.get(k, object()) != v}


def run_id(
    *, backbone: str, arch: Arch, cfg: MethodConfig, budget: float, seed: int, seq_len: int,
    batch_tokens: int, dataset: dict[str, Any], optimizer: dict[str, Any], tag: str = "",
) -> str:  # fmt: skip
    """Readable prefix + sha1 of everything that defines the run's result (not the micro-batch split,
    which only trades memory for time, nor the constraints, which only choose which runs exist)."""
    arch_fields = {k: v for k, v in dataclasses.asdict(arch).items() if k != "source"}
    sha = digest(
        dict(backbone=backbone, arch=arch_fields, method=cfg.name, config=identity_config(cfg),
             budget=budget, seed=seed, seq_len=seq_len, batch_tokens=batch_tokens,
             dataset=dataset, optimizer={**optimizer, "warmup_steps": None})
    )  # fmt: skip
    label = "-".join(p for p in (dial_label(cfg), tag, backbone_tag(backbone)) if p)
    return f"{cfg.name}-{label + '-' if label else ''}{budget_label(budget)}-s{seed}-{sha[:8]}"


def backbone_tag(backbone: str, width: int = 24) -> str:
    """A short, readable name of a backbone for run ids: the last part of a hub id, directory or
    preset, lower-cased, with anything but letters, digits, dots and dashes dropped
    (``Qwen/Qwen2.5-1.5B`` → ``qwen2.5-1.5b``, ``runs/backbones/tiny-llama-64`` →
    ``tiny-llama-64``). The id's hash, not the tag, tells two backbones apart."""
    parts = str(backbone).replace("\\", "/").rstrip("/").split("/")
    # A config file is named after its folder (``…/qwen-7b/config.json`` → ``qwen-7b``).
    name = (parts[-2] if parts[-1].endswith(".json") and len(parts) > 1 else parts[-1]).lower()
    tag = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9.-]+", "-", name)).strip("-.")
    return tag[:width].rstrip("-.")


# --------------------------------------------------------------------------------------------------
# The run spec


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one training job needs; ``runs/<run_id>/spec.json`` holds exactly this."""

    run_id: str
    sweep: str
    backbone: str
    backbone_config: dict[str, Any]
    method: str
    method_config: dict[str, Any]
    dial: str
    """Readable dial values, e.g. ``reduction=8``."""
    dial_name: str | None
    """The dial the sweep varies for this method (what fits read N along and re-centring moves)."""
    budget: float
    seed: int
    seq_len: int
    batch_tokens: int
    micro_batch_size: int
    grad_accum_steps: int
    steps: int
    tokens: int
    """Realised training tokens: steps × batch_tokens (≈ budget / flops_per_token)."""
    flops_per_token: float
    """Executed training FLOPs per token (full-square attention; :func:`scaling.flops.cost`)."""
    flops_per_token_causal: float
    realised_flops: float
    budget_error: float
    """realised_flops / budget − 1."""
    epochs: float | None
    trainable_params: int
    backbone_params: int
    backbone_block_params: int
    embedding_params: int
    head_params: int
    peak_memory_bytes: float
    fits_gpu: bool | None
    dataset: dict[str, Any]
    """The spec's ``[dataset]`` plus ``max_epochs`` (how often the job may repeat the data)."""
    optimizer: dict[str, Any]
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """How the job runs (``[train]``: logging, evaluation, checkpoints); never changes the result."""
    levers: list[str] = dataclasses.field(default_factory=list)
    """Memory levers the planner applied to fit ``gpu_mem`` (``loss=efficient``,
    ``gradient_checkpointing``, ``micro_batch_size=N``); already in the config and micro-batch."""
    status: str = "planned"
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Task evaluations the job runs (:mod:`scaling.train.tasks`; keys in :data:`EVAL_CHECKS`).
    Like ``train``, they never change the run's result or its id; written only when there are any."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        """What ``runs/<run_id>/spec.json`` holds: the run plus the file's format version."""
        data = self.to_dict()
        if not data["evaluations"]:
            del data["evaluations"]  # specs without evaluations stay as they always were
        return {"format_version": SPEC_FORMAT_VERSION, **data}

    def manifest_row(self) -> dict[str, Any]:
        """One flat manifest row: nested tables become ``dial_*``, ``dataset_*``, ``optimizer_*``."""
        row = self.to_dict()
        del row["backbone_config"]
        del row["train"]
        del row["evaluations"]
        row["levers"] = ",".join(row["levers"])
        for prefix in ("method_config", "dataset", "optimizer"):
            short = "dial" if prefix == "method_config" else prefix
            row |= {f"{short}_{k}": _scalar(v) for k, v in row.pop(prefix).items()}
        return row


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def read_manifest_file(path: Path):
    """A sweep's ``manifest.parquet`` (polars DataFrame) with text ``run_id`` in every row, or a
    one-line ScalingError: every command keys its runs by run_id, so without it nothing can be said
    about any run."""
    import polars as pl

    try:
        manifest = pl.read_parquet(path)
    except Exception as e:  # polars raises several types for a damaged file
        raise ScalingError(f"unreadable manifest {path}: {one_line(e)}") from None
    if "run_id" not in manifest.columns:
        raise ScalingError(f"manifest {path} has no run_id column (re-plan with `scaling sweep`)")
    if manifest.schema["run_id"] != pl.String or manifest["run_id"].null_count():
        raise ScalingError(f"manifest {path}: run_id must be text in every row")
    return manifest


# --------------------------------------------------------------------------------------------------
# A run directory


@dataclasses.dataclass(frozen=True)
class RunDir:
    path: Path
    spec: dict[str, Any]

    @property
    def result_path(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / RUN_LOCK

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def result(self) -> dict[str, Any] | None:
        if not self.result_path.is_file():
            return None
        return read_json(self.result_path, "result file")

    def latest_checkpoint(self) -> Path | None:
        done = sorted(self.checkpoints.glob("step-*[0-9]")) if self.checkpoints.is_dir() else []
        return done[-1] if done else None


def open_run(run_dir: str | os.PathLike) -> RunDir:
    """The run at ``run_dir`` with its validated ``spec.json``; ScalingError when it is unusable."""
    path = Path(run_dir)
    spec_path = path / SPEC_FILE
    if not path.is_dir():
        raise ScalingError(f"run directory not found: {path}")
    if not spec_path.is_file():
        raise ScalingError(f"{path} is not a planned run (no spec.json; see `scaling sweep`)")
    spec = read_json(spec_path, "run spec")
    if not isinstance(spec, dict):
        raise ScalingError(f"{spec_path} is not a JSON object")
    version = spec.get("format_version")
    if version != SPEC_FORMAT_VERSION:
        raise ScalingError(
            f"{spec_path} has format version {version}, this scaling reads {SPEC_FORMAT_VERSION}; "
            "re-plan the sweep with this version"
        )
    missing = [k for k in SPEC_KEYS if k not in spec]
    if missing:
        raise ScalingError(f"{spec_path} lacks {', '.join(missing)}")
    try:
        check_spec(spec)
    except ScalingError as e:
        raise ScalingError(f"{spec_path}: {e}") from None
    return RunDir(path, spec)


# --------------------------------------------------------------------------------------------------
# Checking a spec.json (it may have been edited by hand since the planner wrote it)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _non_empty_str(name: str, v: Any) -> None:
    check(isinstance(v, str) and v != "", f"{name} must be a non-empty string; got {v!r}")


def _in_range(lo: float, hi: float, *, hi_open: bool = False, lo_open: bool = False):
    def validate(name: str, v: Any) -> None:
        ok = _is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        check(ok, f"{name} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}"
                  f"{')' if hi_open else ']'}; got {v!r}")  # fmt: skip

    return validate


def _non_negative_int(name: str, v: Any) -> None:
    check(_is_int(v) and v >= 0, f"{name} must be an integer ≥ 0; got {v!r}")


def _optional(validate: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    return lambda name, v: None if v is None else validate(name, v)


def _betas(name: str, v: Any) -> None:
    ok = isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    check(ok, f"{name} must be two numbers in [0, 1); got {v!r}")


def _choice(*choices: str) -> Callable[[str, Any], None]:
    def validate(name: str, v: Any) -> None:
        check(v in choices, f"{name} must be one of {', '.join(choices)}; got {v!r}")

    return validate


def _integer(name: str, v: Any) -> None:
    check(_is_int(v), f"{name} must be an integer; got {v!r}")


TRACKERS = ("tensorboard", "wandb", "trackio")
"""Experiment trackers ``[train] report_to`` may list (:mod:`scaling.train.tracking`)."""


def check_report_to(name: str, v: Any) -> None:
    """``[train] report_to``: a list of distinct :data:`TRACKERS` (empty: metrics.parquet only)."""
    ok = isinstance(v, list) and all(isinstance(t, str) for t in v)
    check(ok, f"{name} must be a list of trackers ({', '.join(TRACKERS)}); got {v!r}")
    unknown = [t for t in v if t not in TRACKERS]
    check(not unknown, f"{name}: unknown tracker {unknown[0] if unknown else ''!r}; valid: "
                       f"{', '.join(TRACKERS)}")  # fmt: skip
    check(len(set(v)) == len(v), f"{name} lists a tracker twice")


_STR = _non_empty_str
_POS_INT, _POS_NUM = check_positive_int, check_positive_number

# What the planner writes into each table (scaling.sweep.spec's DatasetSpec + max_epochs, the
# OptimizerSpec as ``for_method`` resolves it, TrainSpec), each with its check. The trainer cannot
# import the planner, so the tables are restated here; a test keeps them equal to the planner's.
DATASET_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "name": _STR, "path": _optional(_STR), "tokens": _optional(_POS_NUM), "split": _STR,
    "text_field": _STR, "prompt_field": _STR, "response_field": _STR, "eval_sequences": _POS_INT,
    "seed": _integer, "difficulty": _POS_INT, "max_epochs": _optional(_POS_NUM),
}  # fmt: skip
OPTIMIZER_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "name": _choice("adamw"), "lr": _POS_NUM, "weight_decay": _in_range(0, math.inf, hi_open=True),
    "betas": _betas, "schedule": _choice("cosine", "linear", "constant", "wsd"),
    "warmup_fraction": _in_range(0, 1, hi_open=True), "min_lr_ratio": _in_range(0, 1),
    "decay_fraction": _in_range(0, 1, lo_open=True), "grad_clip": _optional(_POS_NUM),
    "warmup_steps": _non_negative_int, "lr_multiplier": _POS_NUM,
}  # fmt: skip
TRAIN_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "log_every": _POS_INT, "eval_every": _non_negative_int,
    "checkpoint_every_minutes": _POS_NUM, "diverge_ratio": _in_range(1, math.inf, lo_open=True,
                                                                     hi_open=True),
    "keep_checkpoints": _POS_INT, "report_to": check_report_to,
}  # fmt: skip
EVAL_TASKS = ("arithmetic", "exact_match", "choice")
EVAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _eval_name(name: str, v: Any) -> None:
    check(isinstance(v, str) and EVAL_NAME.fullmatch(v) is not None,
          f"{name} must be letters, digits, '.', '_' or '-'; got {v!r}")  # fmt: skip


EVAL_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "name": _eval_name, "task": _choice(*EVAL_TASKS), "examples": _POS_INT,
    "max_new_tokens": _POS_INT, "batch_size": _POS_INT, "every": _non_negative_int,
    "path": _optional(_STR), "prompt_field": _STR, "answer_field": _STR, "options_field": _STR,
    "difficulty": _optional(_POS_INT), "ops": _STR, "seed": _integer,
}  # fmt: skip
"""One task evaluation (``[[evaluations]]``; :mod:`scaling.train.tasks`): only ``name`` is required."""
OPTIONAL_KEYS = {"dataset": (), "optimizer": ("lr_multiplier",), "train": tuple(TRAIN_CHECKS),
                 "evaluation": tuple(k for k in EVAL_CHECKS if k != "name")}  # fmt: skip
"""Table keys a spec may leave out (the trainer's defaults apply); all others must be present."""


def check_spec(spec: dict[str, Any]) -> None:
    """Raise a one-line ScalingError unless ``spec`` (a ``spec.json``) describes a run the trainer
    can train as planned: positive integer sizes that multiply up (batch_tokens = seq_len ×
    micro_batch_size × grad_accum_steps, tokens = steps × batch_tokens), a positive finite FLOPs per
    token, and dataset/optimizer/train tables with only known keys and valid values."""
    for key in ("run_id", "backbone", "method"):
        _non_empty_str(key, spec[key])
    check(isinstance(spec["method_config"], dict), "method_config must be a table")
    _integer("seed", spec["seed"])
    for key in ("seq_len", "batch_tokens", "micro_batch_size", "grad_accum_steps", "steps",
                "tokens"):  # fmt: skip
        check_positive_int(key, spec[key])
    per_step = spec["seq_len"] * spec["micro_batch_size"] * spec["grad_accum_steps"]
    check(
        spec["batch_tokens"] == per_step,
        f"batch_tokens ({spec['batch_tokens']}) must equal seq_len × micro_batch_size × "
        f"grad_accum_steps ({spec['seq_len']} × {spec['micro_batch_size']} × "
        f"{spec['grad_accum_steps']} = {per_step})",
    )
    check(
        spec["tokens"] == spec["steps"] * spec["batch_tokens"],
        f"tokens ({spec['tokens']}) must equal steps × batch_tokens "
        f"({spec['steps']} × {spec['batch_tokens']})",
    )
    check_positive_number("flops_per_token", spec["flops_per_token"])
    check(isinstance(spec.get("backbone_config", {}), dict), "backbone_config must be a table")
    for table, checks in (("dataset", DATASET_CHECKS), ("optimizer", OPTIMIZER_CHECKS),
                          ("train", TRAIN_CHECKS)):  # fmt: skip
        _check_table(table, spec[table], checks)
    check_evaluations(spec.get("evaluations", []))
    warmup = spec["optimizer"]["warmup_steps"]
    check(
        warmup <= spec["steps"],
        f"optimizer.warmup_steps ({warmup}) exceeds steps ({spec['steps']})",
    )


def check_evaluations(evaluations: Any) -> None:
    """A list of evaluation tables (:data:`EVAL_CHECKS`) with distinct names; the file-based tasks
    name their file, and ``ops`` draws from ``+-*``."""
    check(
        isinstance(evaluations, list), f"evaluations must be a list of tables; got {evaluations!r}"
    )
    for e in evaluations:
        _check_table("evaluation", e, EVAL_CHECKS)
        where = f"evaluation {e['name']}"
        task = e.get("task", "arithmetic")
        check(task == "arithmetic" or e.get("path"), f"{where}: task {task} needs a path")
        ops = e.get("ops", "+-*")
        check(set(ops) <= set("+-*"), f"{where}: ops must be drawn from '+-*'; got {ops!r}")
    names = [e["name"] for e in evaluations]
    check(len(set(names)) == len(names), "evaluations name an evaluation twice")


def _check_table(table: str, data: Any, checks: dict[str, Callable[[str, Any], None]]) -> None:
    check(isinstance(data, dict), f"{table} must be a table")
    unknown = [k for k in data if k not in checks]
    check(not unknown, f"unknown key '{table}.{unknown[0] if unknown else ''}'; valid keys: "
                       f"{', '.join(checks)}")  # fmt: skip
    missing = [k for k in checks if k not in data and k not in OPTIONAL_KEYS[table]]
    check(not missing, f"{table} lacks {', '.join(missing)}")
    for key, value in data.items():
        checks[key](f"{table}.{key}", value)
