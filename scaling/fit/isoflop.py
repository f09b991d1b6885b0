"""Approach 2: per-budget robust parabolas of loss vs log N, their minima, and the power laws through them.

    >>> from scaling.fit import isoflop
    >>> fit = isoflop.fit_isoflop(points, spec.approach2)       # points: scaling.fit.points.Points
    >>> [(p.budget, p.n_opt, p.status) for p in fit.parabolas]
    >>> fit.n_opt.A, fit.n_opt.a                                  # N*(C) = A·C^a

Each budget's losses are fitted as L = c0 + c1·u + c2·u² with u = ln N − u0 (u0 the budget's mean
log N), robustly (Huber, iteratively reweighted), on a *window* around the budget's lowest observed
point: the runs within ±``approach2.window`` decades of the N with the lowest mean loss (1 by default;
0: the whole grid), and always that point's nearest neighbour on each side. Its vertex is N*(C) and the
parabola's value there L*(C); D*(C) comes from a quadratic of ln D in u over the same window,
evaluated at the vertex (the exact tokens of each run, since FLOPs per token are method-specific).

Why a window: an isoFLOP curve is a parabola in log N only near its minimum (for L = E + A/N^α +
B/D^β it is a sum of two exponentials in ln N). One parabola across a grid of three decades or more
is pulled by the far ends and puts its vertex away from, even outside, the data; published analyses fit
near the minimum for that reason (Hoffmann et al. 2022 fit around the minimum of each isoFLOP slice).
A window in decades of N keeps the fit local whatever the grid's width, and reduces to the plain
whole-grid fit on a grid narrower than the window (what ``scaling sweep`` plans: ±0.5 decade).

Guard (docs/fitting.md): a minimum counts only if the lowest observed point has at least ``min_side``
distinct N on each side (default 1: one model below and one above it), the parabola is convex, and
its vertex lies inside the points it was fitted to. Otherwise the budget's grid sits on one side of
the optimum, its "minimum" is an extrapolation, and the budget is flagged and left out of the power
laws. Known biases worth telling the user: a wide window biases the N*(C) coefficient (+1% at ±0.5
decade, +4% at ±1, +8.5% at ±1.5), and a sampling centre that drifts across budgets biases the
exponent.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scaling.fit.frontier import (
    CI,
    FrontierLaw,
    PowerLaw,
    ci_json,
    fit_frontier_law,
    fit_power_law,
)
from scaling.fit.points import Points
from scaling.fit.spec import Approach2Spec

OK, EDGE, CONCAVE, TOO_FEW, OUTSIDE = 0, 1, 2, 3, 4
STATUS = {OK: "ok", EDGE: "edge", CONCAVE: "concave", TOO_FEW: "too_few", OUTSIDE: "outside"}


@dataclasses.dataclass(frozen=True)
class Parabola:
    budget: float
    """Compute of the budget (geometric mean of its runs' FLOPs)."""
    n_points: int
    n_distinct: int
    """Distinct N values (seeds at one N count once)."""
    coef: tuple[float, float, float]
    """L = c0 + c1·u + c2·u² with u = ln N − u0."""
    u0: float
    n_opt: float | None
    d_opt: float | None
    loss_opt: float | None
    below: int
    """Distinct N below the budget's lowest observed point (the guard's count)."""
    above: int
    status: str
    """``ok``, ``edge`` (the lowest point has fewer than min_side distinct N on a side),
    ``concave``, ``outside`` (the vertex lies outside the fitted points) or ``too_few``."""
    reason: str | None
    half_width: float
    """Decades of N either side of the optimum the fitted window spans (max of both sides)."""
    lowest: float | None = None
    """N of the lowest observed loss (mean over seeds at one N): the window's centre."""
    window: tuple[float, float] | None = None
    """Range of N the parabola was fitted over (``approach2.window`` decades around ``lowest``)."""
    n_window: int = 0
    """Runs inside the window."""
    ci: CI = dataclasses.field(default_factory=dict)

    def curve(self, N) -> np.ndarray:
        u = np.log(np.asarray(N, dtype=float)) - self.u0
        c0, c1, c2 = self.coef
        return c0 + c1 * u + c2 * u * u

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["ci"] = ci_json(self.ci)
        return d


@dataclasses.dataclass(frozen=True)
class IsoFLOPFit:
    parabolas: tuple[Parabola, ...]
    n_opt: PowerLaw | None
    d_opt: PowerLaw | None
    loss: FrontierLaw | None
    reason: str | None
    """Why the power laws are missing (fewer than two budgets with an interior minimum)."""
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "parabolas": [p.to_json() for p in self.parabolas],
            "n_opt": self.n_opt and self.n_opt.to_json(),
            "d_opt": self.d_opt and self.d_opt.to_json(),
            "loss": self.loss and self.loss.to_json(),
            "reason": self.reason,
            "warnings": list(self.warnings),
        }


def _robust_parabola(u, y, weights, *, delta, iters=50):
    """Huber-robust y ≈ c0 + c1·u + c2·u² per row of (R, n) multiplicities: (R, 3), NaN if singular."""
    V = np.stack([np.ones_like(u), u, u * u], axis=1)
    w0 = weights.astype(float)
    w = w0.copy()
    coef = np.full((w0.shape[0], 3), np.nan)
    for _ in range(iters):
        new = _weighted_lstsq(V, y, w)
        res = np.abs(y - np.nan_to_num(new) @ V.T)
        w = w0 * np.minimum(1.0, delta / np.maximum(res, 1e-300))
        done = np.allclose(new, coef, rtol=1e-12, atol=1e-14, equal_nan=True)
        coef = new
        if done:
            break
    return coef


def _weighted_lstsq(V, y, w):
    A = np.einsum("rn,ni,nj->rij", w, V, V)
    b = np.einsum("rn,ni,rn->ri", w, V, np.broadcast_to(y, w.shape))
    out = np.full((w.shape[0], V.shape[1]), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.linalg.cond(A) < 1e12
    if ok.any():
        out[ok] = np.linalg.solve(A[ok], b[ok][..., None])[..., 0]
    return out


def isoflop_batch(
    points: Points, spec: Approach2Spec, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every budget's windowed parabola for each row of (R, n) multiplicities: arrays (R, budgets)
    of ``n_opt``, ``d_opt``, ``loss_opt``, ``below``, ``above``, ``status``, ``lowest`` (N of the
    lowest mean loss), ``win_lo`` / ``win_hi`` (N range fitted), ``n_window`` (points fitted) and
    (R, budgets, 3) ``coef``."""
    r, nb = weights.shape[0], len(points.budgets)
    out = {k: np.full((r, nb), np.nan)
           for k in ("n_opt", "d_opt", "loss_opt", "lowest", "win_lo", "win_hi")}  # fmt: skip
    for k in ("below", "above", "n_window"):
        out[k] = np.zeros((r, nb), dtype=int)
    out["status"] = np.full((r, nb), TOO_FEW)
    out["coef"] = np.full((r, nb, 3), np.nan)
    out["u0"] = np.zeros(nb)
    half = spec.window * np.log(10) * (1 + 1e-9) if spec.window > 0 else np.inf  # inclusive
    for g in range(nb):
        idx = np.flatnonzero(points.group == g)
        logn = np.log(points.N[idx])
        u0 = logn.mean()
        out["u0"][g] = u0
        u, y, W = logn - u0, points.L[idx], weights[:, idx]
        uu, inv = np.unique(u, return_inverse=True)
        onehot = np.eye(len(uu))[inv]  # (n, distinct N)
        mass = W @ onehot  # (R, distinct N): runs drawn at each N
        present = mass > 0
        n_distinct = present.sum(axis=1)
        enough = n_distinct >= max(3, 2 * spec.min_side + 1)
        if not enough.any():
            continue
        # The lowest observed point: the distinct N with the lowest mean loss over its runs (seeds).
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(present, ((W * y) @ onehot) / mass, np.inf)
        low = mean.argmin(axis=1)  # (R,)
        rank = np.cumsum(present, axis=1) - 1  # rank of each distinct N among those present
        low_rank = rank[np.arange(r), low]
        below = low_rank  # distinct N present below the lowest point
        above = n_distinct - 1 - low_rank
        u_low = uu[low]
        # The window: every N within ±window decades of the lowest point, and always its nearest
        # neighbour on each side (three distinct N at least, whatever the grid's spacing).
        near = np.abs(rank - low_rank[:, None]) <= 1
        in_win = present & ((np.abs(uu[None, :] - u_low[:, None]) <= half) | near)
        Ww = W * in_win[:, inv]
        coef = np.full((r, 3), np.nan)
        coef[enough] = _robust_parabola(u, y, Ww[enough], delta=spec.huber * float(np.median(y)))
        out["coef"][:, g] = coef
        c0, c1, c2 = coef.T
        with np.errstate(divide="ignore", invalid="ignore"):
            vertex = -c1 / (2 * c2)
        lo_u = np.where(in_win, uu[None, :], np.inf).min(axis=1)
        hi_u = np.where(in_win, uu[None, :], -np.inf).max(axis=1)
        convex = enough & (c2 > 0) & np.isfinite(vertex)
        interior = (below >= spec.min_side) & (above >= spec.min_side)
        inside = (vertex > lo_u) & (vertex < hi_u)
        ok = convex & interior & inside
        status = np.where(~enough, TOO_FEW,
                          np.where(~interior, EDGE,
                                   np.where(~convex, CONCAVE, np.where(ok, OK, OUTSIDE))))  # fmt: skip
        out["status"][:, g] = status
        out["below"][:, g], out["above"][:, g] = below, above
        out["lowest"][:, g] = np.exp(u0 + u_low)
        out["win_lo"][:, g], out["win_hi"][:, g] = np.exp(u0 + lo_u), np.exp(u0 + hi_u)
        out["n_window"][:, g] = (Ww > 0).sum(axis=1)
        v = np.where(convex, vertex, np.nan)
        with np.errstate(over="ignore"):  # a nearly flat parabola's vertex: far outside, flagged
            out["n_opt"][:, g] = np.exp(u0 + v)
        out["loss_opt"][:, g] = c0 + c1 * v + c2 * v * v
        # D* at the vertex from ln D against u over the same window (a quadratic, linear with two N).
        deg = 2 if len(uu) >= 3 else 1
        Vd = np.stack([u**p for p in range(deg + 1)], axis=1)
        cd = _weighted_lstsq(Vd, np.log(points.D[idx]), Ww)
        with np.errstate(over="ignore", invalid="ignore"):
            out["d_opt"][:, g] = np.exp(sum(cd[:, p] * v**p for p in range(deg + 1)))
    return out


def fit_isoflop(points: Points, spec: Approach2Spec) -> IsoFLOPFit:
    """Approach 2 on one method's points (see the module docstring)."""
    b = isoflop_batch(points, spec, np.ones((1, len(points))))
    parabolas = []
    for g, budget in enumerate(points.budgets):
        idx = points.group == g
        status = int(b["status"][0, g])
        n_distinct = len(np.unique(points.N[idx]))
        below, above = int(b["below"][0, g]), int(b["above"][0, g])
        n_opt, lowest = b["n_opt"][0, g], b["lowest"][0, g]
        lo, hi = b["win_lo"][0, g], b["win_hi"][0, g]
        need = max(3, 2 * spec.min_side + 1)
        reason = {
            OK: None,
            TOO_FEW: f"{n_distinct} distinct N (< {need}): an interior minimum cannot be confirmed",
            CONCAVE: "the parabola around the lowest point opens downward: no minimum",
            EDGE: f"the lowest loss is at N={lowest:.3g}, with {below} distinct N below it and "
            f"{above} above (want ≥ {spec.min_side} each side): the grid lies on one side of the "
            "optimum",
            OUTSIDE: f"the parabola's vertex N*={n_opt:.3g} lies outside the points it was fitted "
            f"to (N {lo:.3g} to {hi:.3g}): no minimum inside the data",
        }[status]
        half = np.nan
        fin = [np.isfinite(b[k][0, g]) for k in ("n_opt", "d_opt", "loss_opt")]
        if fin[0]:
            half = float(max(np.log10(hi / n_opt), np.log10(n_opt / lo)))
        parabolas.append(
            Parabola(
                budget=float(budget), n_points=int(idx.sum()), n_distinct=n_distinct,
                coef=tuple(float(c) for c in b["coef"][0, g]), u0=float(b["u0"][g]),
                n_opt=float(n_opt) if fin[0] else None,
                d_opt=float(b["d_opt"][0, g]) if fin[1] else None,
                loss_opt=float(b["loss_opt"][0, g]) if fin[2] else None,
                below=below, above=above, status=STATUS[status], reason=reason, half_width=half,
                lowest=float(lowest) if np.isfinite(lowest) else None,
                window=(float(lo), float(hi)) if np.isfinite(lo) and np.isfinite(hi) else None,
                n_window=int(b["n_window"][0, g]),
            )
        )  # fmt: skip
    good = [p for p in parabolas if p.status == "ok"]
    warnings = [
        f"budget {p.budget:.3g}: the parabola is fitted over ±{p.half_width:.2f} decades around N* "
        "(> ±1): wide windows bias the N*(C) coefficient (+4% at ±1 decade, +8.5% at ±1.5); "
        "narrow approach2.window"
        for p in good
        if p.half_width > 1.0
    ]
    if len(good) < 2:
        reason = (
            f"{len(good)} of {len(parabolas)} budget(s) have an interior minimum; the power laws "
            "need ≥ 2"
        )
        return IsoFLOPFit(tuple(parabolas), None, None, None, reason, tuple(warnings))
    C = np.array([p.budget for p in good])
    logs = np.log([p.n_opt for p in good])
    if len(good) >= 3:
        centre = np.log(C)
        drift = np.polyfit(centre, np.array([p.u0 for p in good]) - logs, 1)[0]
        if abs(drift) > 0.1:
            warnings.append(
                f"the grids' centres drift against N*(C) (slope {drift:+.2f} in log-log): "
                "the fitted exponent may be biased; re-centre the sweep on this fit (--from-fit)"
            )
    return IsoFLOPFit(
        tuple(parabolas),
        fit_power_law(C, [p.n_opt for p in good]),
        fit_power_law(C, [p.d_opt for p in good]),
        fit_frontier_law(C, [p.loss_opt for p in good]),
        None,
        tuple(warnings),
    )
