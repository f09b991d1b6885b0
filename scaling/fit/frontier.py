"""Compute frontiers: power laws in C, the optimal allocation of a fitted L(N, D), the envelope of
training curves (approach 1), and comparisons between methods' frontiers.

    >>> from scaling.fit import frontier
    >>> law = frontier.fit_power_law(C, N_opt)                 # N*(C) = A·C^a
    >>> fl = frontier.fit_frontier_law(C, L_opt)               # L*(C) = E + A·C^−α
    >>> fm = frontier.fit_flops_model(N, C / D)                # F(N) = f0 + f1·N FLOPs per token
    >>> N, D, L = frontier.optimal_allocation(theta, fm, C)    # argmin_N L(N, C / F(N))

Pure numpy (no torch). Everything that is refitted per bootstrap resample takes a leading resample axis.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.optimize

from scaling.fit import laws

CI = dict[str, tuple[float, float]]


# --------------------------------------------------------------------------------------------------
# Laws in C


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y(C) = A·C^a, fitted by least squares in log-log."""

    A: float
    a: float
    n_points: int
    ci: CI = dataclasses.field(default_factory=dict)

    def __call__(self, C) -> np.ndarray:
        return self.A * np.asarray(C, dtype=float) ** self.a

    def to_json(self) -> dict:
        return {"A": self.A, "a": self.a, "n_points": self.n_points, "ci": ci_json(self.ci)}


@dataclasses.dataclass(frozen=True)
class FrontierLaw:
    """L(C) = E + A·C^−α (``form = "saturating"``), or A·C^−α (``"power"``, E = 0) when there are
    fewer than :data:`MIN_SATURATING` points to identify E."""

    E: float
    A: float
    alpha: float
    form: str
    n_points: int
    objective: float | None = None
    ci: CI = dataclasses.field(default_factory=dict)
    bound_hits: tuple[str, ...] = ()
    """Parameters (``E``, ``A``, ``alpha``) on the optimiser's bound: E at its floor means the
    points do not bend toward any irreducible loss, and the fit is a power law in disguise."""

    def __call__(self, C) -> np.ndarray:
        return self.E + self.A * np.asarray(C, dtype=float) ** -self.alpha

    def compute_for(self, loss) -> np.ndarray:
        """C reaching ``loss`` (inf where the law never gets that low)."""
        gap = np.asarray(loss, dtype=float) - self.E
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(gap > 0, (self.A / np.maximum(gap, 1e-300)) ** (1 / self.alpha), np.inf)

    def to_json(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "form": self.form,
                "n_points": self.n_points, "objective": self.objective,
                "bound_hits": list(self.bound_hits), "ci": ci_json(self.ci)}  # fmt: skip


MIN_SATURATING = 4


def ci_json(ci: CI) -> dict:
    """Intervals as JSON lists: {name: [lo, hi]}."""
    return {k: [lo, hi] for k, (lo, hi) in ci.items()}


def power_law_batch(logx: np.ndarray, logy: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted least squares log y = log A + a·log x for each row: (R, 2) = (log A, a); NaN for rows
    with fewer than two distinct weighted x."""
    shape = np.broadcast_shapes(np.atleast_2d(weights).shape, np.atleast_2d(logy).shape)
    w = np.broadcast_to(np.atleast_2d(weights), shape).astype(float)
    logy = np.broadcast_to(logy, shape)
    logy = np.where(w > 0, logy, 0.0)
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * logx).sum(axis=1) / sw
        my = (w * logy).sum(axis=1) / sw
        dx = logx - mx[:, None]
        sxx = (w * dx * dx).sum(axis=1)
        a = (w * dx * (logy - my[:, None])).sum(axis=1) / sxx
        ok = sxx > 1e-12 * np.maximum(sw, 1)
    out = np.c_[my - a * mx, a]
    out[~ok] = np.nan
    return out


def fit_power_law(C, y, weights=None) -> PowerLaw:
    C, y = np.asarray(C, dtype=float), np.asarray(y, dtype=float)
    w = np.ones(len(C)) if weights is None else weights
    (la, a), = power_law_batch(np.log(C), np.log(y), w)  # fmt: skip
    return PowerLaw(float(np.exp(la)), float(a), len(C))


def frontier_starts(logC: np.ndarray, L: np.ndarray) -> np.ndarray:
    """A small grid of raw θ = (a, α, e) starts for L = E + A·C^−α, placed relative to the data."""
    c0 = logC.mean()
    lmin, lmean = L.min(), L.mean()
    rows = []
    for frac in (0.3, 0.7, 0.9, 0.97):
        for alpha in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8):
            for share in (0.3, 1.0, 3.0):
                gap = max(lmean - frac * lmin, 1e-3 * lmean)
                rows.append([np.log(gap * share) + alpha * c0, alpha, np.log(frac * lmin)])
    return np.asarray(rows)


def fit_frontier_law(C, L, *, delta: float = laws.HUBER_DELTA) -> FrontierLaw:
    """L(C) = E + A·C^−α by the same log-space Huber fit as approach 3 (one term instead of two)."""
    C, L = np.asarray(C, dtype=float), np.asarray(L, dtype=float)
    if len(C) < MIN_SATURATING:
        law = fit_power_law(C, L)
        return FrontierLaw(0.0, law.A, -law.a, "power", len(C))
    logC = np.log(C)[:, None]
    fit = laws.fit_lse(logC, np.log(L), frontier_starts(logC[:, 0], L), delta=delta, polish=2)
    a, alpha, e = fit.theta
    hits = tuple({"a1": "A", "alpha1": "alpha", "e": "E"}[h] for h in fit.bound_hits)
    return FrontierLaw(float(np.exp(e)), float(np.exp(a)), float(alpha), "saturating", len(C),
                       fit.objective, bound_hits=hits)  # fmt: skip


def frontier_law_batch(
    C: np.ndarray, L: np.ndarray, weights: np.ndarray, start: FrontierLaw, *, delta: float
) -> np.ndarray:
    """Refit ``start``'s form for each row of (R, m) losses ``L`` with (R, m) ``weights``: (R, 3)
    columns (E, A, alpha); NaN rows where too few points carry weight."""
    r = weights.shape[0]
    logC = np.log(C)
    out = np.full((r, 3), np.nan)
    enough = (weights > 0).sum(axis=1) >= (MIN_SATURATING if start.form == "saturating" else 2)
    Ly = np.where(weights > 0, L, 1.0)
    if start.form == "power":
        pl = power_law_batch(logC, np.log(Ly), weights)
        out[:, 0], out[:, 1], out[:, 2] = 0.0, np.exp(pl[:, 0]), -pl[:, 1]
    elif enough.any():
        theta0 = np.array([[np.log(start.A), start.alpha, np.log(start.E)]])
        starts = np.vstack([theta0, frontier_starts(logC, L[np.isfinite(L)])[::24]])
        th, _ = laws.refit_lse(
            logC[:, None], np.log(Ly[enough]), weights[enough], starts, delta=delta
        )
        out[enough] = np.c_[np.exp(th[:, 2]), np.exp(th[:, 0]), th[:, 1]]
    out[~enough] = np.nan
    return out


# --------------------------------------------------------------------------------------------------
# FLOPs per token and the optimal allocation of L(N, D)


@dataclasses.dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs per token as an affine function of N: F(N) = f0 + f1·N.

    Exact for the classic 6·N (f0 = 0), and close for PEFT: QLoRA ≈ 4·N_backbone + 6·N_lora and
    Ladder ≈ 2·N_backbone + 6·N_side (scaling/flops.py), the backbone term being fixed per backbone.
    """

    f0: float
    f1: float
    max_rel_error: float
    """Largest |F(N)/F − 1| over the runs it was fitted to."""

    def __call__(self, N) -> np.ndarray:
        return self.f0 + self.f1 * np.asarray(N, dtype=float)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def fit_flops_model(N: np.ndarray, fpt: np.ndarray) -> FlopsModel:
    """Non-negative least squares in relative error: min Σ ((f0 + f1·N)/F − 1)², f0, f1 ≥ 0."""
    N, fpt = np.asarray(N, dtype=float), np.asarray(fpt, dtype=float)
    scale = np.median(fpt)
    A = np.c_[scale / fpt, N / fpt]
    (c0, f1), _ = scipy.optimize.nnls(A, np.ones(len(N)))
    f0 = c0 * scale
    if f1 <= 0:  # F does not grow with N: keep a tiny slope so D*(C) stays defined
        f1 = 1e-12 * max(f0, 1.0) / max(N.max(), 1.0)
    err = float(np.max(np.abs((f0 + f1 * N) / fpt - 1)))
    return FlopsModel(float(f0), float(f1), err)


def optimal_allocation(
    theta: np.ndarray, fm: FlopsModel, C: np.ndarray, iters: int = 22
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """argmin over N of L(N, D = C/F(N)) for raw θ = (a, b, α, β, e) of shape (R, 5) or (5,).

    With x = log N, dL/dx = βB·D^−β·(f1·N/F) − αA·N^−α: the log of the first term minus the log of
    the second is strictly increasing in x, so the minimum is its unique root (bisection, then Newton).
    For F = k·N this is Chinchilla's closed form N* = G·(C/k)^(β/(α+β)), G = (αA/(βB))^(1/(α+β)).
    Returns N*, D*, L* of shape (R, len(C)) (or (len(C),) for one θ); NaN where α or β is not
    positive (no interior optimum).
    """
    th = np.atleast_2d(np.asarray(theta, dtype=float))
    logC = np.log(np.atleast_1d(np.asarray(C, dtype=float)))[None, :]
    a, b, al, be, e = (th[:, i, None] for i in range(5))
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.log(al) + a
        lb = np.log(be) + b
    logf0 = np.log(fm.f0) if fm.f0 > 0 else -np.inf
    logf1 = np.log(fm.f1)

    def g(x):  # log(βB·D^−β·f1·N/F) − log(αA·N^−α), increasing in x = log N
        logF = np.logaddexp(logf0, logf1 + x)
        return lb + be * (logF - logC) + (logf1 + x - logF) - (la - al * x), np.exp(
            logf1 + x - logF
        )

    # Bisection to ~1e-4 in log N, then Newton (g' = α + 1 − share·(1 − β) ≥ min(α + β, α + 1) > 0).
    lo = np.full(np.broadcast_shapes(la.shape, logC.shape), -60.0)
    hi = np.full_like(lo, 160.0)
    with np.errstate(invalid="ignore"):
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            up = g(mid)[0] > 0
            hi = np.where(up, mid, hi)
            lo = np.where(up, lo, mid)
        x = 0.5 * (lo + hi)
        for _ in range(4):
            gx, share = g(x)
            x = np.clip(x - gx / (al + 1 - share * (1 - be)), lo, hi)
    bad = ~((al > 0) & (be > 0)) | (x <= -59) | (x >= 159)
    N = np.exp(x)
    D = np.exp(logC) / fm(N)
    L = np.exp(e) + np.exp(a - al * x) + np.exp(b - be * np.log(D))
    N, D, L = (np.where(bad, np.nan, v) for v in (N, D, L))
    if np.ndim(theta) == 1:
        return N[0], D[0], L[0]
    return N, D, L


# --------------------------------------------------------------------------------------------------
# Approach 1: envelope of training curves


@dataclasses.dataclass(frozen=True, eq=False)
class Envelope:
    """Lowest logged loss at each compute over all runs, and who reached it."""

    C: np.ndarray
    L: np.ndarray
    N: np.ndarray
    D: np.ndarray
    run_id: np.ndarray
    curve: str
    n_runs: int


def curve_grid(curves: list[tuple[np.ndarray, np.ndarray, np.ndarray]], points: int) -> np.ndarray:
    """Log-spaced compute values spanning the union of the curves' ranges."""
    lo = min(c[0].min() for c in curves)
    hi = max(c[0].max() for c in curves)
    return np.geomspace(lo, hi, points)


def interpolate_curves(
    curves: list[tuple[np.ndarray, np.ndarray, np.ndarray]], grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and tokens of each curve (C, L, D arrays, C ascending) at ``grid``, linear in log-log;
    +inf / NaN outside a curve's own range (a run says nothing about compute it did not reach)."""
    lg = np.log(grid)
    Lm = np.full((len(curves), len(grid)), np.inf)
    Dm = np.full((len(curves), len(grid)), np.nan)
    for i, (C, L, D) in enumerate(curves):
        lc = np.log(C)
        inside = (lg >= lc[0]) & (lg <= lc[-1])
        Lm[i, inside] = np.exp(np.interp(lg[inside], lc, np.log(L)))
        Dm[i, inside] = np.exp(np.interp(lg[inside], lc, np.log(D)))
    return Lm, Dm


ENVELOPE_MIN_RUNS = 3
"""Compute values reached by fewer runs are left out of the envelope: at the ends of the range a
minimum over one or two curves is not an envelope (the smallest run's first points, the largest
budget's last ones)."""


def envelope(
    grid: np.ndarray, Lm: np.ndarray, Dm: np.ndarray, N: np.ndarray, run_id: np.ndarray, curve: str
) -> Envelope:
    best = Lm.argmin(axis=0)
    cols = np.arange(len(grid))
    L = Lm[best, cols]
    ok = np.isfinite(L) & (np.isfinite(Lm).sum(axis=0) >= min(ENVELOPE_MIN_RUNS, len(N)))
    return Envelope(grid[ok], L[ok], N[best][ok], Dm[best, cols][ok], run_id[best][ok], curve,
                    len(N))  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Comparing frontiers


def compute_multiplier(
    grid: np.ndarray, loss_a: np.ndarray, loss_b_at_c: np.ndarray, c: float
) -> np.ndarray:
    """C_a / c where method a's frontier ``loss_a`` (R, m) on ``grid`` (m,) reaches method b's loss
    ``loss_b_at_c`` (R,) at compute c; inf where a never gets that low on the grid, NaN where the
    frontier is undefined. Frontiers are decreasing in C; interpolation is linear in log C."""
    La = np.atleast_2d(loss_a)
    target = np.atleast_1d(loss_b_at_c)
    out = np.full(La.shape[0], np.nan)
    lg = np.log(grid)
    for r in range(La.shape[0]):
        row, t = La[r], target[r]
        if not (np.isfinite(row).all() and np.isfinite(t)):
            continue
        if t < row.min():
            out[r] = np.inf
            continue
        if t >= row[0]:
            out[r] = grid[0] / c if t == row[0] else 0.0
            continue
        below = np.flatnonzero(row <= t)[0]  # first grid point at or below the target
        l0, l1 = row[below - 1], row[below]
        f = (l0 - t) / (l0 - l1) if l0 != l1 else 1.0
        out[r] = np.exp(lg[below - 1] + f * (lg[below] - lg[below - 1])) / c
    return out


def crossovers(grid: np.ndarray, loss_a: np.ndarray, loss_b: np.ndarray) -> list[tuple[float, int]]:
    """Where two frontiers on the same grid cross (sign changes of a − b): (C, s) pairs, s = +1 when
    a is the lower one just above C, −1 when b is."""
    diff = loss_a - loss_b
    out = []
    for i in range(len(grid) - 1):
        d0, d1 = diff[i], diff[i + 1]
        if np.isfinite(d0) and np.isfinite(d1) and d0 * d1 < 0:
            f = d0 / (d0 - d1)
            c = float(np.exp(np.log(grid[i]) + f * np.log(grid[i + 1] / grid[i])))
            out.append((c, 1 if d1 < 0 else -1))
    return out
