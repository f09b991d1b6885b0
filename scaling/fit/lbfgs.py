"""A batched L-BFGS with box constraints: many small independent problems minimised at once.

    >>> from scaling.fit.lbfgs import lbfgs_batched, polish_one
    >>> res = lbfgs_batched(fun, x0, lo, hi)       # fun(x, rows) → f (len(rows),), g (len(rows), P)
    >>> res.x, res.f, res.iterations, res.converged
    >>> polish_one(fun, res.x[res.f.argmin()], lo, hi)   # scipy L-BFGS-B, tight tolerances

Chinchilla's 4500-start grid is 4500 five-parameter problems on the same data; run one at a time through
scipy every start pays Python and call overhead per iteration (bench/fit_speed.py). Here every row keeps
its own L-BFGS memory, step and stopping state, and each iteration is a handful of numpy operations on
(rows × parameters) arrays, so the work is dominated by evaluating the objective for all rows at once.
Also here: :func:`single_threaded_blas`, because OpenBLAS threads only spin on work this small.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
from collections.abc import Callable, Iterator

import numpy as np
import scipy.optimize

# --------------------------------------------------------------------------------------------------
# BLAS threads


@functools.lru_cache(maxsize=1)
def _blas_thread_controls() -> tuple:
    """(get, set) thread-count functions of every OpenBLAS loaded in this process (Linux)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln})
        for path in paths:
            lib = ctypes.CDLL(path)
            for suffix in ("64_", ""):
                get = getattr(lib, f"scipy_openblas_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"scipy_openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    out.append((get, set_))
                    break
    except OSError:
        return ()
    return tuple(out)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with the loaded OpenBLAS libraries (numpy's and scipy's) on one thread.

    The fits are many tiny vector operations; OpenBLAS threads only spin on them, and on a busy
    machine they made scipy's L-BFGS-B ~30× slower per iteration (measured: 7 ms vs 0.2 ms). What
    threadpoolctl does, without the dependency; a no-op where the libraries cannot be found.
    """
    controls = _blas_thread_controls()
    before = [int(get()) for get, _ in controls]
    for _, set_ in controls:
        set_(ctypes.c_int(1))
    try:
        yield
    finally:
        for (_, set_), n in zip(controls, before, strict=True):
            set_(ctypes.c_int(n))


def blas_single_threaded(fn):
    """Decorator: ``fn`` runs inside :func:`single_threaded_blas`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------------
# Batched L-BFGS with box constraints


@dataclasses.dataclass(frozen=True)
class BatchResult:
    x: np.ndarray
    """(S, P) end points."""
    f: np.ndarray
    """(S,) final objectives."""
    iterations: np.ndarray
    """(S,) iterations taken."""
    converged: np.ndarray
    """(S,) projected gradient below ``gtol`` (else: stopped by ``maxiter`` or at float precision)."""
    evaluations: int
    """Row-evaluations of the objective, summed over starts."""


def projected_gradient(x, g, lo, hi):
    """The gradient with components that point out of the box [lo, hi] at a bound set to zero
    (zero everywhere at a box-constrained stationary point)."""
    pg = g.copy()
    pg[(x <= lo) & (g > 0)] = 0.0
    pg[(x >= hi) & (g < 0)] = 0.0
    return pg


def lbfgs_batched(
    fun: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    memory: int = 6,
    maxiter: int = 1000,
    gtol: float = 1e-6,
    ftol: float = 1e-12,
    window: int = 50,
    wtol: float = 1e-6,
) -> BatchResult:
    """Minimise many independent problems at once: ``fun(x, rows)`` gives f (len(rows),) and
    g (len(rows), P) of problems ``rows`` (indices into ``x0``) at ``x`` (len(rows), P).

    Each row has its own L-BFGS memory (a circular buffer), step and stopping state; rows that stop
    are dropped from the working arrays, so the cost follows the rows still running. Bounds by
    projection: coordinates at a bound whose step points outward are frozen for that step, trial points
    are clipped into the box, and the Armijo test uses the projected step. A row stops when its
    projected gradient's max-norm is below ``gtol``; when a step decreases f by at most ``ftol``·|f|
    twice in a row; when f fell by at most ``wtol``·|f| over the last ``window`` iterations (a crawl
    along a flat, degenerate valley — e.g. a term whose exponent went to 0 merging with E); or when
    the line search fails (float precision). Polishing the best rows is the caller's business.
    """
    x = np.clip(np.array(x0, dtype=float), lo, hi)
    s, p = x.shape
    ids = np.arange(s)
    f, g = fun(x, ids)
    evals = s
    out_x, out_f = x.copy(), f.copy()
    out_it = np.zeros(s, dtype=int)
    out_conv = np.zeros(s, dtype=bool)
    # Slot-major circular buffers advanced in lockstep: a row that skips an update (curvature test
    # failed) writes a null pair (rho = 0), which the two-loop recursion passes through unchanged.
    S = np.zeros((memory, s, p))
    Y = np.zeros((memory, s, p))
    rho = np.zeros((memory, s))
    gamma = np.ones(s)  # initial Hessian scale s·y / y·y of each row's newest valid pair
    head = 0
    slow = np.zeros(s, dtype=int)
    hist = np.repeat(f[:, None], window, axis=1)

    def finish(done, it, converged):
        out_x[ids[done]], out_f[ids[done]] = x[done], f[done]
        out_it[ids[done]] = it
        out_conv[ids[done]] = converged

    for it in range(maxiter):
        done = np.abs(projected_gradient(x, g, lo, hi)).max(axis=1) <= gtol
        if done.any():
            finish(done, it, True)
            keep = ~done
            ids, x, f, g, slow, hist = ids[keep], x[keep], f[keep], g[keep], slow[keep], hist[keep]
            S, Y, rho, gamma = S[:, keep], Y[:, keep], rho[:, keep], gamma[keep]
            if ids.size == 0:
                break
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))
        d = _two_loop(g * free, S, Y, rho, gamma, head) * free
        bad = np.einsum("sp,sp->s", g, d) >= 0
        if bad.any():  # not a descent direction: forget the memory, take steepest descent
            rho[:, bad] = 0.0
            gamma[bad] = 1.0
            d[bad] = -g[bad] * free[bad]
        step = np.ones(ids.size)
        first = ~rho.any(axis=0)
        step[first] = np.minimum(1.0, 1.0 / np.maximum(np.abs(d[first]).max(axis=1), 1e-300))
        xn, fn, gn = x.copy(), f.copy(), g.copy()
        accepted = np.zeros(ids.size, dtype=bool)
        pending = np.arange(ids.size)
        for _ls in range(60):
            trial = np.clip(x[pending] + step[pending, None] * d[pending], lo, hi)
            ft, gt = fun(trial, ids[pending])
            evals += pending.size
            dec = np.einsum("sp,sp->s", g[pending], trial - x[pending])
            ok = np.isfinite(ft) & (ft <= f[pending] + 1e-4 * dec)
            good = pending[ok]
            xn[good], fn[good], gn[good] = trial[ok], ft[ok], gt[ok]
            accepted[good] = True
            # Backtrack to the minimum of the quadratic through f(0), f'(0) and f(step), kept
            # within [0.1, 0.5]·step (a plain halving where f was not finite).
            t, dec, ft, f0 = step[pending][~ok], dec[~ok], ft[~ok], f[pending][~ok]
            pending = pending[~ok]
            if pending.size == 0:
                break
            with np.errstate(divide="ignore", invalid="ignore"):
                q = -dec * t / (2 * (ft - f0 - dec))
            step[pending] = np.where(np.isfinite(q), np.clip(q, 0.1 * t, 0.5 * t), 0.5 * t)
        sv, yv = xn - x, gn - g
        sy = np.einsum("sp,sp->s", sv, yv)
        yy = np.einsum("sp,sp->s", yv, yv)
        upd = accepted & (sy > 1e-12 * np.maximum(yy * np.abs(sv).max(axis=1), 1e-300))
        S[head] = np.where(upd[:, None], sv, 0.0)
        Y[head] = np.where(upd[:, None], yv, 0.0)
        rho[head] = np.where(upd, 1.0 / np.where(upd, sy, 1.0), 0.0)
        gamma = np.where(upd, sy / np.where(upd, yy, 1.0), gamma)
        head = (head + 1) % memory
        small = accepted & ((f - fn) <= ftol * np.maximum(np.abs(f), 1e-300))
        slow = np.where(small, slow + 1, 0)
        col = it % window
        crawl = (it >= window) & ((hist[:, col] - fn) <= wtol * np.maximum(np.abs(fn), 1e-300))
        hist[:, col] = fn
        x, f, g = xn, fn, gn
        done = ~accepted | (slow >= 2) | crawl
        if done.any():
            finish(done, it + 1, False)
            keep = ~done
            ids, x, f, g, slow, hist = ids[keep], x[keep], f[keep], g[keep], slow[keep], hist[keep]
            S, Y, rho, gamma = S[:, keep], Y[:, keep], rho[:, keep], gamma[keep]
            if ids.size == 0:
                break
    else:
        finish(np.ones(ids.size, dtype=bool), maxiter, False)
    return BatchResult(out_x, out_f, out_it, out_conv, evals)


def _two_loop(g, S, Y, rho, gamma, head):
    """−H·g for each row from slot-major buffers S, Y (m, rows, P), newest pair at slot head − 1."""
    m = S.shape[0]
    q = g.copy()
    alpha = np.zeros((m, g.shape[0]))
    order = [(head - 1 - j) % m for j in range(m)]  # newest first
    for j, slot in enumerate(order):
        a = rho[slot] * np.einsum("sp,sp->s", S[slot], q)
        alpha[j] = a
        q -= a[:, None] * Y[slot]
    r = q * gamma[:, None]
    for j in range(m - 1, -1, -1):
        slot = order[j]
        b = rho[slot] * np.einsum("sp,sp->s", Y[slot], r)
        r += (alpha[j] - b)[:, None] * S[slot]
    return -r


def polish_one(fun, x, lo, hi, *, gtol: float = 1e-9, maxiter: int = 20000):
    """One start through scipy's L-BFGS-B with analytic gradients and tight tolerances."""

    def f1(th):
        f, g = fun(th[None], None)
        return float(f[0]), g[0]

    return scipy.optimize.minimize(
        f1,
        np.clip(x, lo, hi),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(lo, hi, strict=True)),
        options=dict(ftol=0.0, gtol=gtol, maxiter=maxiter, maxcor=10),
    )
