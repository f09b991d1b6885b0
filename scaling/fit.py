"""Scaling-law fits: a table of runs in, typed results out. Importable without torch.

    >>> from scaling import collect, fit
    >>> from scaling.fit_spec import Columns, load_spec
    >>> spec = load_spec("analysis/default.toml")
    >>> runs = collect.collect(["runs/quickstart"])                   # tidy table of every run
    >>> report = fit.fit(runs.table(spec), spec, Columns.for_runs(spec), curves=runs.curves)
    >>> m = report.methods["ladder"]
    >>> m.approach3.alpha, m.approach3.ci["alpha"]                     # L = E + A/N^α + B/D^β
    >>> m.approach2.n_opt.A, m.approach2.n_opt.a                      # N*(C) = A·C^a (isoFLOP minima)
    >>> report.to_json()["methods"]["ladder"]["optimal_params"]       # what `scaling sweep --from-fit` reads

Per method (shared/notes/fitting.md has the methodology and its traps):

* approach 3 (:mod:`scaling.fit_laws`): L(N, D) = E + A/N^α + B/D^β on every point, log-space LSE
  parametrisation, SUM of Huber(δ = 1e-3), L-BFGS-B with analytic gradients from Chinchilla's 4500-start
  grid run as one batch; the spread of objectives over starts and any bound hit are reported. The
  compute-optimal N*(C), D*(C), L*(C) minimise L(N, C/F(N)) with the runs' own FLOPs per token F(N)
  (:func:`scaling.frontier.optimal_allocation`), not 6·N·D.
* approach 2 (:mod:`scaling.isoflop`): per-budget parabolas with the interior-minimum guard, then power
  laws N*(C), D*(C) and L*(C) = E + A·C^−α through the minima.
* approach 1 (:mod:`scaling.frontier`): the envelope of the runs' loss-vs-FLOPs curves, when per-step
  logs are given.
* bootstrap CIs (runs resampled within each budget, every fit repeated on each resample, vectorised),
  a held-out check (fit the smaller budgets, predict the largest: MAPE and signed bias) and, across
  methods, compute multipliers at equal loss, crossovers and exponent differences
  (:mod:`scaling.fit_compare`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from scaling import fit_laws
from scaling.errors import ScalingError
from scaling.fit_spec import (  # noqa: F401 (re-exported API)
    Columns,
    Exclusion,
    FitSpec,
    Points,
    Prepared,
    load_spec,
    prepare,
)
from scaling.frontier import (  # noqa: F401 (re-exported API)
    CI,
    Envelope,
    FlopsModel,
    FrontierLaw,
    PowerLaw,
    ci_json,
    fit_flops_model,
    fit_frontier_law,
    fit_power_law,
    optimal_allocation,
)
from scaling.isoflop import IsoFLOPFit, Parabola, fit_isoflop  # noqa: F401

FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Approach 3


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
    ci: CI = dataclasses.field(default_factory=dict)

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
                                           "polish_message")}  # fmt: skip
        d["starts"] = {"n": self.n_starts, "converged": self.converged,
                       "at_optimum": self.at_optimum, "objective_spread": self.objective_spread}  # fmt: skip
        d["bound_hits"] = list(self.bound_hits)
        d["flops_per_token"] = self.flops.to_json()
        d["n_opt"] = self.n_opt and self.n_opt.to_json()
        d["d_opt"] = self.d_opt and self.d_opt.to_json()
        d["compute_range"], d["n_range"] = list(self.c_range), list(self.n_range)
        d["ci"] = ci_json(self.ci)
        return d


def grid_starts(spec) -> np.ndarray:
    """Raw θ starts (a, b, α, β, e) from the spec's grid lists (Chinchilla's 4500 by default)."""
    return fit_laws.chinchilla_grid(alpha=spec.alpha, e=spec.e, a=spec.a)


def fit_approach3(points: Points, spec: FitSpec, starts: np.ndarray | None = None) -> ChinchillaFit:
    """Approach 3 on one method's points; raises ScalingError with too few points."""
    s = spec.approach3
    if len(points) < s.min_points:
        raise ScalingError(f"{len(points)} points (< approach3.min_points = {s.min_points})")
    X = np.log(np.c_[points.N, points.D])
    fit = fit_laws.fit_lse(
        X,
        np.log(points.L),
        grid_starts(s) if starts is None else starts,
        delta=s.delta,
        polish=s.polish,
    )
    a, b, al, be, e = fit.theta
    fm = fit_flops_model(points.N, points.fpt)
    c_range = (float(points.C.min()), float(points.C.max()))
    n_law = d_law = gamma = None
    if al > 0 and be > 0:
        grid = law_grid(c_range)
        N, D, L = optimal_allocation(np.array(fit.theta), fm, grid)
        if np.isfinite(N).all():
            n_law, d_law = fit_power_law(grid, N), fit_power_law(grid, D)
            gamma = -fit_power_law(grid, L - np.exp(e)).a
    return ChinchillaFit(
        E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(al),
        beta=float(be), objective=fit.objective, delta=fit.delta, n_points=fit.n_points,
        n_starts=fit.n_starts, converged=fit.converged, at_optimum=fit.at_optimum,
        objective_spread=fit.objective_spread(), bound_hits=fit.bound_hits,
        grad_norm=fit.grad_norm, polish_message=fit.polish_message, flops=fm, n_opt=n_law,
        d_opt=d_law, c_range=c_range, n_range=(float(points.N.min()), float(points.N.max())),
        loss_exponent=gamma,
    )  # fmt: skip


def law_grid(c_range: tuple[float, float]) -> np.ndarray:
    """Compute values N*(C), D*(C) and L*(C) are summarised over as power laws: the fitted range,
    widened to at least a decade around its centre (a single budget still gives local exponents)."""
    lo, hi = c_range
    mid = np.sqrt(lo * hi)
    return np.geomspace(min(lo, mid / np.sqrt(10)), max(hi, mid * np.sqrt(10)), 16)


def residuals(a3: ChinchillaFit, points: Points) -> np.ndarray:
    """log L − log L̂ of each point."""
    return np.log(points.L) - np.log(a3.predict(points.N, points.D))


def outliers(a3: ChinchillaFit, points: Points, sigma: float) -> list[tuple[int, str]]:
    """Points whose log residual lies more than ``sigma`` robust standard deviations from the median."""
    r = residuals(a3, points)
    med = np.median(r)
    sd = 1.4826 * np.median(np.abs(r - med))
    if sd <= 0:
        return []
    z = (r - med) / sd
    return [
        (
            int(i),
            f"outlier: log residual {r[i]:+.4f} = {z[i]:+.1f} robust sd from the approach-3 fit",
        )
        for i in np.flatnonzero(np.abs(z) > sigma)
    ]


# --------------------------------------------------------------------------------------------------
# Results


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
    samples: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)
    """Bootstrap draws the comparison reads: ``approach3`` → {"theta": (R, 5)}; ``approach2`` /
    ``approach1`` → {"E", "A", "alpha"} of L*(C) (R,) each, plus every exponent's draws."""

    def to_json(self) -> dict[str, Any]:
        p = self.points
        return {
            "n_points": len(p), "n_budgets": len(p.budgets), "budgets": p.budgets.tolist(),
            "optimal_params": self.optimal_params and self.optimal_params.to_json(),
            "approach3": self.approach3 and self.approach3.to_json(),
            "approach2": self.approach2 and self.approach2.to_json(),
            "approach1": self.approach1 and self.approach1.to_json(),
            "predictions": [q.to_json() for q in self.predictions],
            "holdout": self.holdout and self.holdout.to_json(),
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

    def to_json(self) -> dict[str, Any]:
        methods = {m: f.to_json() for m, f in self.methods.items()}
        for a in self.advice:
            methods[a["method"]].setdefault("advice", []).append(a)
        return {
            "format_version": FORMAT_VERSION,
            "inputs": self.inputs,
            "settings": self.spec.to_dict(),
            "methods": methods,
            "comparison": self.comparison,
            "advice": self.advice,
            "exclusions": [dataclasses.asdict(e) for e in self.exclusions],
            "warnings": self.warnings,
        }


# --------------------------------------------------------------------------------------------------
# Orchestration


def fit(
    table,
    spec: FitSpec | None = None,
    cols: Columns | None = None,
    *,
    curves=None,
    source: str = "the table",
    inputs: list[str] | None = None,
) -> FitReport:
    """Every fit for every method of ``table`` (polars DataFrame; ``cols`` names its columns,
    default: a collected sweep table). ``curves``: per-step metrics (run_id, kind, step, flops,
    tokens, loss) for approach 1. Raises ScalingError when nothing can be fitted."""
    with fit_laws.single_threaded_blas():
        return _fit(table, spec, cols, curves=curves, source=source, inputs=inputs)


def _fit(table, spec, cols, *, curves, source, inputs) -> FitReport:
    from scaling.fit_boot import fit_method
    from scaling.fit_compare import compare

    spec = spec or FitSpec()
    cols = cols or Columns.for_runs(spec)
    prep = prepare(table, spec, cols, source=source)
    exclusions, warnings = list(prep.exclusions), list(prep.warnings)
    methods: dict[str, MethodFit] = {}
    failures = []
    for i, (m, points) in enumerate(prep.points.items()):
        result = fit_method(points, spec, curves=curves, seed=[spec.bootstrap.seed, i])
        if isinstance(result, str):
            failures.append(f"{m}: {result}")
            continue
        mf, dropped = result
        exclusions += dropped
        methods[m] = mf
    if not methods:
        raise ScalingError("nothing could be fitted: " + "; ".join(failures))
    warnings += [f"{f} (method left out)" for f in failures]
    if spec.n != "trainable":
        warnings.append(
            f"N is {spec.n} parameters: optimal_params (read by `scaling sweep --from-fit`) is in "
            "that convention, while the planner expects trainable parameters"
        )
    comparison = compare(methods, spec) if len(methods) > 1 else None
    advice: list[dict[str, Any]] = []
    if spec.gpu_mem:
        from scaling.fit_advice import advise

        advice = advise(table, methods, spec)
    return FitReport(spec, methods, comparison, exclusions, warnings, advice, inputs or [source])
