"""The log-space LSE law L̂ = E + Σ A_k·x_k^−α_k: its Huber objective and a fast multi-start fit.

    >>> import numpy as np
    >>> from scaling.fit.laws import fit_lse, chinchilla_grid
    >>> X = np.log(np.c_[N, D])                     # one column per power-law variable
    >>> fit = fit_lse(X, np.log(L), starts=chinchilla_grid())
    >>> fit.E, fit.coef, fit.exponents               # L = E + Σ_k A_k · X_k^(-α_k)

Pure numpy/scipy (no torch). :mod:`scaling.fit.approach3` builds the user-facing analyses on these.

The model (Hoffmann et al. 2022, App. D.2; Besiroglu et al. 2024) is, for K power-law terms,

    log L̂ = LSE(a_1 − α_1·x_1, …, a_K − α_K·x_K, e)        x_k = log of variable k (N, D or C)

i.e. L̂ = E + Σ A_k·exp(−α_k·x_k) with a = log A, e = log E, so every term stays positive whatever
the parameters. The objective is the SUM over points of Huber_δ(log L̂ − log L), δ = 1e-3 (Chinchilla).

Why the optimiser is set up the way it is (docs/fitting.md, "Traps"):

* A MEAN-reduced Huber with δ = 1e-3 has gradients ~1e-6 and scipy's default L-BFGS-B tolerances stop
  far from the optimum (~14% worse objective) when started near published values. We minimise the
  SUM scaled by 1/δ² (same minimiser: inside the quadratic zone each term is ½(r/δ)², O(1)), with
  ftol = 0 and a tight gradient tolerance. Never Nelder–Mead.
* Only part of Chinchilla's 4500 grid starts reach the optimum on real data (~7% in one study,
  ~30% with these bounds), so all of them
  are run. They run *together*: :func:`scaling.fit.lbfgs.lbfgs_batched` advances every start at once on
  (starts × points) arrays (each start keeps its own L-BFGS memory and line search), then the best
  few distinct end points are polished one by one with scipy's L-BFGS-B. The spread of final objectives over starts and
  any parameter on a bound are reported.
* Conditioning: each x_k is centred on x0_k (the mean over the data) before fitting, a_k then being
  the log of term k at the centre. That is an exact reparametrisation (a_k,raw = a_k + α_k·x0_k) and
  leaves E and the exponents unchanged; starts given in raw units are mapped through it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

from scaling.fit.lbfgs import (
    blas_single_threaded,
    lbfgs_batched,
    polish_one,
    projected_gradient,
)

HUBER_DELTA = 1e-3
"""Chinchilla's Huber δ on log-loss residuals."""

# Bounds in centred coordinates: a_k = log of term k at the centre of the data, e = log E.
# Wide enough never to bind on a sensible fit; a fit sitting on one is reported.
BOUND_A = (-25.0, 25.0)
BOUND_ALPHA = (0.0, 5.0)
BOUND_E = (-25.0, 25.0)

CHINCHILLA_ALPHA = (0.0, 0.5, 1.0, 1.5, 2.0)
CHINCHILLA_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
CHINCHILLA_A = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


# --------------------------------------------------------------------------------------------------
# Parameter layout: θ = [a_1 … a_K, α_1 … α_K, e]


def names(k: int) -> list[str]:
    """Parameter names in θ order (Chinchilla's for K = 2: a, b, alpha, beta, e)."""
    if k == 2:
        return ["a", "b", "alpha", "beta", "e"]
    return [f"a{i + 1}" for i in range(k)] + [f"alpha{i + 1}" for i in range(k)] + ["e"]


def bounds(k: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.array([BOUND_A[0]] * k + [BOUND_ALPHA[0]] * k + [BOUND_E[0]])
    hi = np.array([BOUND_A[1]] * k + [BOUND_ALPHA[1]] * k + [BOUND_E[1]])
    return lo, hi


def to_centred(theta_raw: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Raw θ (a_k = log A_k in the data's units) → centred θ (a_k = log of term k at x = x0)."""
    k = len(x0)
    out = np.array(theta_raw, dtype=float, copy=True)
    out[..., :k] -= out[..., k : 2 * k] * x0
    return out


def to_raw(theta_c: np.ndarray, x0: np.ndarray) -> np.ndarray:
    k = len(x0)
    out = np.array(theta_c, dtype=float, copy=True)
    out[..., :k] += out[..., k : 2 * k] * x0
    return out


def chinchilla_grid(
    alpha: Sequence[float] = CHINCHILLA_ALPHA,
    e: Sequence[float] = CHINCHILLA_E,
    a: Sequence[float] = CHINCHILLA_A,
    k: int = 2,
) -> np.ndarray:
    """Chinchilla's start grid in raw θ order: α, β ∈ {0, .5, …, 2}, e ∈ {−1, …, 1}, a, b ∈ {0, 5,
    …, 25}: 5·5·5·6·6 = 4500 starts for K = 2 (Hoffmann et al. 2022, App. D.2)."""
    rows = [
        [*av, *al, ev]
        for av in itertools.product(a, repeat=k)
        for al in itertools.product(alpha, repeat=k)
        for ev in e
    ]
    return np.asarray(rows, dtype=float)


# --------------------------------------------------------------------------------------------------
# Objective


def predict_log(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """log L̂ for θ of shape (..., 2K+1) and X of shape (n, K) → (..., n)."""
    k = X.shape[1]
    theta = np.asarray(theta, dtype=float)
    t = theta[..., None, :k] - theta[..., None, k : 2 * k] * X  # (..., n, K)
    e = np.broadcast_to(theta[..., None, 2 * k : 2 * k + 1], t.shape[:-1] + (1,))
    return np.logaddexp.reduce(np.concatenate([t, e], axis=-1), axis=-1)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def objective(
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ_i w_i·Huber_δ(log L̂_i − y_i) / δ² and its analytic gradient, for many θ at once.

    ``theta`` (S, 2K+1), ``X`` (n, K) log-variables, ``y`` (n,) or (S, n) log-losses, ``weights``
    None, (n,) or (S, n) (bootstrap resamples as multiplicities). Returns f (S,) and g (S, 2K+1).

    With T_ij the LSE terms and W_ij = softmax_j(T_ij): ∂ log L̂_i/∂a_k = W_ik,
    ∂/∂α_k = −W_ik·x_ik, ∂/∂e = W_iK; Huber' = clip(r, −δ, δ).
    """
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    s, n = theta.shape[0], X.shape[0]
    f = np.empty(s)
    g = np.empty((s, theta.shape[1]))
    X = np.asarray(X, dtype=float)
    xs = [np.ascontiguousarray(X[:, i]) for i in range(X.shape[1])]
    # Blocks of rows small enough to stay in cache: ~4× faster than whole (S, n) temporaries.
    step = max(1, CHUNK_ELEMENTS // max(n, 1))
    for i in range(0, s, step):
        w = weights if weights is None or np.ndim(weights) == 1 else weights[i : i + step]
        yi = y if np.ndim(y) == 1 else y[i : i + step]
        f[i : i + step], g[i : i + step] = _objective_block(theta[i : i + step], xs, yi, w, delta)
    return f, g


CHUNK_ELEMENTS = 32768


class Cells:
    """Points that share their x (seeds, and every repeat of one configuration) grouped into cells,
    with Σ_i w_i·Huber_δ(p − y_i) over a cell's losses evaluated exactly at any prediction p from
    prefix sums over its sorted losses: the points with |p − y| ≤ δ contribute ½(W·p² − 2p·Σwy + Σwy²),
    those below and above δ·(±(p·W − Σwy) − δW/2), each range found by a binary search. An objective
    then costs O(cells · log n) per θ instead of O(n): at 10,000 runs of 30 configurations, a
    hundredfold less. The sum is the same, only reordered (no approximation). Hand-written: no
    library evaluates a robust loss over grouped data.

    ``weights``: None, (n,) or (R, n) multiplicities (bootstrap resamples); ``rows`` of a call pick
    each prediction row's resample."""

    def __init__(self, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None, delta: float):
        self.X, inverse = np.unique(np.asarray(X, dtype=float), axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.lexsort((y, inverse))
        ys, cell = np.asarray(y, dtype=float)[order], inverse[order]
        m = len(self.X)
        self.ymin = float(ys.min())
        self.span = float(ys.max() - self.ymin) + 4 * delta + 1.0  # cells' keys never interleave
        self.keys = cell * self.span + (ys - self.ymin)
        self.base = np.arange(m) * self.span - self.ymin
        self.start = np.searchsorted(cell, np.arange(m), "left")[None, :]
        self.end = np.searchsorted(cell, np.arange(m), "right")[None, :]
        W = np.ones((1, len(ys))) if weights is None else np.atleast_2d(weights)[:, order]
        zero = np.zeros((W.shape[0], 1))
        # Sums of y about each cell's own mean: p² − 2p·y + y² cancels far less than about zero.
        self.ref = np.bincount(cell, ys, minlength=m) / np.bincount(cell, minlength=m)
        yc = ys - self.ref[cell]
        P = np.stack([np.hstack([zero, np.cumsum(W * yc**j, axis=1)]) for j in (0, 1, 2)], -1)
        self.n1 = P.shape[1]
        self.flat = P.reshape(-1, 3)  # (resample, index) → Σw, Σwy, Σwy² up to that index
        self.at_start, self.at_end = P[:, self.start[0]], P[:, self.end[0]]  # (R, cells, 3)
        self.delta = delta

    def __call__(self, p: np.ndarray, rows: np.ndarray | None = None):
        """Σ w·Huber(p − y) and Σ w·clip(p − y, −δ, δ) per cell for predictions ``p`` (S, cells)."""
        d = self.delta
        q = p + self.base
        lo = np.searchsorted(self.keys, (q - d).ravel(), "left").reshape(p.shape)
        hi = np.searchsorted(self.keys, (q + d).ravel(), "right").reshape(p.shape)
        lo = np.clip(lo, self.start, self.end)
        hi = np.clip(hi, lo, self.end)
        one = self.at_start.shape[0] == 1
        r = np.zeros((len(p), 1), dtype=int) if one or rows is None else np.asarray(rows)[:, None]
        at_lo, at_hi = self.flat[r * self.n1 + lo], self.flat[r * self.n1 + hi]  # (S, cells, 3)
        at_s = self.at_start[:1] if one else self.at_start[r[:, 0]]
        at_e = self.at_end[:1] if one else self.at_end[r[:, 0]]
        p = p - self.ref  # about each cell's mean, as the sums are
        (b0, b1, _), (i0, i1, i2), (a0, a1, _) = (
            np.moveaxis(v, -1, 0) for v in (at_lo - at_s, at_hi - at_lo, at_e - at_hi)
        )  # below (p − y > δ), inside (|p − y| ≤ δ), above (p − y < −δ)
        loss = (0.5 * (i0 * p * p - 2 * p * i1 + i2) + d * (p * b0 - b1 - 0.5 * d * b0)
                + d * (a1 - p * a0 - 0.5 * d * a0))  # fmt: skip
        psi = i0 * p - i1 + d * (b0 - a0)
        return loss, psi

    @staticmethod
    def worth(X: np.ndarray) -> bool:
        """Whether grouping pays: at most half as many distinct x as points."""
        return len(np.unique(X, axis=0)) * 2 <= len(X)


def cell_objective(theta: np.ndarray, cells: Cells, rows=None,
                   delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`objective` on grouped points (``cells``; ``rows``: each θ row's resample)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=float))
    s, m = theta.shape[0], len(cells.X)
    rows = np.zeros(s, dtype=int) if rows is None else np.asarray(rows)
    k = cells.X.shape[1]
    xs = [np.ascontiguousarray(cells.X[:, i]) for i in range(k)]
    f = np.empty(s)
    g = np.empty((s, theta.shape[1]))
    step = max(1, CHUNK_ELEMENTS // max(m, 1))
    for i in range(0, s, step):
        th = theta[i : i + step]
        terms = [np.exp(th[:, j, None] - th[:, k + j, None] * xs[j]) for j in range(k)]
        e = np.exp(th[:, 2 * k])
        z = terms[0] + e[:, None]
        for t in terms[1:]:
            z = z + t
        loss, psi = cells(np.log(z), rows[i : i + step])
        scale = 1.0 / (delta * delta)
        f[i : i + step] = loss.sum(axis=-1) * scale
        psi = psi * scale / z
        for j, t in enumerate(terms):
            t = t * psi
            g[i : i + step, j] = t.sum(axis=-1)
            g[i : i + step, k + j] = -np.einsum("sn,n->s", t, xs[j])
        g[i : i + step, 2 * k] = e * psi.sum(axis=-1)
    return f, g


def _objective_block(theta, xs, y, weights, delta):
    s, k = theta.shape[0], len(xs)
    # One (S, n) array per term (reductions over a short last axis are slow in numpy). No max-shift:
    # inside the bounds and with centred x, |a_k − α_k·x_k| stays far below exp's overflow at 709.
    terms = [np.exp(theta[:, i, None] - theta[:, k + i, None] * xs[i]) for i in range(k)]
    e = np.exp(theta[:, 2 * k])
    z = terms[0] + e[:, None]
    for t in terms[1:]:
        z += t
    r = np.log(z)
    r -= y
    psi = np.clip(r, -delta, delta)
    # Huber: ½r² inside |r| ≤ δ, δ(|r| − δ/2) outside; both equal ψ·(r − ψ/2).
    r -= 0.5 * psi
    r *= psi
    if weights is not None:
        r *= weights
        psi *= weights
    scale = 1.0 / (delta * delta)
    f = r.sum(axis=-1) * scale
    psi *= scale
    psi /= z  # Huber'(r)/L̂: ∂ log L̂/∂a_k = term_k/L̂, ∂/∂α_k = −x_k·term_k/L̂, ∂/∂e = E/L̂
    g = np.empty((s, 2 * k + 1))
    for i, t in enumerate(terms):
        t *= psi
        g[:, i] = t.sum(axis=-1)
        g[:, k + i] = -np.einsum("sn,n->s", t, xs[i])  # not BLAS: its threads thrash on small work
    g[:, 2 * k] = e * psi.sum(axis=-1)
    return f, g


# --------------------------------------------------------------------------------------------------
# Multi-start fit of the LSE law


@dataclasses.dataclass(frozen=True)
class LSEFit:
    """Best fit of log L̂ = LSE(a_k − α_k·x_k, e) over a grid of starts, in the data's units."""

    theta: tuple[float, ...]
    """Raw θ = (a_1 … a_K, α_1 … α_K, e), a_k = log A_k with x_k in the data's units."""
    objective: float
    """SUM of Huber_δ(log L̂ − log L) at the optimum (unscaled)."""
    delta: float
    n_points: int
    n_starts: int
    start_objectives: np.ndarray
    """Final objective (unscaled) of every start after the batched stage, in start order."""
    converged: int
    """Starts whose projected gradient fell below the batched stage's tolerance."""
    at_optimum: float
    """Fraction of starts ending within ``OPTIMUM_RTOL`` of the best objective (or, on exact data,
    with residuals within 1e-6·δ)."""
    bound_hits: tuple[str, ...]
    """Parameters on a bound of the (centred) box at the optimum: their value is not a real fit."""
    grad_norm: float
    """Max-norm of the projected gradient of the scaled objective at the optimum."""
    polish_message: str
    x0: tuple[float, ...]
    """Centre of each log-variable used for the fit (kept to refit from this point cheaply)."""

    @property
    def k(self) -> int:
        return (len(self.theta) - 1) // 2

    @property
    def E(self) -> float:
        return float(np.exp(self.theta[-1]))

    @property
    def coef(self) -> tuple[float, ...]:
        return tuple(float(np.exp(a)) for a in self.theta[: self.k])

    @property
    def exponents(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.theta[self.k : 2 * self.k])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """L̂ at log-variables X (n, K) in the data's units."""
        return np.exp(predict_log(np.asarray(self.theta), np.atleast_2d(X)))

    def objective_spread(self) -> dict[str, float]:
        q = np.quantile(self.start_objectives, [0.0, 0.1, 0.5, 0.9, 1.0])
        return dict(zip(("min", "p10", "median", "p90", "max"), map(float, q), strict=True))


OPTIMUM_RTOL = 1e-4


@blas_single_threaded
def fit_lse(
    X: np.ndarray,
    y: np.ndarray,
    starts: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
    polish: int = 3,
    gtol: float = 1e-9,
    maxiter: int = 1000,
) -> LSEFit:
    """Fit log L̂ = LSE(a_k − α_k·x_k, e) to log-losses ``y`` at log-variables ``X`` (n, K).

    ``starts`` (S, 2K+1) are raw θ (e.g. :func:`chinchilla_grid`). All starts run together
    (:func:`lbfgs_batched`); the ``polish`` best distinct end points are then refined one at a time by
    scipy's L-BFGS-B with analytic gradients, ``ftol = 0`` and ``gtol`` on the 1/δ²-scaled SUM, and
    the best is kept.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    k = X.shape[1]
    x0 = X.mean(axis=0)
    Xc = X - x0
    lo, hi = bounds(k)
    st = np.clip(to_centred(np.atleast_2d(starts), x0), lo, hi)
    # Grid starts that the box clips onto the same point are run once (and counted for each).
    uniq, inverse = np.unique(st, axis=0, return_inverse=True)

    cells = Cells(Xc, y, weights, delta) if Cells.worth(Xc) else None

    def fun(th, rows):
        if cells is not None:  # repeated configurations: the same sum over cells
            return cell_objective(th, cells, None, delta)
        return objective(th, Xc, y, weights, delta)

    batch = lbfgs_batched(fun, uniq, lo, hi, gtol=1e-6, ftol=1e-12, maxiter=maxiter)
    order = np.argsort(batch.f)
    picks: list[np.ndarray] = []
    for i in order:
        if len(picks) >= polish:
            break
        if all(np.abs(batch.x[i] - p).max() > 1e-3 for p in picks):
            picks.append(batch.x[i])
    best = None
    for x in picks:
        r = polish_one(fun, x, lo, hi, gtol=gtol)
        if best is None or r.fun < best.fun:
            best = r
    theta_c = np.clip(best.x, lo, hi)
    f, g = fun(theta_c[None], None)
    pg = projected_gradient(theta_c[None], g, lo, hi)
    span = hi - lo
    hits = tuple(
        n
        for n, v, a, b, w in zip(names(k), theta_c, lo, hi, span, strict=True)
        if v - a <= 1e-6 * w or b - v <= 1e-6 * w
    )
    scale = delta * delta
    fs = batch.f[inverse.ravel()] * scale
    fbest = float(f[0]) * scale
    return LSEFit(
        theta=tuple(float(v) for v in to_raw(theta_c, x0)),
        objective=fbest,
        delta=delta,
        n_points=len(y),
        n_starts=len(st),
        start_objectives=fs,
        converged=int(batch.converged[inverse.ravel()].sum()),
        at_optimum=float(np.mean(fs <= fbest * (1 + OPTIMUM_RTOL) + len(y) * (1e-6 * delta) ** 2)),
        bound_hits=hits,
        grad_norm=float(np.abs(pg).max()),
        polish_message=str(best.message),
        x0=tuple(float(v) for v in x0),
    )


@blas_single_threaded
def refit_lse(
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    starts: np.ndarray,
    *,
    delta: float = HUBER_DELTA,
    x0: np.ndarray | None = None,
    maxiter: int = 1000,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Refit many resamples at once (the bootstrap): ``weights`` (R, n) multiplicities (``y`` may be
    (R, n) too), ``starts`` (S, 2K+1) raw θ tried for every resample, or (R, S, 2K+1) per resample.
    ``box``: bounds on the centred θ (default :func:`bounds`). Returns raw θ (R, 2K+1) of each
    resample's best start and its objective (unscaled), NaN where no start gave a finite one."""
    X = np.asarray(X, dtype=float)
    k = X.shape[1]
    x0 = X.mean(axis=0) if x0 is None else np.asarray(x0)
    Xc = X - x0
    lo, hi = bounds(k) if box is None else box
    r, starts = weights.shape[0], np.asarray(starts, dtype=float)
    s = starts.shape[-2] if starts.ndim == 3 else np.atleast_2d(starts).shape[0]
    raw = starts.reshape(r * s, -1) if starts.ndim == 3 else np.tile(np.atleast_2d(starts), (r, 1))
    x_init = np.clip(to_centred(raw, x0), lo, hi)
    cells = Cells(Xc, y, weights, delta) if np.ndim(y) == 1 and Cells.worth(Xc) else None
    W = None if cells is not None else np.repeat(weights, s, axis=0)
    Y = y if np.ndim(y) == 1 else np.repeat(y, s, axis=0)

    def fun(th, rows):
        if cells is not None:  # rows of θ are (resample, start) pairs, resample-major
            return cell_objective(th, cells, np.asarray(rows) // s, delta)
        yy = Y if np.ndim(Y) == 1 else Y[rows]
        return objective(th, Xc, yy, W[rows], delta)

    batch = lbfgs_batched(fun, x_init, lo, hi, gtol=1e-6, ftol=1e-12, maxiter=maxiter)
    f = np.where(np.isfinite(batch.f), batch.f, np.inf).reshape(r, s)  # argmin skips failed starts
    best = f.argmin(axis=1)
    x = to_raw(batch.x.reshape(r, s, -1)[np.arange(r), best], x0)
    cost = f[np.arange(r), best] * delta * delta
    x[~np.isfinite(cost)] = np.nan
    return x, np.where(np.isfinite(cost), cost, np.nan)
