"""The typed results of a fit: one dataclass per approach and per method, and the report of a whole fit
(what ``fits.json`` holds, through each ``to_json``).

    >>> report = fit.fit(table, spec)                                    # a FitReport
    >>> m = report.methods["ladder"]                                     # a MethodFit
    >>> m.approach3.alpha, m.approach3.ci["alpha"]                       # a ChinchillaFit
    >>> m.approach2.n_opt.A, m.holdout.mape, m.optimal_params.to_json()

Pure data: every field is computed elsewhere (:mod:`scaling.fit.approach3`, :mod:`scaling.fit.isoflop`,
:mod:`scaling.fit.bootstrap`, :mod:`scaling.fit.compare`); nothing here fits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from scaling.fit.frontier import (
    CI,
    Envelope,
    FlopsModel,
    FrontierLaw,
    PowerLaw,
    ci_json,
    optimal_allocation,
)
from scaling.fit.isoflop import IsoFLOPFit
from scaling.fit.points import Exclusion, Points
from scaling.fit.spec import FitSpec

FORMAT_VERSION = 1
"""Version of ``fits.json``."""


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A/N^α + B/D^β (approach 3) and the compute-optimal allocation it implies."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    """SUM of Huber_δ(log L̂ − log L) at the optimum."""
    delta: float
    n_points: int
    n_starts: int
    converged: int
    at_optimum: float
    """Fraction of the starts that ended at the best objective (within 0.01%)."""
    objective_spread: dict[str, float]
    """Quantiles of the final objective over starts (min, p10, median, p90, max)."""
    bound_hits: tuple[str, ...]
    grad_norm: float
    polish_message: str
    flops: FlopsModel
    """FLOPs per token F(N) = f0 + f1·N fitted to the runs: the constraint C = D·F(N)."""
    n_opt: PowerLaw | None
    """N*(C) = A·C^a fitted to the exact optimum over the observed compute range."""
    d_opt: PowerLaw | None
    c_range: tuple[float, float]
    n_range: tuple[float, float]
    loss_exponent: float | None = None
    """γ of the frontier L*(C) − E ∝ C^−γ, the log-log slope over the fitted compute range. With
    F = k·N it is exactly αβ/(α+β); with a fixed backbone cost (F = f0 + f1·N) it is not."""
    min_loss: float | None = None
    """Lowest observed loss of the points fitted: E above it contradicts the data."""
    residual_structure: dict | None = None
    """:func:`scaling.fit.approach3.residual_structure`: R², p-value, RMS, per-budget means."""
    ci: CI = dataclasses.field(default_factory=dict)

    @property
    def converged_polish(self) -> bool:
        """Whether scipy's polish ended on a convergence test (not ABNORMAL, not an iteration cap)."""
        return self.polish_message.upper().startswith("CONVERGENCE")

    @property
    def theta(self) -> np.ndarray:
        """Raw θ = (a, b, α, β, e) in the data's units."""
        return np.array([np.log(self.A), np.log(self.B), self.alpha, self.beta, np.log(self.E)])

    def predict(self, N, D) -> np.ndarray:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

    def optimal(self, C) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """N*, D*, L* at compute C."""
        return optimal_allocation(self.theta, self.flops, np.atleast_1d(C))

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("E", "A", "B", "alpha", "beta", "loss_exponent",
                                           "objective", "delta", "n_points", "grad_norm",
                                           "polish_message", "min_loss")}  # fmt: skip
        d["residual_structure"] = self.residual_structure
        d["starts"] = {"n": self.n_starts, "converged": self.converged,
                       "at_optimum": self.at_optimum, "objective_spread": self.objective_spread}  # fmt: skip
        d["bound_hits"] = list(self.bound_hits)
        d["flops_per_token"] = self.flops.to_json()
        d["n_opt"] = self.n_opt and self.n_opt.to_json()
        d["d_opt"] = self.d_opt and self.d_opt.to_json()
        d["compute_range"], d["n_range"] = list(self.c_range), list(self.n_range)
        d["ci"] = ci_json(self.ci)
        return d


@dataclasses.dataclass(frozen=True)
class EnvelopeFit:
    """Approach 1: the envelope and the laws through it."""

    envelope: Envelope
    n_opt: PowerLaw | None
    d_opt: PowerLaw | None
    loss: FrontierLaw | None

    def to_json(self) -> dict[str, Any]:
        e = self.envelope
        return {
            "curve": e.curve, "n_runs": e.n_runs, "n_points": len(e.C),
            "points": {"C": e.C.tolist(), "L": e.L.tolist(), "N": e.N.tolist(),
                       "D": e.D.tolist(), "run_id": e.run_id.tolist()},
            "n_opt": self.n_opt and self.n_opt.to_json(),
            "d_opt": self.d_opt and self.d_opt.to_json(),
            "loss": self.loss and self.loss.to_json(),
        }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Prediction:
    """Optimal allocation and loss at compute C by one approach."""

    C: float
    approach: str
    n_opt: float | None
    d_opt: float | None
    loss: float | None
    extrapolated: bool
    """C beyond the fitted budgets, or N* outside the fitted sizes."""
    ci: CI = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ci": ci_json(self.ci)}


@dataclasses.dataclass(frozen=True)
class Holdout:
    """Fit on the smaller budgets, predict the held-out largest ones."""

    held_out: tuple[float, ...]
    n_train: int
    n_test: int
    mape: float | None
    """Approach 3: mean |L̂ − L| / L over the held-out runs."""
    bias: float | None
    """Approach 3: mean (L̂ − L) / L (positive: the fit predicts higher losses than observed)."""
    approach2_loss_error: float | None = None
    """Approach 2: L*(C) predicted from the smaller budgets / observed isoFLOP minimum − 1."""
    approach2_n_ratio: float | None = None
    """Approach 2: predicted / observed N* at the held-out budget."""
    reason: str | None = None
    skipped: tuple[float, ...] = ()
    """Budgets above the held-out one left out of both sides (no interior isoFLOP minimum)."""
    approach3_loss_error: float | None = None
    """Approach 3: its L*(C) at the held-out budget / observed isoFLOP minimum − 1 (the number
    comparable with ``approach2_loss_error``)."""
    observed_loss_opt: float | None = None
    """The held-out budget's observed minimum: its windowed parabola's L*."""
    run_id: tuple[str, ...] = ()
    observed: tuple[float, ...] = ()
    """Held-out runs' losses, and approach 3's predictions of them (``predicted``)."""
    predicted: tuple[float, ...] = ()

    def loss_error(self, approach: str) -> float | None:
        """Held-out L*(C) error of ``approach`` (None where it was not scored)."""
        return {"approach3": self.approach3_loss_error,
                "approach2": self.approach2_loss_error}.get(approach)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class OptimalParams:
    """N*(C) = A·C^a: what ``scaling sweep --from-fit`` re-centres grids on."""

    A: float
    a: float
    source: str
    n: str
    ci: CI = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"A": self.A, "a": self.a, "source": self.source, "n": self.n,
                "ci": ci_json(self.ci)}  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class MethodFit:
    method: str
    points: Points
    approach3: ChinchillaFit | None
    approach2: IsoFLOPFit | None
    approach1: EnvelopeFit | None
    optimal_params: OptimalParams | None
    predictions: tuple[Prediction, ...]
    holdout: Holdout | None
    frontier: dict[str, dict[str, np.ndarray]]
    """approach → {"C", "N", "D", "L", and "<col>_lo"/"<col>_hi" bands}, on a log grid of C."""
    notes: tuple[str, ...]
    """Why an approach is missing, and other per-method remarks."""
    bootstrap: dict[str, Any]
    """Resamples used and failed per approach."""
    identification: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Per fitted approach, why its law is not identified (:mod:`scaling.fit.identify`); [] if it is."""
    optimal_params_reason: str | None = None
    """Why ``optimal_params`` is missing (no identified N*(C) law), and what to add."""
    best_lr_multiplier: float | None = None
    """Median best learning-rate multiplier at the smallest budget (a swept learning-rate grid):
    what ``sweep --from-fit`` carries up the budgets under ``lr_protocol = "smallest_budget"``."""
    joint: Any = None
    """The joint laws' comparison (:class:`scaling.fit.joint.JointComparison`), or None."""
    calibration: Any = None
    """Rolling held-out checks, the coverage of the bootstrap intervals, the calibrated intervals
    and which approach to trust (:class:`scaling.fit.calibration.Assessment`), or None."""
    samples: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)
    """Bootstrap draws the comparison reads: ``approach3`` → {"theta": (R, 5)}; ``approach2`` /
    ``approach1`` → {"E", "A", "alpha"} of L*(C) (R,) each, plus every exponent's draws."""

    def to_json(self) -> dict[str, Any]:
        p = self.points
        return {
            "n_points": len(p), "n_budgets": len(p.budgets), "budgets": p.budgets.tolist(),
            "optimal_params": self.optimal_params and self.optimal_params.to_json(),
            "optimal_params_reason": self.optimal_params_reason,
            "size_axis": self.points.size_axis, "best_lr_multiplier": self.best_lr_multiplier,
            "identified": {k: not v for k, v in self.identification.items()},
            "not_identified": {k: v for k, v in self.identification.items() if v},
            "approach3": self.approach3 and self.approach3.to_json(),
            "approach2": self.approach2 and self.approach2.to_json(),
            "approach1": self.approach1 and self.approach1.to_json(),
            "predictions": [q.to_json() for q in self.predictions],
            "holdout": self.holdout and self.holdout.to_json(),
            "joint": self.joint and self.joint.to_json(),
            "calibration": self.calibration and self.calibration.to_json(),
            "bootstrap": self.bootstrap, "notes": list(self.notes),
        }  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class FitReport:
    spec: FitSpec
    methods: dict[str, MethodFit]
    comparison: dict[str, Any] | None
    exclusions: list[Exclusion]
    warnings: list[str]
    advice: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    inputs: list[str] = dataclasses.field(default_factory=list)
    described: str | None = None
    """What was read (a table's columns, derived ones marked); None: collected sweep runs."""
    tasks: Any = None
    """Task laws (:class:`scaling.fit.taskfit.TaskReport`), or None when the runs logged no task
    evaluation."""

    def to_json(self) -> dict[str, Any]:
        methods = {m: f.to_json() for m, f in self.methods.items()}
        for a in self.advice:
            methods[a["method"]].setdefault("advice", []).append(a)
        return {
            "format_version": FORMAT_VERSION,
            "inputs": self.inputs,
            "input_columns": self.described,
            "settings": self.spec.to_dict(),
            "methods": methods,
            "comparison": self.comparison,
            "advice": self.advice,
            "exclusions": [dataclasses.asdict(e) for e in self.exclusions],
            "warnings": self.warnings,
        } | ({"tasks": self.tasks.to_json()} if self.tasks is not None else {})
