"""Approach 3 on one method's points: L(N, D) = E + A/N^α + B/D^β and the compute-optimal allocation
it implies with the runs' own FLOPs per token (not 6·N·D).

    >>> from scaling.fit.approach3 import fit_approach3, outliers
    >>> a3 = fit_approach3(points, spec)          # a ChinchillaFit
    >>> a3.optimal(1e19)                          # N*, D*, L* at C = 1e19

The law is fitted in the log-space LSE form with a SUM of Huber(δ) and batched multi-start L-BFGS-B
(:mod:`scaling.fit.laws`); docs/fitting.md explains why.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.stats

from scaling.errors import ScalingError
from scaling.fit import laws
from scaling.fit.frontier import fit_flops_model, fit_power_law, optimal_allocation
from scaling.fit.points import Points
from scaling.fit.results import ChinchillaFit
from scaling.fit.spec import FitSpec


def grid_starts(spec) -> np.ndarray:
    """Raw θ starts (a, b, α, β, e) from the spec's grid lists (Chinchilla's 4500 by default)."""
    return laws.chinchilla_grid(alpha=spec.alpha, e=spec.e, a=spec.a)


def fit_approach3(points: Points, spec: FitSpec, starts: np.ndarray | None = None) -> ChinchillaFit:
    """Approach 3 on one method's points; raises ScalingError with too few points."""
    s = spec.approach3
    if len(points) < s.min_points:
        raise ScalingError(f"{len(points)} points (< approach3.min_points = {s.min_points})")
    X = np.log(np.c_[points.N, points.D])
    fit = laws.fit_lse(
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
    out = ChinchillaFit(
        E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(al),
        beta=float(be), objective=fit.objective, delta=fit.delta, n_points=fit.n_points,
        n_starts=fit.n_starts, converged=fit.converged, at_optimum=fit.at_optimum,
        objective_spread=fit.objective_spread(), bound_hits=fit.bound_hits,
        grad_norm=fit.grad_norm, polish_message=fit.polish_message, flops=fm, n_opt=n_law,
        d_opt=d_law, c_range=c_range, n_range=(float(points.N.min()), float(points.N.max())),
        loss_exponent=gamma, min_loss=float(points.L.min()),
    )  # fmt: skip
    return dataclasses.replace(out, residual_structure=residual_structure(out, points))


def law_grid(c_range: tuple[float, float]) -> np.ndarray:
    """Compute values N*(C), D*(C) and L*(C) are summarised over as power laws: the fitted range,
    widened to at least a decade around its centre (a single budget still gives local exponents)."""
    lo, hi = c_range
    mid = np.sqrt(lo * hi)
    return np.geomspace(min(lo, mid / np.sqrt(10)), max(hi, mid * np.sqrt(10)), 16)


def residuals(a3: ChinchillaFit, points: Points) -> np.ndarray:
    """log L − log L̂ of each point."""
    return np.log(points.L) - np.log(a3.predict(points.N, points.D))


STRUCTURE_P = 0.01
"""Residuals are called structured when a quadratic surface in (log N, log D) explains them at this
significance (F-test) ..."""
STRUCTURE_RMS = 1e-3
"""... and its part of the residuals is larger than this in log loss (0.1%, Chinchilla's Huber δ):
with thousands of runs a negligible misfit is significant, and is not worth a warning."""


def residual_structure(a3: ChinchillaFit, points: Points) -> dict:
    """How much of approach 3's log residuals a smooth surface explains: the residuals regressed on a
    quadratic in (log N, log D) (5 regressors and an intercept). A law that fits leaves noise, which
    no surface explains (R² ≈ 5/(n − 1)); a misspecified one (under-trained checkpoints, a form that
    does not hold) leaves a smooth pattern. Returns R², the F-test p-value, the RMS of the residuals
    and of their explained part, per-budget mean residuals, and ``structured`` (both thresholds
    above exceeded). Hand-written: it is a dozen lines of least squares (scipy.stats gives the F
    distribution)."""
    r = residuals(a3, points)
    n = len(r)
    x = np.log(points.N)
    y = np.log(points.D)
    x, y = (x - x.mean()) / (x.std() or 1.0), (y - y.mean()) / (y.std() or 1.0)
    V = np.c_[np.ones(n), x, y, x * x, x * y, y * y]
    coef, *_ = np.linalg.lstsq(V, r, rcond=None)
    fitted = V @ coef
    ss_tot = float(((r - r.mean()) ** 2).sum())
    ss_exp = float(((fitted - r.mean()) ** 2).sum())
    r2 = ss_exp / ss_tot if ss_tot > 0 else 0.0
    p = 1.0
    if n > 6 and r2 < 1:
        p = float(scipy.stats.f.sf((r2 / 5) / ((1 - r2) / (n - 6)), 5, n - 6))
    elif r2 >= 1 and ss_tot > 0:
        p = 0.0
    explained = float(np.sqrt(ss_exp / n))
    by_budget = [float(r[points.group == g].mean()) for g in range(len(points.budgets))]
    return {"r2": r2, "p_value": p, "rms": float(np.sqrt(np.mean(r * r))),
            "explained_rms": explained, "budget_mean": by_budget,
            "structured": bool(p < STRUCTURE_P and explained > STRUCTURE_RMS)}  # fmt: skip


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
