"""Task scaling laws: the two steps of the OLMo model ladder, each a pure fit.

    >>> from scaling.fit import tasklaw
    >>> tasklaw.task_names(curves)                                # ["arith"]: kinds task/<name>
    >>> data = tasklaw.task_data(points, curves, "arith", intermediate=True)
    >>> tasklaw.fit_task_loss(data.points.N, data.points.D, data.loss).alpha      # step 1
    >>> tasklaw.fit_sigmoid(data.pair_loss, data.pair_acc).L0                     # step 2

Bhagia et al. 2024, "Establishing Task Scaling Laws via Compute-Efficient Model Ladders"
(arXiv:2412.04403), predict a task's accuracy in two steps, each fitted on its own:

1. **compute → task loss**: the task loss of a run (mean next-token loss of the reference
   continuation after the prompt, :mod:`scaling.train.tasks`) follows
   L(N, D) = E + A/N^α + B/D^β (their Eq. 1), fitted to every run's final task loss. As for the
   training loss (:mod:`scaling.fit.approach3`) the residual is log L̂ − log L, robust (Huber δ), with
   θ = (log A, log B, α, β, log E) so that the scales of A and B are fitted as exponents; the point
   estimate is the best of the 16 best starts of a 243-start grid, each refined by scipy's
   ``least_squares`` (trust region with bounds, analytic Jacobian).
2. **task loss → accuracy**: Acc(L) = a / (1 + e^(−k(L − L0))) + b (their Eq. 2), fitted by scipy's
   ``curve_fit`` to (task loss, accuracy) pairs: every task evaluation of every run when
   ``tasks.intermediate`` (the paper also fits this step on intermediate checkpoints: the mapping does
   not depend on how a loss was reached), else the final ones. Accuracy falls with loss: k ≤ 0.

The bootstrap refits both steps on many resamples at once (:func:`refit_step1`, :func:`refit_step2`):
the same objectives, weighted by the resample's counts, by the loss laws' batched L-BFGS. Chained into
accuracy vs compute, with intervals and a held-out check, by :mod:`scaling.fit.taskfit`; whether each
step is identified, by :mod:`scaling.fit.taskident`.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from typing import Any

import numpy as np
import polars as pl
import scipy.optimize
import scipy.special

from scaling.fit import laws
from scaling.fit.frontier import ci_json
from scaling.fit.lbfgs import blas_single_threaded, lbfgs_batched
from scaling.fit.points import Points
from scaling.runspec import TASK_KIND

STEP1_NAMES = ("E", "A", "B", "alpha", "beta")
STEP2_NAMES = ("a", "k", "L0", "b")
STEP1_LOWER = np.array([-20.0, -20.0, 0.0, 0.0, -10.0])
"""Bounds of θ = (log A, log B, α, β, log E): exponents in [0, 3], E from 5e-5 up."""
STEP1_UPPER = np.array([80.0, 80.0, 3.0, 3.0, 5.0])
STEP1_GRID = {"alpha": (0.25, 0.75, 1.5), "e": (-1.0, 0.0, 1.0), "a": (0.0, 10.0, 20.0)}
"""Starts of step 1: α and β × log E × log A and log B (3⁵ = 243), Chinchilla's grid thinned."""
REFINED_STARTS = 16
"""Grid starts refined by least_squares for a point estimate (the best by the grid's objective)."""
CURVE_POINTS = 40
REFIT_MAXITER = 500
"""Iteration cap of the bootstrap's batched refits (:func:`refit_step1`, :func:`refit_step2`): started
from the point estimate a resample converges in tens of iterations; the cap stops only a resample
crawling along a flat valley of a law the data do not pin down (then flagged:
:func:`scaling.fit.taskident.step2_reasons`)."""


@dataclasses.dataclass(frozen=True)
class TaskLossLaw:
    """Step 1: task loss L(N, D) = E + A/N^α + B/D^β."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    n_points: int
    cost: float
    """least_squares' objective at the optimum (½ Σ Huber of the log residuals)."""
    bound_hits: tuple[str, ...] = ()
    ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    @property
    def theta(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), self.alpha, self.beta, np.log(self.E)])

    def predict(self, N, D) -> np.ndarray:
        return _step1(self.theta, np.log(np.asarray(N, float)), np.log(np.asarray(D, float)))

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (*STEP1_NAMES, "n_points", "cost")}
        return d | {"bound_hits": list(self.bound_hits), "ci": ci_json(self.ci)}


@dataclasses.dataclass(frozen=True)
class SigmoidLaw:
    """Step 2: Acc(L) = a / (1 + e^(−k(L − L0))) + b."""

    a: float
    k: float
    L0: float
    b: float
    n_points: int
    rmse: float
    """Root-mean-square accuracy residual of the fit."""
    bound_hits: tuple[str, ...] = ()
    ci: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def predict(self, L) -> np.ndarray:
        return sigmoid(np.asarray(L, float), self.a, self.k, self.L0, self.b)

    def to_json(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (*STEP2_NAMES, "n_points", "rmse")}
        return d | {"bound_hits": list(self.bound_hits), "ci": ci_json(self.ci)}


# --------------------------------------------------------------------------------------------------
# The two laws


def sigmoid(L, a, k, L0, b):
    """Acc(L) = a / (1 + e^(−k(L − L0))) + b, overflow-free (scipy's expit)."""
    return a * scipy.special.expit(k * (np.asarray(L, float) - L0)) + b


def _step1(theta, logN, logD) -> np.ndarray:
    a, b, al, be, e = theta
    return np.exp(np.logaddexp(np.logaddexp(a - al * logN, b - be * logD), e))


def _step1_residuals(theta, logN, logD, logL):
    a, b, al, be, e = theta
    return np.logaddexp(np.logaddexp(a - al * logN, b - be * logD), e) - logL


def _step1_jacobian(theta, logN, logD, logL):
    """d r / d θ: the softmax weights of the three terms (times −log N, −log D for α, β)."""
    a, b, al, be, e = theta
    u = np.stack([a - al * logN, b - be * logD, np.full_like(logN, e)])
    w = np.exp(u - u.max(axis=0))
    w /= w.sum(axis=0)
    return np.stack([w[0], w[1], -w[0] * logN, -w[1] * logD, w[2]], axis=1)


def _grid_starts() -> np.ndarray:
    g = STEP1_GRID
    return np.array([(a, b, al, be, e) for al, be, e, a, b in itertools.product(
        g["alpha"], g["alpha"], g["e"], g["a"], g["a"])])  # fmt: skip


def _bound_hits(x, lower, upper, names) -> tuple[str, ...]:
    span = upper - lower
    return tuple(n for n, v, lo, hi, s in zip(names, x, lower, upper, span, strict=True)
                 if min(v - lo, hi - v) < 1e-6 * s)  # fmt: skip


def solve_step1(N, D, L, starts: np.ndarray, delta: float) -> tuple[np.ndarray, float] | None:
    """The best least_squares end point over ``starts`` (None: every start failed)."""
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    best = None
    for x0 in starts:
        x0 = np.clip(x0, STEP1_LOWER + 1e-9, STEP1_UPPER - 1e-9)
        try:
            r = scipy.optimize.least_squares(
                _step1_residuals, x0, jac=_step1_jacobian, bounds=(STEP1_LOWER, STEP1_UPPER),
                loss="huber",
                f_scale=delta, args=(logN, logD, logL), x_scale="jac", max_nfev=400,
            )  # fmt: skip
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(r.cost) and (best is None or r.cost < best[1]):
            best = (r.x, float(r.cost))
    return best


def screen_starts(N, D, L, delta: float, keep: int = REFINED_STARTS) -> np.ndarray:
    """The ``keep`` starts of the grid with the lowest Huber objective, evaluated as one batch: a
    refinement costs ~300 least_squares evaluations (Huber with a small δ converges slowly), so
    refining all 243 would take seconds per fit, and the starts far from the data end where the
    good ones do (measured on the synthetic laws of the tests)."""
    g = _grid_starts()
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    u = np.logaddexp(np.logaddexp(g[:, :1] - g[:, 2:3] * logN, g[:, 1:2] - g[:, 3:4] * logD),
                     g[:, 4:5])  # fmt: skip
    r = np.abs(u - logL)
    huber = np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)).sum(axis=1)
    return g[np.argsort(huber, kind="stable")[:keep]]


def fit_task_loss(N, D, L, *, delta: float = 1e-3, starts: np.ndarray | None = None) -> TaskLossLaw:
    """Step 1 on every point: L(N, D) = E + A/N^α + B/D^β, refined from the best starts of the grid
    (:func:`screen_starts`) or from ``starts``."""
    N, D, L = (np.asarray(v, float) for v in (N, D, L))
    best = solve_step1(N, D, L, screen_starts(N, D, L, delta) if starts is None else starts, delta)
    if best is None:
        raise ValueError("step 1: no start converged")
    x, cost = best
    names = ("A", "B", "alpha", "beta", "E")
    return TaskLossLaw(E=float(np.exp(x[4])), A=float(np.exp(x[0])), B=float(np.exp(x[1])),
                       alpha=float(x[2]), beta=float(x[3]), n_points=len(L), cost=cost,
                       bound_hits=_bound_hits(x, STEP1_LOWER, STEP1_UPPER, names))  # fmt: skip


def _step2_bounds(L, acc):
    span = max(float(np.ptp(L)), 1e-6)
    lower = np.array([0.0, -1e3 / span, float(L.min()) - 10 * span, -0.5])
    upper = np.array([1.5, 0.0, float(L.max()) + 10 * span, 1.0])
    return lower, upper


def solve_step2(L, acc, p0=None) -> tuple[np.ndarray, float] | None:
    lower, upper = _step2_bounds(L, acc)
    starts = ([p0] if p0 is not None else []) + list(step2_starts(L, acc))
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lower + 1e-9 * (upper - lower), upper - 1e-9 * (upper - lower))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
                p, _ = scipy.optimize.curve_fit(sigmoid, L, acc, p0=x0, bounds=(lower, upper),
                                                method="trf", max_nfev=2000)  # fmt: skip
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((sigmoid(L, *p) - acc) ** 2))
        if best is None or sse < best[1]:
            best = (p, sse)
    return best


def fit_sigmoid(L, acc) -> SigmoidLaw:
    """Step 2: Acc(L) = a / (1 + e^(−k(L − L0))) + b by curve_fit (bounded: 0 ≤ a ≤ 1.5, k ≤ 0)."""
    L, acc = np.asarray(L, float), np.asarray(acc, float)
    best = solve_step2(L, acc)
    if best is None:
        raise ValueError("step 2: curve_fit did not converge")
    p, sse = best
    lower, upper = _step2_bounds(L, acc)
    return SigmoidLaw(a=float(p[0]), k=float(p[1]), L0=float(p[2]), b=float(p[3]),
                      n_points=len(L), rmse=float(np.sqrt(sse / len(L))),
                      bound_hits=_bound_hits(p, lower, upper, STEP2_NAMES))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Both steps refitted on many resamples at once (the bootstrap)


@blas_single_threaded
def refit_step1(N, D, L, weights: np.ndarray, starts: np.ndarray, delta: float,
                maxiter: int = REFIT_MAXITER) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Step 1 on ``R`` resamples at once: ``weights`` (R, n) multiplicities of the runs, ``starts``
    (R, S, 5) raw θ tried for each resample (the point estimate first). Returns each resample's best
    raw θ (R, 5) and its objective Σ w·Huber_δ(log L̂ − log L) (R,), NaN where no start gave a finite
    one.

    The objective is :func:`fit_task_loss`'s (``least_squares``' Huber loss over the resample's
    repeated points is Σ w·Huber_δ, the same function), minimised by the batched L-BFGS of the loss
    laws' bootstrap (:func:`scaling.fit.lbfgs.lbfgs_batched` on :func:`scaling.fit.laws.objective`,
    log N and log D centred on their means for conditioning, :func:`scaling.fit.laws.refit_lse`):
    one vectorised solve instead of R·S scipy calls. Box: the point estimate's on α, β and log E; on
    log A and log B the loss laws' centred box (the log of each term at the data's centre within
    ±25), which binds only on a term ~e⁻²⁵ of the loss."""
    X = np.log(np.c_[np.asarray(N, float), np.asarray(D, float)])
    lo = np.r_[laws.BOUND_A[0], laws.BOUND_A[0], STEP1_LOWER[2:]]
    hi = np.r_[laws.BOUND_A[1], laws.BOUND_A[1], STEP1_UPPER[2:]]
    return laws.refit_lse(X, np.log(np.asarray(L, float)), np.asarray(weights, float), starts,
                          delta=delta, maxiter=maxiter, box=(lo, hi))  # fmt: skip


def step2_starts(L, acc) -> np.ndarray:
    """curve_fit's default starts of step 2 (:func:`solve_step2`): the transition in the middle of
    the data or at either end of it (accuracies near chance or near saturation show only one half of
    the sigmoid), with the data's height and floor."""
    L, acc = np.asarray(L, float), np.asarray(acc, float)
    span = max(float(np.ptp(L)), 1e-6)
    height = max(float(np.ptp(acc)), 0.05)
    return np.array([[height, -4.0 / span, mid, float(acc.min())]
                     for mid in (np.median(L), L.min(), L.max())])  # fmt: skip


@blas_single_threaded
def refit_step2(L, acc, weights: np.ndarray, starts: np.ndarray,
                maxiter: int = REFIT_MAXITER) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Step 2 on ``R`` resamples at once: ``weights`` (R, n) multiplicities of the (loss, accuracy)
    pairs (each pair counts as often as its run was drawn), ``starts`` (S, 4) (a, k, L0, b) tried for
    every resample. Returns each resample's best (a, k, L0, b) (R, 4) and its Σ w·(Âcc − Acc)² (R,).

    The objective is :func:`fit_sigmoid`'s sum of squares over the resample's repeated pairs, in the
    box of the full data's fit (:func:`_step2_bounds`, so that a resample's estimate is comparable with
    the point estimate), minimised by :func:`scaling.fit.lbfgs.lbfgs_batched` with the analytic
    gradient. For conditioning the solver works on z = (L − centre)/span, so that the slope and the
    midpoint are O(1) whatever the scale of the task loss, and on the sum of squares divided by the
    point fit's mean square (O(n) at the optimum, so that the gradient tolerance means the same on
    every task)."""
    L, acc = np.asarray(L, float), np.asarray(acc, float)
    weights = np.asarray(weights, float)
    lower, upper = _step2_bounds(L, acc)
    c, span = float(np.mean(L)), max(float(np.ptp(L)), 1e-6)
    to_z = np.array([1.0, span, 1.0 / span, 1.0])  # (a, k, L0, b) → (a, κ = k·span, m, b)
    shift = np.array([0.0, 0.0, c / span, 0.0])
    lo, hi = lower * to_z - shift, upper * to_z - shift
    z = (L - c) / span
    r, s = len(weights), len(starts)
    x_init = np.clip(np.tile(np.asarray(starts, float) * to_z - shift, (r, 1)), lo, hi)
    W = np.repeat(weights, s, axis=0)
    p_point = np.asarray(starts, float)[0]
    scale = 1.0 / max(float(np.mean((sigmoid(L, *p_point) - acc) ** 2)), 1e-8)

    def fun(th, rows):
        a, kap, m, b = (th[:, i, None] for i in range(4))
        sg = scipy.special.expit(kap * (z - m))
        res = a * sg + b - acc
        wr = W[rows] * res * scale
        ds = sg * (1 - sg)
        g = np.stack([np.einsum("sn,sn->s", wr, sg),
                      np.einsum("sn,sn->s", wr, a * ds * (z - m)),
                      np.einsum("sn,sn->s", wr, -a * ds * kap),
                      wr.sum(axis=1)], axis=1)  # fmt: skip
        return 0.5 * np.einsum("sn,sn->s", wr, res), g

    batch = lbfgs_batched(fun, x_init, lo, hi, gtol=1e-6, ftol=1e-12, maxiter=maxiter)
    f = np.where(np.isfinite(batch.f), batch.f, np.inf).reshape(r, s)
    best = f.argmin(axis=1)
    x = (batch.x.reshape(r, s, 4)[np.arange(r), best] + shift) / to_z
    sse = 2 * f[np.arange(r), best] / scale
    x[~np.isfinite(sse)] = np.nan
    return x, np.where(np.isfinite(sse), sse, np.nan)


# --------------------------------------------------------------------------------------------------
# The data: task rows of metrics.parquet


def task_names(curves: pl.DataFrame | None) -> list[str]:
    """The task evaluations logged in ``curves`` (kinds ``task/<name>``), sorted."""
    if curves is None or "kind" not in curves.columns or "accuracy" not in curves.columns:
        return []
    kind = pl.col("kind").cast(pl.String)  # Categorical in a collected table
    kinds = curves.filter(kind.str.starts_with(TASK_KIND))["kind"].unique().to_list()
    return sorted(k[len(TASK_KIND) :] for k in kinds)


@dataclasses.dataclass(frozen=True)
class TaskData:
    """One method's runs with a final evaluation of the task (aligned with a subset of its points)."""

    points: Points
    loss: np.ndarray
    accuracy: np.ndarray
    pair_run: np.ndarray
    """Step 2's pairs: index (into ``points``) of the run each pair belongs to, its loss and accuracy."""
    pair_loss: np.ndarray
    pair_acc: np.ndarray


def task_data(points: Points, curves: pl.DataFrame, task: str, *, intermediate: bool) -> TaskData:
    """The final ``task/<task>`` row of each of ``points``' runs (its largest step), and the pairs
    step 2 is fitted on; runs without a finite task loss and accuracy are left out."""
    rows = (
        curves.filter((pl.col("kind") == TASK_KIND + task)
                      & pl.col("run_id").is_in(points.run_id.tolist()))
        .select("run_id", "step", pl.col("loss").cast(pl.Float64),
                pl.col("accuracy").cast(pl.Float64))
        .filter(pl.col("loss").is_finite() & (pl.col("loss") > 0) & pl.col("accuracy").is_finite())
        .sort("run_id", "step")
    )  # fmt: skip
    final = rows.group_by("run_id", maintain_order=True).last()
    by_id = {r: (lo, ac) for r, lo, ac in final.select("run_id", "loss", "accuracy").iter_rows()}
    keep = np.array([r in by_id for r in points.run_id.tolist()], dtype=bool)
    sub = points.subset(keep) if keep.any() else points.subset(keep)
    loss = np.array([by_id[r][0] for r in sub.run_id.tolist()], dtype=float)
    acc = np.array([by_id[r][1] for r in sub.run_id.tolist()], dtype=float)
    if intermediate:
        index = {r: i for i, r in enumerate(sub.run_id.tolist())}
        pr = rows.filter(pl.col("run_id").is_in(list(index)))
        pair_run = np.array([index[r] for r in pr["run_id"].to_list()], dtype=int)
        pair_loss, pair_acc = pr["loss"].to_numpy(), pr["accuracy"].to_numpy()
    else:
        pair_run, pair_loss, pair_acc = np.arange(len(loss)), loss, acc
    return TaskData(sub, loss, acc, pair_run, np.asarray(pair_loss, float),
                    np.asarray(pair_acc, float))  # fmt: skip
