"""One method's fits with bootstrap intervals, frontier bands, predictions and the held-out check.

    >>> from scaling.fit.bootstrap import fit_method
    >>> mf, excluded = fit_method(points, spec, curves=None, seed=[0, 0])

The bootstrap resamples runs *within each budget* (multinomial counts, so every budget keeps its size)
and repeats every fit on each resample at once: approach 3 as one batched L-BFGS over resamples ×
(the point estimate + ``bootstrap.starts`` grid starts), approach 2 as batched weighted parabolas,
approach 1 as masked envelopes. Intervals are percentiles at ``bootstrap.level``; resamples where a
fit is undefined (e.g. no interior minimum left) are counted and reported, not silently dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from scaling.errors import ScalingError
from scaling.fit import laws
from scaling.fit.approach3 import fit_approach3, grid_starts, law_grid, outliers
from scaling.fit.frontier import (
    ENVELOPE_MIN_RUNS,
    envelope,
    fit_frontier_law,
    fit_power_law,
    frontier_law_batch,
    optimal_allocation,
    power_law_batch,
)
from scaling.fit.holdout import holdout
from scaling.fit.identify import ADVICE, approach3_reasons, power_law_reasons
from scaling.fit.isoflop import OK, IsoFLOPFit, fit_isoflop, isoflop_batch
from scaling.fit.joint import fit_joint
from scaling.fit.points import Exclusion, Points, run_curves
from scaling.fit.results import (
    ChinchillaFit,
    EnvelopeFit,
    MethodFit,
    OptimalParams,
    Prediction,
)
from scaling.fit.spec import FitSpec

GRID_POINTS = 60


def fit_method(
    points: Points, spec: FitSpec, *, curves=None, seed=0, progress=None, starts=None
) -> tuple[MethodFit, list[Exclusion]] | str:
    """All approaches for one method, or the reason nothing could be fitted. ``progress`` is called
    with each stage's name as it starts; ``starts``: approach 3's starts (default: its grid)."""
    progress = progress or (lambda stage: None)
    notes: list[str] = []
    dropped: list[Exclusion] = []
    a3 = None
    if spec.approach3.enabled:
        n_starts = len(grid_starts(spec.approach3) if starts is None else starts)
        progress(f"approach 3 ({len(points)} points, {n_starts} starts)")
        try:
            a3 = fit_approach3(points, spec, starts)
            if spec.outlier_sigma > 0:
                out = outliers(a3, points, spec.outlier_sigma)
                if out:
                    keep = np.ones(len(points), dtype=bool)
                    keep[[i for i, _ in out]] = False
                    dropped = [
                        Exclusion(str(points.run_id[i]), points.method, r, "outlier")
                        for i, r in out
                    ]
                    points = points.subset(keep)
                    a3 = fit_approach3(points, spec, starts)
        except ScalingError as e:
            notes.append(f"approach 3 not fitted: {e}")
            a3 = None
    if a3 is not None:
        notes += approach3_notes(a3)
    progress("approach 2")
    a2 = fit_isoflop(points, spec.approach2) if spec.approach2.enabled else None
    if a2 is not None:
        notes += [
            f"approach 2, budget {p.budget:.3g}: {p.reason}" for p in a2.parabolas if p.reason
        ]
        if a2.reason:
            notes.append(f"approach 2 power laws not fitted: {a2.reason}")
        notes += [f"approach 2: {w}" for w in a2.warnings]
    a1 = None
    runs_curves = None
    if curves is not None and spec.approach1.enabled:
        progress("approach 1")
        runs_curves = run_curves(points, curves, spec)
        if len(runs_curves[0]) >= 2:
            a1 = _fit_envelope(points, runs_curves, spec)
        else:
            notes.append(
                f"approach 1 not fitted: {len(runs_curves[0])} run(s) with ≥ 2 logged "
                f"{spec.approach1.curve} points after skipping the first "
                f"{spec.approach1.skip_fraction:.0%} of steps"
            )
    if a3 is None and (a2 is None or a2.n_opt is None) and (a1 is None or a1.n_opt is None):
        return "nothing could be fitted (" + "; ".join(notes or ["no approach enabled"]) + ")"
    predict = np.array(sorted(set(spec.predict)), dtype=float)
    hi = max([points.budgets.max() * 2, *predict]) if len(predict) else points.budgets.max() * 2
    grid = np.geomspace(points.budgets.min() / 2, hi, GRID_POINTS)
    evalC = np.concatenate([grid, predict])
    if spec.bootstrap.resamples:
        progress(f"bootstrap ({spec.bootstrap.resamples} resamples)")
    boot = _bootstrap(points, spec, a3, a2, a1, runs_curves, evalC, seed)
    level = spec.bootstrap.level
    a3 = a3 and _with_ci(a3, boot.get("approach3", {}), level)
    if a2 is not None and "approach2" in boot:
        a2 = _isoflop_ci(a2, boot["approach2"], level)
    if a1 is not None and "approach1" in boot:
        a1 = _envelope_ci(a1, boot["approach1"], level)
    curves_at = _frontiers(points, a3, a2, a1, evalC, boot, level)
    frontier = {k: {c: v[: len(grid)] for c, v in d.items()} for k, d in curves_at.items()}
    predictions = _predictions(points, a3, curves_at, predict, len(grid))
    ident = _identification(points, a3, a2, a1, curves_at, boot, level)
    opt, opt_reason = _optimal_params(a2, a3, spec, ident, points.size_axis)
    if spec.holdout.budgets:
        progress("held-out check")
    held = holdout(points, spec, a3 and a3.theta) if spec.holdout.budgets else None
    if spec.joint.enabled:
        progress("joint laws")
    joint = fit_joint(points, spec) if spec.joint.enabled else None
    if held is not None and held.bias is not None and abs(held.bias) > BIAS_NOTE:
        notes.append(f"approach 3 predicts the held-out budget's runs with a {held.bias:+.1%} bias "
                     f"(MAPE {held.mape:.1%}): its extrapolations are biased the same way")  # fmt: skip
    mf = MethodFit(
        method=points.method, points=points, approach3=a3, approach2=a2, approach1=a1,
        optimal_params=opt, predictions=tuple(predictions),
        holdout=held,
        frontier=frontier, notes=tuple(notes), identification=ident,
        optimal_params_reason=opt_reason,
        joint=joint,
        bootstrap={k: v["info"] for k, v in boot.items()} | {"level": level},
        samples={k: v["params"] | ({"theta": v["theta"]} if "theta" in v else {})
                 for k, v in boot.items()},
    )  # fmt: skip
    return mf, dropped


BIAS_NOTE = 0.02
"""A held-out approach-3 bias beyond ±2% of the loss is noted: an extrapolation that far off changes
which configuration looks best."""


STATIONARY = 1e-3
"""Projected-gradient max-norm of the 1/δ²-scaled objective below which a polish that did not end on
a convergence test (scipy's ``ABNORMAL``: the line search found no decrease) still sits at a
stationary point: with terms of order one, 1e-3 is far below what moves a parameter."""


def approach3_notes(a3: ChinchillaFit) -> list[str]:
    """What the summary must say about an approach-3 fit beyond its numbers: an optimiser that did not
    end on a convergence test, and residuals with a structure the law does not explain."""
    notes = []
    if not a3.converged_polish:
        ended = f"the optimiser ended with '{a3.polish_message.strip()}'"
        if a3.grad_norm < STATIONARY:
            notes.append(f"approach 3: {ended} at a projected gradient of {a3.grad_norm:.2g} (of the "
                         "1/δ²-scaled objective): its line search stalled at float precision at a "
                         "stationary point")  # fmt: skip
        else:
            notes.append(f"approach 3: {ended} at a projected gradient of {a3.grad_norm:.2g}: the "
                         "optimum may not be reached; read its numbers with care")  # fmt: skip
    rs = a3.residual_structure
    if rs and rs["structured"]:
        worst = max(rs["budget_mean"], key=abs)
        notes.append(f"approach 3: its residuals have structure (a quadratic in log N, log D "
                     f"explains R² = {rs['r2']:.2f} of them, p = {rs['p_value']:.2g}; worst budget "
                     f"mean {worst:+.2%}): the law's form misses part of the data")  # fmt: skip
    return notes


# --------------------------------------------------------------------------------------------------
# Bootstrap


def resample_weights(points: Points, r: int, rng: np.random.Generator) -> np.ndarray:
    """(r, n) multiplicities: each budget's runs drawn with replacement, the budget's size kept."""
    W = np.zeros((r, len(points)))
    for g in range(len(points.budgets)):
        idx = np.flatnonzero(points.group == g)
        W[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=r)
    return W


def interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size < 10:
        return None
    q = (1 - level) / 2
    lo, hi = np.quantile(s, [q, 1 - q])
    return float(lo), float(hi)


def _cis(samples: dict[str, np.ndarray], level: float) -> dict[str, tuple[float, float]]:
    out = {}
    for k, v in samples.items():
        iv = interval(v, level)
        if iv is not None:
            out[k] = iv
    return out


def bands(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column percentile band of (R, m) samples (NaN where fewer than 10 are finite)."""
    q = (1 - level) / 2
    ok = np.isfinite(samples).sum(axis=0) >= 10
    lo = np.full(samples.shape[1], np.nan)
    hi = np.full(samples.shape[1], np.nan)
    if ok.any():
        lo[ok], hi[ok] = np.nanquantile(samples[:, ok], [q, 1 - q], axis=0)
    return lo, hi


def _bootstrap(points, spec, a3, a2, a1, runs_curves, evalC, seed) -> dict[str, dict[str, Any]]:
    """Resampled fits: per approach, parameter samples and N*/D*/L* (R, len(evalC))."""
    r = spec.bootstrap.resamples
    if r == 0:
        return {}
    rng = np.random.default_rng(seed)
    W = resample_weights(points, r, rng)
    out: dict[str, dict[str, Any]] = {}
    if a3 is not None:
        grid = grid_starts(spec.approach3)
        k = min(spec.bootstrap.starts, len(grid))
        starts = np.vstack([a3.theta[None], grid[rng.choice(len(grid), k, replace=False)]])
        X = np.log(np.c_[points.N, points.D])
        th, _ = laws.refit_lse(
            X, np.log(points.L), W, starts, delta=spec.approach3.delta, x0=X.mean(axis=0)
        )
        N, D, L = optimal_allocation(th, a3.flops, evalC)
        cgrid = law_grid(a3.c_range)
        Nc, Dc, Lc = optimal_allocation(th, a3.flops, cgrid)
        gap = Lc - np.exp(th[:, 4:5])
        fin = (np.isfinite(Nc).all(axis=1) & (gap > 0).all(axis=1))[:, None].astype(float)
        nl = power_law_batch(np.log(cgrid), np.log(np.where(fin > 0, Nc, 1.0)), fin)
        dl = power_law_batch(np.log(cgrid), np.log(np.where(fin > 0, Dc, 1.0)), fin)
        gl = power_law_batch(np.log(cgrid), np.log(np.where(fin > 0, gap, 1.0)), fin)
        al, be = th[:, 2], th[:, 3]
        params = {"E": np.exp(th[:, 4]), "A": np.exp(th[:, 0]), "B": np.exp(th[:, 1]),
                  "alpha": al, "beta": be, "loss_exponent": -gl[:, 1],
                  "n_opt.A": np.exp(nl[:, 0]), "n_opt.a": nl[:, 1],
                  "d_opt.A": np.exp(dl[:, 0]), "d_opt.a": dl[:, 1]}  # fmt: skip
        failed = int((~np.isfinite(N).all(axis=1)).sum())
        out["approach3"] = {"params": params, "N": N, "D": D, "L": L, "theta": th,
                            "info": {"resamples": r, "failed": failed}}  # fmt: skip
    if a2 is not None and a2.n_opt is not None:
        b = isoflop_batch(points, spec.approach2, W)
        ok = (b["status"] == OK).astype(float)
        enough = ok.sum(axis=1) >= 2
        ok[~enough] = 0
        logC = np.log(points.budgets)
        nl = power_law_batch(logC, np.log(np.where(ok > 0, b["n_opt"], 1.0)), ok)
        dl = power_law_batch(logC, np.log(np.where(ok > 0, b["d_opt"], 1.0)), ok)
        ll = frontier_law_batch(points.budgets, np.where(ok > 0, b["loss_opt"], np.nan), ok,
                                a2.loss, delta=spec.approach3.delta)  # fmt: skip
        out["approach2"] = _law_samples(nl, dl, ll, evalC, r, int((~enough).sum()))
        out["approach2"]["budgets"] = {
            k: np.where(b["status"] == OK, b[k], np.nan) for k in ("n_opt", "d_opt", "loss_opt")
        }
    if a1 is not None:
        rows, grid, Lm, Dm = runs_curves[0], runs_curves[1], runs_curves[2], runs_curves[3]
        mask = W[:, rows] > 0  # (R, runs)
        best, Le, covered = _resampled_envelopes(mask, Lm, min(ENVELOPE_MIN_RUNS, len(rows)))
        Ne = points.N[rows][best]
        De = Dm[best, np.arange(len(grid))[None, :]]
        ok = np.isfinite(Le) & np.isfinite(De) & covered
        w = ok.astype(float)
        nl = power_law_batch(np.log(grid), np.log(np.where(ok, Ne, 1.0)), w)
        dl = power_law_batch(np.log(grid), np.log(np.where(ok, De, 1.0)), w)
        ll = frontier_law_batch(grid, np.where(ok, Le, np.nan), w, a1.loss,
                                delta=spec.approach3.delta)  # fmt: skip
        out["approach1"] = _law_samples(nl, dl, ll, evalC, r, 0)
    return out


def _resampled_envelopes(mask: np.ndarray, Lm: np.ndarray, need: int, block_bytes: float = 64e6):
    """Per resample (rows of ``mask``, the runs drawn), the run with the lowest loss at each compute
    value, that loss, and whether ``need`` drawn runs reach it: (R, m) each. Done in blocks of
    resamples so the (block, runs, m) temporary stays near ``block_bytes`` (the whole (R, runs, m)
    array is 1.2 GB at 1000 resamples × 5000 runs × 30 values)."""
    r, m = mask.shape[0], Lm.shape[1]
    step = max(1, int(block_bytes // max(Lm.size * 8, 1)))
    best = np.empty((r, m), dtype=int)
    low = np.empty((r, m))
    covered = np.empty((r, m), dtype=bool)
    reach = np.isfinite(Lm)
    for i in range(0, r, step):
        Lr = np.where(mask[i : i + step, :, None], Lm[None], np.inf)
        best[i : i + step] = Lr.argmin(axis=1)
        low[i : i + step] = np.take_along_axis(Lr, best[i : i + step, None, :], axis=1)[:, 0]
        covered[i : i + step] = (mask[i : i + step].astype(np.int32) @ reach) >= need
    return best, low, covered


def _law_samples(nl, dl, ll, evalC, r, failed) -> dict[str, Any]:
    E, A, alpha = ll[:, 0], ll[:, 1], ll[:, 2]
    params = {"n_opt.A": np.exp(nl[:, 0]), "n_opt.a": nl[:, 1], "d_opt.A": np.exp(dl[:, 0]),
              "d_opt.a": dl[:, 1], "loss.E": E, "loss.A": A, "loss.alpha": alpha}  # fmt: skip
    lc = np.log(evalC)[None, :]
    N = np.exp(nl[:, :1] + nl[:, 1:] * lc)
    D = np.exp(dl[:, :1] + dl[:, 1:] * lc)
    L = E[:, None] + A[:, None] * np.exp(-alpha[:, None] * lc)
    bad = ~(np.isfinite(nl).all(axis=1) & np.isfinite(ll).all(axis=1))
    return {"params": params, "N": N, "D": D, "L": L,
            "info": {"resamples": r, "failed": int(max(failed, bad.sum()))}}  # fmt: skip


def _with_ci(a3: ChinchillaFit, boot: dict, level: float) -> ChinchillaFit:
    if not boot:
        return a3
    ci = _cis(boot["params"], level)
    n_opt = a3.n_opt and dataclasses.replace(a3.n_opt, ci=_sub(ci, "n_opt."))
    d_opt = a3.d_opt and dataclasses.replace(a3.d_opt, ci=_sub(ci, "d_opt."))
    return dataclasses.replace(a3, ci={k: v for k, v in ci.items() if "." not in k},
                               n_opt=n_opt, d_opt=d_opt)  # fmt: skip


def _sub(ci: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in ci.items() if k.startswith(prefix)}


def _isoflop_ci(a2: IsoFLOPFit, boot: dict, level: float) -> IsoFLOPFit:
    ci = _cis(boot["params"], level)
    parabolas = []
    for g, p in enumerate(a2.parabolas):
        pci = _cis({k: v[:, g] for k, v in boot["budgets"].items()}, level)
        parabolas.append(dataclasses.replace(p, ci=pci) if p.status == "ok" else p)
    return dataclasses.replace(
        a2,
        parabolas=tuple(parabolas),
        n_opt=dataclasses.replace(a2.n_opt, ci=_sub(ci, "n_opt.")),
        d_opt=dataclasses.replace(a2.d_opt, ci=_sub(ci, "d_opt.")),
        loss=dataclasses.replace(a2.loss, ci=_sub(ci, "loss.")),
    )


def _envelope_ci(a1: EnvelopeFit, boot: dict, level: float) -> EnvelopeFit:
    ci = _cis(boot["params"], level)
    return dataclasses.replace(
        a1,
        n_opt=a1.n_opt and dataclasses.replace(a1.n_opt, ci=_sub(ci, "n_opt.")),
        d_opt=a1.d_opt and dataclasses.replace(a1.d_opt, ci=_sub(ci, "d_opt.")),
        loss=a1.loss and dataclasses.replace(a1.loss, ci=_sub(ci, "loss.")),
    )


# --------------------------------------------------------------------------------------------------
# Frontiers, predictions, optimal_params


def _frontiers(points, a3, a2, a1, C, boot, level) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    laws = {"approach3": a3, "approach2": a2, "approach1": a1}
    for name, fit in laws.items():
        if fit is None:
            continue
        if name == "approach3":
            N, D, L = fit.optimal(C)
        elif fit.n_opt is None:
            continue
        else:
            N, D, L = fit.n_opt(C), fit.d_opt(C), fit.loss(C)
        cols = {"C": C, "N": N, "D": D, "L": L}
        b = boot.get(name)
        for key in ("N", "D", "L"):
            lo, hi = bands(b[key], level) if b else (np.full(len(C), np.nan),) * 2
            cols[f"{key}_lo"], cols[f"{key}_hi"] = lo, hi
        out[name] = cols
    return out


def _predictions(points, a3, curves_at, predict, offset) -> list[Prediction]:
    out = []
    cmax = points.budgets.max() * 1.01
    for j, c in enumerate(predict):
        for name, cols in curves_at.items():
            i = offset + j
            vals = [cols[k][i] for k in ("N", "D", "L")]
            n = vals[0]
            extra = c > cmax or (
                name == "approach3" and np.isfinite(n)
                and not a3.n_range[0] / 1.01 <= n <= a3.n_range[1] * 1.01
            )  # fmt: skip
            ci = {}
            for key, label in (("N", "n_opt"), ("D", "d_opt"), ("L", "loss")):
                lo, hi = cols[f"{key}_lo"][i], cols[f"{key}_hi"][i]
                if np.isfinite(lo) and np.isfinite(hi):
                    ci[label] = (float(lo), float(hi))
            out.append(
                Prediction(
                    float(c),
                    name,
                    *(float(v) if np.isfinite(v) else None for v in vals),
                    bool(extra),
                    ci,
                )  # fmt: skip
            )
    return out


def _identification(points, a3, a2, a1, curves_at, boot, level) -> dict[str, list[str]]:
    """Per fitted approach, the reasons its law is not identified (empty: identified)."""
    mid = np.sqrt(points.budgets.min() * points.budgets.max())
    out = {}
    if a3 is not None:
        out["approach3"] = approach3_reasons(a3, boot.get("approach3", {}).get("info"), level)
    for name, fit in (("approach2", a2), ("approach1", a1)):
        if fit is None or fit.n_opt is None:
            continue
        cols, band = curves_at.get(name), None
        if cols is not None:
            i = int(np.argmin(np.abs(np.log(cols["C"]) - np.log(mid))))
            lo, hi = cols["N_lo"][i], cols["N_hi"][i]
            band = (float(lo), float(hi)) if np.isfinite(lo) and np.isfinite(hi) else None
        out[name] = power_law_reasons(fit, band, boot.get(name, {}).get("info"), level)
    return out


def _optimal_params(a2, a3, spec, ident, size_axis) -> tuple[OptimalParams | None, str | None]:
    """Approach 2's N*(C) (measured isoFLOP minima) when it is identified, else approach 3's; none
    (with the reason) when neither is: a law the data do not pin down never re-centres a sweep."""
    why = []
    for name, fit in (("approach2", a2), ("approach3", a3)):
        if fit is None or fit.n_opt is None:
            continue
        if ident.get(name):
            why.append(f"{name} N*(C) not identified: " + "; ".join(ident[name]))
            continue
        n = size_axis if spec.n == "auto" else spec.n
        return OptimalParams(fit.n_opt.A, fit.n_opt.a, name, n, fit.n_opt.ci), None
    return None, ("; ".join(why) or "no approach gave an N*(C) law") + f" — {ADVICE}"


# --------------------------------------------------------------------------------------------------
# Approach 1


def _fit_envelope(points: Points, runs_curves, spec: FitSpec) -> EnvelopeFit:
    rows, grid, Lm, Dm = runs_curves
    env = envelope(grid, Lm, Dm, points.N[rows], points.run_id[rows], spec.approach1.curve)
    if len(env.C) < 2:
        return EnvelopeFit(env, None, None, None)
    return EnvelopeFit(
        env,
        fit_power_law(env.C, env.N),
        fit_power_law(env.C, env.D),
        fit_frontier_law(env.C, env.L, delta=spec.approach3.delta),
    )
