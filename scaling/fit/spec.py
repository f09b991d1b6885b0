"""Fit specs (``analysis/*.toml``): how ``scaling fit`` fits, as typed frozen configs.

    >>> from scaling.fit.spec import load_spec
    >>> spec = load_spec("analysis/default.toml")          # or load_spec() for the defaults
    >>> spec.approach3.delta, spec.bootstrap.resamples

A spec states only its differences from the defaults below; unknown keys are errors that list the valid
ones (:class:`scaling.config.Config`). Sections: ``[approach1]``, ``[approach2]``, ``[approach3]``,
``[bootstrap]``, ``[holdout]``, ``[joint]``, ``[compare]``, ``[tasks]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from scaling.config import Config, check, check_choice, check_positive_int
from scaling.errors import ScalingError
from scaling.fit.laws import CHINCHILLA_A, CHINCHILLA_ALPHA, CHINCHILLA_E, HUBER_DELTA

N_CONVENTIONS = ("auto", "trainable", "backbone", "total")
LOSSES = ("final_eval", "last_k_eval", "final_train")
SOURCES = ("approach3", "approach2", "approach1")


def _number(name: str, value: Any, *, positive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    check(ok and (value > 0 or not positive), f"{name} must be a {'positive ' * positive}number")


def _numbers(name: str, values: Any) -> None:
    check(isinstance(values, list) and values != [], f"{name} must be a non-empty list of numbers")
    for v in values:
        _number(name, v, positive=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Approach1Spec(Config):
    """Envelope of per-step loss-vs-FLOPs curves (needs the runs' ``metrics.parquet``)."""

    enabled: bool = True
    curve: str = "eval"
    """Which logged loss forms the curves: ``eval`` (held-out rows) or ``train``."""
    skip_fraction: float = 0.1
    """Leading fraction of each run's steps left out (warmup and early training are noise)."""
    points: int = 30
    """Log-spaced compute values the envelope is taken at."""

    def __post_init__(self) -> None:
        check_choice("approach1.curve", self.curve, ("eval", "train"))
        check(0 <= self.skip_fraction < 1, "approach1.skip_fraction must lie in [0, 1)")
        check_positive_int("approach1.points", self.points)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Approach2Spec(Config):
    """Per-budget robust parabola of loss vs log N, then N*(C), D*(C), L*(C)."""

    enabled: bool = True
    window: float = 1.0
    """Half-width, in decades of N, of the window around a budget's lowest observed point that its
    parabola is fitted on (0: the whole grid). The lowest point's nearest neighbours are always in."""
    min_side: int = 1
    """Distinct N required on each side of a budget's lowest observed point (else the budget is
    flagged and left out of the power laws: an edge minimum is an extrapolation, not a measurement)."""
    huber: float = 0.01
    """Huber threshold of the parabola fit, relative to the budget's median loss."""

    def __post_init__(self) -> None:
        _number("approach2.window", self.window, positive=False)
        check(self.window >= 0, "approach2.window must be ≥ 0 (decades; 0: the whole grid)")
        check_positive_int("approach2.min_side", self.min_side)
        _number("approach2.huber", self.huber)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Approach3Spec(Config):
    """L(N, D) = E + A/N^α + B/D^β over all points, from a grid of starts."""

    enabled: bool = True
    delta: float = HUBER_DELTA
    """Huber δ on log-loss residuals (Chinchilla: 1e-3)."""
    alpha: list[float] = dataclasses.field(default_factory=lambda: list(CHINCHILLA_ALPHA))
    """Start values of α and of β (Chinchilla: 0, 0.5, …, 2)."""
    e: list[float] = dataclasses.field(default_factory=lambda: list(CHINCHILLA_E))
    """Start values of e = log E (Chinchilla: −1, −0.5, …, 1)."""
    a: list[float] = dataclasses.field(default_factory=lambda: list(CHINCHILLA_A))
    """Start values of a = log A and of b = log B, N and D in their own units (Chinchilla: 0, 5, …, 25).
    The default grid has 5·5·5·6·6 = 4500 starts."""
    polish: int = 3
    """Best distinct end points refined by scipy's L-BFGS-B (ftol = 0, tight gtol)."""
    min_points: int = 8
    """Fewest points per method for a five-parameter fit."""

    def __post_init__(self) -> None:
        _number("approach3.delta", self.delta)
        for key in ("alpha", "e", "a"):
            _numbers(f"approach3.{key}", getattr(self, key))
        check_positive_int("approach3.polish", self.polish)
        check_positive_int("approach3.min_points", self.min_points)
        check(self.min_points >= 6, "approach3.min_points must be ≥ 6 (five parameters)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BootstrapSpec(Config):
    """Confidence intervals by resampling runs (within each budget) and refitting."""

    resamples: int = 1000
    """Resamples (0: no intervals)."""
    level: float = 0.95
    """Coverage of the percentile intervals."""
    seed: int = 0
    starts: int = 4
    """Grid starts tried per resample besides the point estimate (approach 3)."""

    def __post_init__(self) -> None:
        check(isinstance(self.resamples, int) and self.resamples >= 0, "bootstrap.resamples ≥ 0")
        check(0 < self.level < 1, "bootstrap.level must lie in (0, 1)")
        check(isinstance(self.seed, int), "bootstrap.seed must be an integer")
        check(isinstance(self.starts, int) and self.starts >= 0, "bootstrap.starts ≥ 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HoldoutSpec(Config):
    """Fit on the smaller budgets, predict the largest ones."""

    budgets: int = 1
    """Largest budgets held out (0: no held-out check)."""
    rolling: bool = True
    """Also the rolling checks (:mod:`scaling.fit.calibration`): for every budget with an interior
    isoFLOP minimum and two budgets below it, refit on the smaller budgets and predict its L*; their
    errors give each interval's empirical coverage and widen the L* intervals of the predictions
    for a law that does not hold. Costs one refit (bootstrap included) per such budget."""
    rolling_resamples: int = 200
    """Bootstrap resamples of each rolling refit, at most ``bootstrap.resamples``. A fold's interval
    is used only for its width and whether it holds the observed optimum; 200 resamples put the
    ends of a 95% interval within a few per cent of their 1000-resample values (each tail has 5
    resamples), at a fifth of the cost — the folds were half of a 10,000-run fit's time."""
    pool: bool = True
    """Each method's discrepancy τ is the larger of its own folds' and all methods' folds' (of the
    same approach and L*(C) form): the sweep's methods share its data, schedule and budgets, and a
    method's two or three folds alone often miss a bend its neighbours show
    (:mod:`scaling.fit.calibration`)."""

    def __post_init__(self) -> None:
        check(isinstance(self.budgets, int) and self.budgets >= 0, "holdout.budgets ≥ 0")
        check(isinstance(self.rolling, bool), "holdout.rolling must be true or false")
        check(isinstance(self.rolling_resamples, int) and not isinstance(self.rolling_resamples, bool)
              and self.rolling_resamples >= 0, "holdout.rolling_resamples must be an integer ≥ 0")  # fmt: skip
        check(isinstance(self.pool, bool), "holdout.pool must be true or false")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JointSpec(Config):
    """Joint laws (:mod:`scaling.fit.joint`): additive and multiplicative forms, and their +peft
    versions when the PEFT size varies apart from the backbone, compared on the held-out budgets."""

    enabled: bool = True

    def __post_init__(self) -> None:
        check(isinstance(self.enabled, bool), "joint.enabled must be true or false")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareSpec(Config):
    """Method comparison: frontiers, compute multipliers, crossovers."""

    source: str = "auto"
    """Frontier L*(C) the comparison reads: ``auto`` (the approach with the lowest held-out L*(C)
    error, said in the summary), ``approach3`` (min over N of L(N, C/F(N))), ``approach2``
    (E + A·C^−α through the isoFLOP minima) or ``approach1`` (the same through the envelope)."""
    baseline: str | None = None
    """Method every other one is compared with (default: the one with the lowest frontier loss at
    the largest budget all methods reached)."""

    def __post_init__(self) -> None:
        check_choice("compare.source", self.source, ("auto", *SOURCES))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TasksSpec(Config):
    """Task scaling laws (:mod:`scaling.fit.tasklaw`): compute → task loss → accuracy, fitted when
    the runs logged task evaluations (``task/<name>`` rows of metrics.parquet)."""

    enabled: bool = True
    """Fit task laws when the runs have task evaluations (false: never)."""
    names: list[str] = dataclasses.field(default_factory=list)
    """Task evaluations to fit (default: every one the runs logged)."""
    intermediate: bool = True
    """Fit step 2 (task loss → accuracy) on every logged evaluation, not only each run's final one."""
    delta: float = HUBER_DELTA
    """Huber δ on step 1's log task-loss residuals."""
    resamples: int = 200
    """Bootstrap resamples of the task laws, at most ``bootstrap.resamples``: all refitted at once by
    the batched L-BFGS (its time: ``bench/task_bootstrap.py``, results in bench/README.md)."""
    min_points: int = 6
    """Fewest runs with a final evaluation for step 1's five parameters."""

    def __post_init__(self) -> None:
        check(isinstance(self.enabled, bool), "tasks.enabled must be true or false")
        check(isinstance(self.intermediate, bool), "tasks.intermediate must be true or false")
        check(isinstance(self.names, list) and all(isinstance(s, str) for s in self.names),
              "tasks.names must be a list of task names")  # fmt: skip
        _number("tasks.delta", self.delta)
        check(isinstance(self.resamples, int) and not isinstance(self.resamples, bool)
              and self.resamples >= 0, "tasks.resamples must be an integer ≥ 0")  # fmt: skip
        check_positive_int("tasks.min_points", self.min_points)
        check(self.min_points >= 6, "tasks.min_points must be ≥ 6 (five parameters)")


SECTIONS: dict[str, type[Config]] = {
    "approach1": Approach1Spec,
    "approach2": Approach2Spec,
    "approach3": Approach3Spec,
    "bootstrap": BootstrapSpec,
    "holdout": HoldoutSpec,
    "joint": JointSpec,
    "compare": CompareSpec,
    "tasks": TasksSpec,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitSpec(Config):
    n: str = "auto"
    """N convention: ``auto`` (a method's backbone parameters when its runs span several backbones —
    the backbone ladder is then the size axis — else its trainable parameters), ``trainable``
    (adapter / side-net parameters; several backbones are then fitted apart), ``backbone`` or
    ``total``."""
    loss: str = "final_eval"
    """Loss of a run: ``final_eval``, ``last_k_eval`` (mean of the last ``last_k`` evals) or
    ``final_train``."""
    last_k: int = 3
    methods: list[str] = dataclasses.field(default_factory=list)
    """Methods to fit (default: all in the table)."""
    exclude: list[str] = dataclasses.field(default_factory=list)
    """Run ids left out (each is listed as excluded by the spec)."""
    budget_tol: float = 0.1
    """Without a budget column, points whose log10 C lie within this many decades of their neighbour
    form one isoFLOP budget."""
    k: float = 6.0
    """FLOPs per parameter per token, only to derive C = k·N·D (or D = C/(k·N)) for a table that lacks
    FLOPs (or tokens); sweep runs carry their exact FLOPs per token."""
    outlier_sigma: float = 0.0
    """Leave out points whose approach-3 log residual exceeds this many robust standard deviations
    (1.4826·MAD) and refit (0: off). Each is listed with its residual."""
    predict: list[float] = dataclasses.field(default_factory=list)
    """Compute budgets to report the optimal allocation and predicted loss at."""
    gpu_mem: str | None = None
    """Card capacity for memory-aware advice at the ``predict`` budgets, e.g. ``12GB``."""
    approach1: Approach1Spec = dataclasses.field(default_factory=Approach1Spec)
    approach2: Approach2Spec = dataclasses.field(default_factory=Approach2Spec)
    approach3: Approach3Spec = dataclasses.field(default_factory=Approach3Spec)
    bootstrap: BootstrapSpec = dataclasses.field(default_factory=BootstrapSpec)
    holdout: HoldoutSpec = dataclasses.field(default_factory=HoldoutSpec)
    joint: JointSpec = dataclasses.field(default_factory=JointSpec)
    compare: CompareSpec = dataclasses.field(default_factory=CompareSpec)
    tasks: TasksSpec = dataclasses.field(default_factory=TasksSpec)

    def __post_init__(self) -> None:
        check_choice("n", self.n, N_CONVENTIONS)
        check_choice("loss", self.loss, LOSSES)
        check_positive_int("last_k", self.last_k)
        for key, section in SECTIONS.items():
            check(isinstance(getattr(self, key), section), f"[{key}] must be a table")
        for key in ("methods", "exclude"):
            v = getattr(self, key)
            check(isinstance(v, list) and all(isinstance(s, str) for s in v), f"{key}: strings")
        _number("budget_tol", self.budget_tol)
        _number("k", self.k)
        _number("outlier_sigma", self.outlier_sigma, positive=False)
        check(self.outlier_sigma >= 0, "outlier_sigma must be ≥ 0")
        check(isinstance(self.predict, list), "predict must be a list of FLOPs")
        for c in self.predict:
            _number("predict", c)
        if self.gpu_mem is not None:
            from scaling.flops import parse_bytes

            try:
                parse_bytes(self.gpu_mem)
            except ValueError as e:
                raise ScalingError(f"gpu_mem: {e}") from None


def load_spec(path: str | None = None) -> FitSpec:
    """The defaults, or a TOML spec stating its differences from them."""
    if path is None:
        return FitSpec()
    return FitSpec.from_toml(path, what="fit spec")
