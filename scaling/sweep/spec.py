"""Sweep specs: the TOML dataclasses a sweep is declared in, layered over the built-in defaults.

    >>> from scaling.sweep.spec import load_spec
    >>> spec = load_spec("sweeps/quickstart.toml")    # layered over the defaults (sweeps/default.toml)
    >>> spec.methods, spec.seq_len, spec.identity()

Specs are TOML files stating only their differences from the defaults (the field defaults below, also
written out in ``sweeps/default.toml``); ``extends = "other.toml"`` layers a spec over another one.
Tables merge key by key, lists replace. In ``[method.<name>]`` a scalar fixes a dial, a list is a grid
axis, and ``{min, max, num}`` is a log-spaced grid (:mod:`scaling.sweep.grid`). ``[launch]`` is the
submission table of :class:`scaling.launch.spec.LaunchSpec`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

from scaling import flops, methods
from scaling.arch import family_members
from scaling.config import (
    Config,
    check,
    check_choice,
    check_positive_int,
    check_positive_number,
    merge_tables,
    read_toml,
)
from scaling.errors import ScalingError
from scaling.launch.spec import LaunchSpec
from scaling.runspec import check_evaluations, check_report_to, digest
from scaling.sweep.grid import dial_grid, swept_dial

SCHEDULES = ("cosine", "linear", "constant", "wsd")
LR_WIDTH_RULES = ("inverse", "none")
LR_PROTOCOLS = ("every_budget", "smallest_budget")
FAMILY_PREFIX = "family:"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec(Config):
    name: str = "synthetic-arithmetic"
    """A built-in synthetic task (``synthetic-arithmetic``) or a Hugging Face dataset name (needs network
    and ``pip install datasets``); ignored when ``path`` is given."""
    path: str | None = None
    """Local data: a ``.jsonl``/``.json``/``.parquet``/``.txt`` file, a directory of them, or a glob."""
    tokens: float | None = None
    """Tokens in one epoch of the dataset; enables the epoch count and ``constraints.max_epochs``.
    For the synthetic task it also fixes the corpus size (unset: as many fresh examples as a run needs)."""
    split: str = "train"
    """Split of a Hugging Face dataset to train on (the held-out split is carved out of it)."""
    text_field: str = "text"
    """Column of plain text (packed into sequences)."""
    prompt_field: str = "prompt"
    """Column of prompts: with ``response_field`` present, the loss is on responses only."""
    response_field: str = "response"
    eval_sequences: int = 64
    """Held-out sequences of ``seq_len`` tokens, set aside before training (the same for every run)."""
    seed: int = 0
    """Data seed: synthetic corpus and held-out split (a run's own seed only orders its batches)."""
    difficulty: int = 3
    """Synthetic arithmetic: largest operand length in digits (answers carry chain-of-thought steps)."""

    def __post_init__(self) -> None:
        check(
            isinstance(self.name, str) and self.name != "",
            "dataset.name must be a non-empty string",
        )
        check(
            self.path is None or (isinstance(self.path, str) and self.path != ""),
            "dataset.path must be a non-empty string",
        )
        check_positive_number("dataset.tokens", self.tokens, allow_none=True)
        for key in ("split", "text_field", "prompt_field", "response_field"):
            value = getattr(self, key)
            check(
                isinstance(value, str) and value != "", f"dataset.{key} must be a non-empty string"
            )
        check_positive_int("dataset.eval_sequences", self.eval_sequences)
        check_positive_int("dataset.difficulty", self.difficulty)
        check(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            f"dataset.seed must be an integer; got {self.seed!r}",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerSpec(Config):
    name: str = "adamw"
    """Optimizer (AdamW for every method; docs/methods.md)."""
    lr: float = 2e-4
    """Peak learning rate (QLoRA's 2e-4) unless ``lr_by_method`` names the method."""
    lr_by_method: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"ladder": 3e-3, "xladder": 3e-3}
    )
    """Per-method peak learning rate (LST used 3e-3 for side nets); for a side net, at
    ``lr_reference_width`` when ``lr_width_rule`` scales it."""
    lr_width_rule: str = "inverse"
    """How a side net's (Ladder's, xLadder's) learning rate follows its width d_s: ``inverse``,
    lr × lr_reference_width / d_s — μP's rule for Adam on hidden matrices, whose updates grow with
    fan-in (Yang et al. 2022, "Tensor Programs V") — or ``none`` (one rate for every width)."""
    lr_reference_width: int = 128
    """Side width at which the side nets' ``lr_by_method`` holds under ``lr_width_rule``."""
    lr_grid: list[float] = dataclasses.field(default_factory=list)
    """Multipliers of each run's learning rate to sweep, e.g. ``[0.5, 1, 2]`` (empty: one rate). The
    fit keeps, per method, size and budget, the best of them, and flags a best at the grid's edge."""
    lr_protocol: str = "every_budget"
    """``every_budget``: the grid at every budget; ``smallest_budget``: the grid at the smallest budget
    only, the others at the best multiplier a fit of it found (``sweep --from-fit``; ×1 before)."""
    weight_decay: float = 0.0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"
    """LR schedule over exactly the run's planned steps (only end-of-schedule losses are isoFLOP points):
    ``cosine``, ``linear`` (both decay to ``min_lr_ratio``), ``constant``, or ``wsd`` (warmup-stable-decay:
    constant, then a linear decay over the last ``decay_fraction`` of the steps; Hägele et al. 2024)."""
    warmup_fraction: float = 0.05
    """Warm-up steps = ceil(fraction · steps)."""
    min_lr_ratio: float = 0.1
    """Final learning rate / peak learning rate."""
    decay_fraction: float = 0.2
    """``wsd`` only: fraction of the steps spent decaying."""
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        check_choice("optimizer.name", self.name, ("adamw",))
        check_choice("optimizer.schedule", self.schedule, SCHEDULES)
        check_positive_number("optimizer.lr", self.lr)
        check(isinstance(self.lr_by_method, dict), "optimizer.lr_by_method must be a table")
        for name, lr in self.lr_by_method.items():
            methods.config_class(name)
            check_positive_number(f"optimizer.lr_by_method.{name}", lr)
        check(0 <= self.weight_decay, "optimizer.weight_decay must be ≥ 0")
        check(len(self.betas) == 2, "optimizer.betas must be two numbers")
        check(0 <= self.warmup_fraction < 1, "optimizer.warmup_fraction must be in [0, 1)")
        check(0 <= self.min_lr_ratio <= 1, "optimizer.min_lr_ratio must be in [0, 1]")
        check(0 < self.decay_fraction <= 1, "optimizer.decay_fraction must be in (0, 1]")
        check_positive_number("optimizer.grad_clip", self.grad_clip, allow_none=True)
        check_choice("optimizer.lr_width_rule", self.lr_width_rule, LR_WIDTH_RULES)
        check_positive_int("optimizer.lr_reference_width", self.lr_reference_width)
        check(isinstance(self.lr_grid, list), "optimizer.lr_grid must be a list of multipliers")
        for m in self.lr_grid:
            check_positive_number("optimizer.lr_grid", m)
        check(len(set(self.lr_grid)) == len(self.lr_grid), "optimizer.lr_grid lists a value twice")
        check_choice("optimizer.lr_protocol", self.lr_protocol, LR_PROTOCOLS)

    def for_method(self, method: str, steps: int, *, side_width: int | None = None,
                   multiplier: float | None = None) -> dict[str, Any]:  # fmt: skip
        """What one run's optimizer needs: the resolved learning rate (the method's, scaled by its
        side width under ``lr_width_rule``, times ``multiplier`` from ``lr_grid``) and warm-up steps.
        The planning rules themselves stay in the sweep's spec, not in each run's."""
        out = self.to_dict()
        for key in ("lr_by_method", "lr_width_rule", "lr_reference_width", "lr_grid",
                    "lr_protocol"):  # fmt: skip
            del out[key]
        lr = self.lr_by_method.get(method, self.lr)
        if side_width and self.lr_width_rule == "inverse":
            lr *= self.lr_reference_width / side_width
        if multiplier is not None:
            out["lr_multiplier"] = multiplier
            lr *= multiplier
        out["lr"] = lr
        out["warmup_steps"] = math.ceil(self.warmup_fraction * steps)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constraints(Config):
    min_steps: int = 100
    """Fewest optimizer steps a run may take; fewer and the point is dropped."""
    max_epochs: float | None = None
    """Most passes over the dataset (needs ``dataset.tokens``)."""
    gpu_mem: str | None = None
    """GPU memory cap, e.g. ``24GB`` or ``80GiB``; points whose estimated peak exceeds it are dropped."""
    tolerance: float = 0.01
    """Largest allowed |realised compute / budget − 1| after rounding to whole steps."""

    def __post_init__(self) -> None:
        check_positive_int("constraints.min_steps", self.min_steps)
        check_positive_number("constraints.max_epochs", self.max_epochs, allow_none=True)
        check(0 < self.tolerance < 1, "constraints.tolerance must be in (0, 1)")
        if self.gpu_mem is not None:
            try:
                flops.parse_bytes(str(self.gpu_mem))
            except ValueError as e:
                raise ScalingError(f"constraints.gpu_mem: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridSpec(Config):
    points: int = 5
    """Dial values per budget when the grid is centred on a fit (``from_fit``)."""
    half_width: float = 0.5
    """Decades of trainable parameters either side of the predicted optimum (fit-centred grids)."""

    def __post_init__(self) -> None:
        check_positive_int("grid.points", self.points)
        check_positive_number("grid.half_width", self.half_width)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSpec(Config):
    """How a job runs, not what it computes: none of this changes a run's result or its id."""

    log_every: int = 10
    """Optimizer steps per metrics row (the first and last steps are always logged)."""
    eval_every: int = 0
    """Optimizer steps between held-out evaluations (0: ~4 per run); the last step always evaluates."""
    checkpoint_every_minutes: float = 10.0
    """Wall-clock minutes between checkpoints (and one on SIGTERM/SIGUSR2, how SLURM preempts)."""
    diverge_ratio: float = 4.0
    """A run whose smoothed train loss exceeds this × its first loss is stopped as ``diverged``."""
    keep_checkpoints: int = 1
    """Checkpoints kept while a run trains (all are removed once it succeeds)."""
    report_to: list[str] = dataclasses.field(default_factory=list)
    """Experiment trackers mirroring ``metrics.parquet``, the run's spec and its provenance:
    ``tensorboard``, ``wandb`` and/or ``trackio`` (each an optional extra; :mod:`scaling.train.tracking`).
    Empty (the default): ``metrics.parquet`` only."""

    def __post_init__(self) -> None:
        check_positive_int("train.log_every", self.log_every)
        check(
            isinstance(self.eval_every, int) and self.eval_every >= 0,
            "train.eval_every must be an integer ≥ 0",
        )
        check_positive_number("train.checkpoint_every_minutes", self.checkpoint_every_minutes)
        check_positive_number("train.diverge_ratio", self.diverge_ratio)
        check(self.diverge_ratio > 1, "train.diverge_ratio must be > 1")
        check_positive_int("train.keep_checkpoints", self.keep_checkpoints)
        check_report_to("train.report_to", self.report_to)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalSpec(Config):
    """One task evaluation (``[[evaluations]]``): run by every job of the sweep, periodically and at
    its last step, logged as ``task/<name>`` rows of ``metrics.parquet`` and summarised in
    ``result.json`` (:mod:`scaling.train.tasks`). Like ``[train]``, it never changes a run's result."""

    name: str
    """Names the evaluation in the metrics (``task/<name>``) and the result (letters, digits, ._-)."""
    task: str = "arithmetic"
    """``arithmetic`` (the built-in chain-of-thought task: exact match of the answer and the CoT's
    length, greedy), ``exact_match`` (a JSONL file of prompts and answers, greedy) or ``choice`` (a
    JSONL file of prompts, options and the right one: highest log-likelihood)."""
    examples: int = 64
    """Examples evaluated (the first ones of the file)."""
    max_new_tokens: int = 128
    """Most tokens generated per example: the same decoding budget for every method."""
    batch_size: int = 16
    """Examples per forward pass or generation batch (memory only)."""
    every: int = 0
    """Optimizer steps between evaluations (0: with each held-out loss evaluation); always at the end."""
    path: str | None = None
    """``exact_match`` and ``choice``: the JSONL file."""
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    """The answer's text (``exact_match``), or the right option's index or text (``choice``)."""
    options_field: str = "options"
    difficulty: int | None = None
    """``arithmetic``: largest operand length (default: the dataset's)."""
    ops: str = "+-*"
    """``arithmetic``: operations drawn."""
    seed: int = 1
    """``arithmetic``: seed of the evaluation's examples (must differ from the training data's)."""

    def __post_init__(self) -> None:
        check_evaluations([{k: v for k, v in self.to_dict().items() if v is not None}])


SECTIONS: dict[str, type[Config]] = {
    "dataset": DatasetSpec,
    "optimizer": OptimizerSpec,
    "constraints": Constraints,
    "grid": GridSpec,
    "train": TrainSpec,
    "launch": LaunchSpec,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SweepSpec(Config):
    name: str = "default"
    """Sweep name: the default output directory is ``runs/<name>`` (default: the spec file's stem)."""
    backbones: list[str] = dataclasses.field(default_factory=lambda: ["qwen2.5-0.5b"])
    """Backbones: presets, model directories, config.json files or hub names, or ``family:<name>``
    for every member of a family (:data:`scaling.arch.FAMILIES`: ``tiny``, ``qwen2.5``,
    ``llama-3``); each is a grid axis. Across several backbones the fit's size axis is the
    backbone's parameter count, and ``--from-fit`` picks the members nearest N*(C) per budget."""
    backbone_config: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Inline config.json fields per backbone reference, used while the reference does not resolve."""
    methods: list[str] = dataclasses.field(default_factory=lambda: ["ladder", "qlora"])
    """Methods to compare (see ``scaling.methods.REGISTRY``)."""
    method: dict[str, dict[str, Any]] = dataclasses.field(
        default_factory=lambda: {
            "ladder": {"reduction": [2, 4, 8, 16, 32]},
            "qlora": {"rank": [4, 8, 16, 32, 64, 128]},
        }
    )
    """Dials per method: scalar = fixed, list = grid axis, {min, max, num} = log-spaced grid."""
    seq_len: int = 1024
    """Tokens per training sequence."""
    batch_tokens: int = 65536
    """Tokens per optimizer step (a multiple of seq_len × micro_batch_size)."""
    micro_batch_size: int = 1
    """Sequences per forward/backward pass (gradient accumulation makes up the batch); sets memory."""
    budgets: list[float] = dataclasses.field(default_factory=list)
    """Compute budgets in FLOPs, used when none are given on the command line."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """One run per seed at every point."""
    dataset: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    optimizer: OptimizerSpec = dataclasses.field(default_factory=OptimizerSpec)
    constraints: Constraints = dataclasses.field(default_factory=Constraints)
    grid: GridSpec = dataclasses.field(default_factory=GridSpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    launch: LaunchSpec = dataclasses.field(default_factory=LaunchSpec)
    """Submission defaults for ``scaling launch`` / ``sweep --submit`` (flags win)."""
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Task evaluations every run performs (``[[evaluations]]`` tables, :class:`EvalSpec`); none by
    default: runs then log the held-out loss only."""

    def __post_init__(self) -> None:
        check(
            isinstance(self.name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name),
            f"name must be letters, digits, '.', '_' or '-'; got {self.name!r}",
        )
        for key, section in SECTIONS.items():
            check(isinstance(getattr(self, key), section), f"[{key}] must be a table")
        check(
            isinstance(self.backbones, list) and self.backbones != [],
            "backbones must be a non-empty list",
        )
        check(all(isinstance(b, str) for b in self.backbones), "backbones must be strings")
        refs = [ref for b in self.backbones for ref, _ in _expand(b)]
        check(
            len(set(refs)) == len(refs),
            "backbones lists a backbone twice (after expanding families)",
        )
        check(
            isinstance(self.methods, list) and self.methods != [],
            "methods must be a non-empty list",
        )
        check(len(set(self.methods)) == len(self.methods), "methods lists a method twice")
        check(isinstance(self.method, dict), "method must be a table of [method.<name>] tables")
        for name in [*self.methods, *self.method]:
            methods.config_class(name)
        for name in self.methods:
            dial_grid(self, name)  # validates every combination of dials
            swept_dial(self, name)  # and which one the sweep varies
        for key in ("seq_len", "batch_tokens", "micro_batch_size"):
            check_positive_int(key, getattr(self, key))
        sequences = self.seq_len * self.micro_batch_size
        check(
            self.batch_tokens % sequences == 0,
            f"batch_tokens ({self.batch_tokens}) must be a multiple of seq_len × micro_batch_size "
            f"({sequences})",
        )
        # A string is iterable too: without this check "lots" would be judged letter by letter.
        check(
            isinstance(self.budgets, list),
            f"budgets must be a list of numbers (FLOPs); got {self.budgets!r}",
        )
        for b in self.budgets:
            check_positive_number("budgets", b)
        check(isinstance(self.seeds, list) and self.seeds != [], "seeds must be a non-empty list")
        for s in self.seeds:
            check(
                isinstance(s, int) and not isinstance(s, bool), f"seeds must be integers; got {s!r}"
            )
        check(len(set(self.seeds)) == len(self.seeds), "seeds lists a seed twice")
        check(
            self.constraints.max_epochs is None or self.dataset.tokens is not None,
            "constraints.max_epochs needs dataset.tokens (the size of one epoch)",
        )
        check(isinstance(self.evaluations, list) and all(isinstance(e, dict) for e in self.evaluations),
              "evaluations must be a list of [[evaluations]] tables")  # fmt: skip
        evals = [EvalSpec.from_dict(e, where=f"[[evaluations]] {i + 1}")
                 for i, e in enumerate(self.evaluations)]  # fmt: skip
        check_evaluations([e.to_dict() for e in evals])  # distinct names
        for e in evals:
            synthetic = self.dataset.path is None and self.dataset.name == "synthetic-arithmetic"
            check(e.task != "arithmetic" or not synthetic or e.seed != self.dataset.seed,
                  f"evaluation {e.name}: seed {e.seed} is the training data's (dataset.seed): it "
                  "would test on training examples")  # fmt: skip

    def run_evaluations(self) -> list[dict[str, Any]]:
        """The evaluations as each run's ``spec.json`` holds them: every key, defaults filled in."""
        return [EvalSpec.from_dict(e).to_dict() for e in self.evaluations]

    def backbone_refs(self) -> dict[str, dict[str, Any] | None]:
        """Every backbone reference, families expanded (smallest member first), with the inline
        ``config.json`` fields that stand in for it until it exists (the spec's own win)."""
        return {ref: self.backbone_config.get(ref, inline)
                for b in self.backbones for ref, inline in _expand(b)}  # fmt: skip

    def identity(self) -> str:
        """Hash of everything but the budgets and the submission settings: what must match to add
        runs to an existing directory."""
        data = self.to_dict()
        del data["budgets"], data["launch"]
        # Where metrics are mirrored changes no result (and hashing it would change the identity of
        # every sweep planned before report_to existed).
        del data["train"]["report_to"]
        if not data["evaluations"]:
            del data["evaluations"]  # sweeps planned before evaluations existed keep their identity
        return digest(data)[:12]


def _expand(entry: str) -> list[tuple[str, dict[str, Any] | None]]:
    if entry.startswith(FAMILY_PREFIX):
        return family_members(entry.removeprefix(FAMILY_PREFIX))
    return [(entry, None)]


# --------------------------------------------------------------------------------------------------
# Loading


def _layers(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ScalingError(f"{path} extends itself (through {' → '.join(map(str, seen))})")
    data = read_toml(path, "sweep spec")
    data.setdefault("name", path.stem)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _layers(path.parent / str(parent), (*seen, path.resolve()))
    base.pop("name", None)
    return merge_tables(base, data)


def load_spec(path: str | Path | None = None, **overrides: Any) -> SweepSpec:
    """The spec at ``path`` layered over the defaults (``None``: the built-in default spec)."""
    data = _layers(Path(path)) if path is not None else {}
    data = merge_tables(data, overrides)
    return SweepSpec.from_dict(
        merge_tables(SweepSpec().to_dict(), data), where=str(path or "defaults")
    )
