"""Calibrated extrapolation: rolling-origin held-out checks of each approach's L*(C), the empirical
coverage of its bootstrap intervals, and intervals widened for a law that does not hold.

    >>> from scaling.fit.calibration import lever_arm, rolling_check
    >>> check = rolling_check(points, spec, seed=0)        # fits on budgets ≤ k, predicts k + 1
    >>> cal = check.calibrations["approach3"]
    >>> cal.coverage, cal.tau, [f.error for f in cal.folds]
    >>> cal.interval(2.31, (2.29, 2.33), lever_arm(1e21, points.budgets))  # widened 95% of L*

**Rolling origin** (Tashman 2000): for every budget k + 1 with an interior isoFLOP minimum and at
least ``min_train`` smaller budgets, the method is refitted (:func:`scaling.fit.bootstrap.fit_method`,
bootstrap included) on the budgets ≤ k and predicts L* at budget k + 1. The prediction is compared
with the same observed optimum the held-out check uses: the held-out budget's windowed isoFLOP
parabola's L* (:func:`scaling.fit.holdout.holdout`). Each comparison is a :class:`Fold`; the share
of folds whose bootstrap interval holds the observed optimum is the interval's empirical coverage.

**Why the bootstrap intervals under-cover.** Resampling runs and refitting one law measures how the
*fit* varies with the runs; it says nothing about how wrong the *law* is. When the form misses part
of the data (a frontier that bends in log C, under-trained points), the extrapolation is off by more
than the fit's own spread, and more so the further it reaches.

**The widening** is a model-discrepancy term (Kennedy & O'Hagan 2001, *Bayesian calibration of
computer models*, JRSS B 63:425): the observed optimum at an extrapolated budget is the law's
prediction plus its bootstrap error plus a discrepancy δ, here with standard deviation τ·d where d is
the lever arm: the distance in decades of C from the centre (geometric mean) of the fitted budgets.
A fit absorbs a smooth term its form lacks where the data are, so the term's leftover is near zero
at their centre and grows, to first order, in proportion to the distance from it, as a regression's
extrapolation error does; measuring from the largest budget instead would score every one-step fold
alike and miss that a fit over more budgets reaches further. In log loss, for fold k with error
e_k = log(L̂*/L*_obs), bootstrap standard deviation s_k and lever arm d_k,

    E[e_k²] = s_k² + τ²·d_k²   ⇒   τ̂² = max(0, Σ (e_k² − s_k²) / Σ d_k²)

(the method of moments; the moment is uncentred, so a consistent bias counts as width: with a
handful of folds a bias correction would be noisier than the bias it removes). The observed optimum's
own sampling noise is part of what τ absorbs. The widened interval at distance d keeps each side of
the bootstrap interval and adds the discrepancy in quadrature, side by side,

    side' = q·√((side / z)² + τ̂²·d²),   z = Φ⁻¹((1 + level)/2),

with q the Student-t quantile at the Welch–Satterthwaite effective degrees of freedom (Satterthwaite
1946): ν_eff = σ⁴ / ((τ̂²d²)²/K) for K folds and σ² = s² + τ̂²d². With τ̂ = 0 it is the bootstrap
interval unchanged (q = z); with τ̂ estimated from two folds it is a t with about two degrees of
freedom, as wide as two comparisons warrant.

**Why not split-conformal.** A split-conformal interval (Vovk et al. 2005; Lei et al. 2018) at
level 1 − a needs ⌈(K + 1)(1 − a)⌉ ≤ K calibration scores: 19 folds for 95%. A sweep has 3–10
budgets, so 1–8 folds; conformal would return an infinite interval (or a smaller level than asked).
The discrepancy model trades that distribution-free guarantee for one assumption (δ Gaussian with a
spread linear in distance) and gives finite, honest intervals from one fold up.

Which approach to trust, given these records, is :mod:`scaling.fit.trust`.

Hand-written: the method of moments and the quantile are a few lines over the folds (scipy.stats
gives the t and normal quantiles); no library calibrates a scaling-law extrapolation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.stats

from scaling.fit.bootstrap import fit_method
from scaling.fit.holdout import holdout_starts
from scaling.fit.isoflop import fit_isoflop
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec, HoldoutSpec, JointSpec

APPROACHES = ("approach3", "approach2")
"""The approaches scored: approach 1's envelope would need the curves cut at each held-out budget."""


@dataclasses.dataclass(frozen=True)
class Fold:
    """One rolling-origin comparison: fit on the budgets up to ``train_max``, predict L* at ``budget``."""

    approach: str
    budget: float
    """Compute of the held-out budget."""
    train_max: float
    """Compute of the largest budget fitted."""
    train_centre: float
    """Geometric mean of the fitted budgets' compute: where the extrapolation's lever arm starts."""
    n_train_budgets: int
    observed: float
    """The held-out budget's observed isoFLOP minimum (its windowed parabola's L*)."""
    predicted: float | None = None
    interval: tuple[float, float] | None = None
    """The bootstrap percentile interval of the predicted L* (None: no bootstrap, or it failed)."""
    reason: str | None = None
    """Why there is no prediction."""
    form: str | None = None
    """The law fitted: ``chinchilla`` (approach 3), approach 2's frontier law's ``saturating`` (E +
    A·C^−α, four budgets or more) or ``power`` (E = 0)."""

    @property
    def distance(self) -> float:
        """Decades of C from the fitted budgets' centre to the held-out one (:func:`lever_arm`)."""
        return math.log10(self.budget / self.train_centre)

    @property
    def error(self) -> float | None:
        """Predicted / observed L* − 1 (positive: the law predicted a higher loss)."""
        return None if self.predicted is None else self.predicted / self.observed - 1

    @property
    def log_error(self) -> float | None:
        return None if self.predicted is None else math.log(self.predicted / self.observed)

    @property
    def covered(self) -> bool | None:
        if self.interval is None:
            return None
        return self.interval[0] <= self.observed <= self.interval[1]

    def spread(self, level: float) -> float | None:
        """Standard deviation of log L̂* the bootstrap interval implies (its width over 2z)."""
        if self.interval is None or self.interval[0] <= 0:
            return None
        return math.log(self.interval[1] / self.interval[0]) / (2 * _z(level))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"distance": self.distance, "error": self.error,
                                           "covered": self.covered}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Calibration:
    """One approach's held-out record and the discrepancy that widens its intervals."""

    approach: str
    level: float
    folds: tuple[Fold, ...]
    """Folds with a prediction (and, for τ, an interval)."""
    tau: float | None
    """Discrepancy standard deviation of log L* per decade of extrapolation (None: no fold)."""
    dof: int
    """Folds behind ``tau``."""
    coverage: float | None
    """Share of folds whose bootstrap interval held the observed optimum."""
    calibrated_coverage: float | None
    """The same for the widened intervals, each fold's τ estimated without it (≥ 2 folds)."""
    rmse: float | None
    """Root-mean-square held-out log error of L*: the approach's held-out record."""
    bias: float | None
    """Mean held-out log error (positive: predictions too high)."""
    reason: str | None = None
    """Why there is no calibration."""

    def interval(
        self, predicted: float, interval: tuple[float, float] | None, distance: float
    ) -> tuple[float, float] | None:
        """The widened interval of a prediction whose bootstrap interval is ``interval``, made
        ``distance`` decades from the centre of the fitted budgets (:func:`lever_arm`)."""
        if interval is None or self.tau is None or not predicted > 0:
            return interval
        return widen(predicted, interval, self.tau, self.dof, abs(distance), self.level)

    def to_json(self) -> dict[str, Any]:
        return {
            "approach": self.approach, "level": self.level, "tau_per_decade": self.tau,
            "folds_used": self.dof, "coverage": self.coverage,
            "calibrated_coverage": self.calibrated_coverage, "rmse": self.rmse, "bias": self.bias,
            "reason": self.reason, "folds": [f.to_json() for f in self.folds],
        }  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RollingCheck:
    """Every fold of one method and the calibration each approach gets from them."""

    method: str
    level: float
    folds: tuple[Fold, ...]
    calibrations: dict[str, Calibration]
    reason: str | None = None
    """Why there are no folds (too few budgets with an interior minimum)."""

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "reason": self.reason,
                "calibrations": {k: v.to_json() for k, v in self.calibrations.items()}}  # fmt: skip


def centre(budgets) -> float:
    """Geometric mean of the fitted budgets' compute."""
    return float(np.exp(np.mean(np.log(np.asarray(budgets, dtype=float)))))


def lever_arm(C: float, budgets) -> float:
    """Decades of C from the centre of the fitted ``budgets`` to ``C``: the distance the discrepancy
    grows with."""
    return abs(math.log10(C / centre(budgets)))


def _z(level: float) -> float:
    return float(scipy.stats.norm.ppf((1 + level) / 2))


def widen(
    predicted: float,
    interval: tuple[float, float],
    tau: float,
    dof: int,
    distance: float,
    level: float,
) -> tuple[float, float]:
    """The bootstrap ``interval`` of ``predicted`` with the discrepancy τ·distance added in quadrature
    to each side (in log loss) and the Student-t quantile at the Welch–Satterthwaite degrees of
    freedom (module docstring)."""
    z = _z(level)
    m = math.log(predicted)
    lo_side = max(m - math.log(interval[0]), 0.0) / z
    hi_side = max(math.log(interval[1]) - m, 0.0) / z
    extra = (tau * distance) ** 2
    if extra <= 0 or dof < 1:
        return interval
    s2 = ((lo_side + hi_side) / 2) ** 2
    nu = (s2 + extra) ** 2 / (extra**2 / dof)
    q = float(scipy.stats.t.ppf((1 + level) / 2, nu))
    lo = m - q * math.sqrt(lo_side**2 + extra)
    hi = m + q * math.sqrt(hi_side**2 + extra)
    return min(math.exp(lo), interval[0]), max(math.exp(hi), interval[1])


def discrepancy(folds: list[Fold] | tuple[Fold, ...], level: float) -> tuple[float | None, int]:
    """τ̂ by the method of moments over the folds with an error and a non-zero lever arm, and how many
    there were (module docstring). A fold without a bootstrap interval counts with s = 0."""
    use = [f for f in folds if f.log_error is not None and f.distance != 0]
    if not use:
        return None, 0
    num = sum(f.log_error**2 - (f.spread(level) or 0.0) ** 2 for f in use)
    den = sum(f.distance**2 for f in use)
    return math.sqrt(max(num / den, 0.0)), len(use)


def calibrate(folds: list[Fold] | tuple[Fold, ...], approach: str, level: float) -> Calibration:
    """One approach's record over ``folds`` (any approach's; its own are picked). Every fold of the
    approach counts, whatever law it fitted: the folds score the procedure the toolkit applies as a
    sweep grows, and approach 2's frontier switches from E = 0 to a fitted E at four budgets, whose
    early folds are the ones that show how a law that fits the budgets so far still misses the
    next (keeping only the folds of the full fit's law left too few, and too tame, folds)."""
    mine = tuple(f for f in folds if f.approach == approach and f.predicted is not None)
    if not mine:
        why = next((f.reason for f in folds if f.approach == approach and f.reason), None)
        return Calibration(approach, level, (), None, 0, None, None, None, None,
                           reason=why or "no held-out fold")  # fmt: skip
    tau, dof = discrepancy(mine, level)
    with_ci = [f for f in mine if f.interval is not None]
    coverage = float(np.mean([f.covered for f in with_ci])) if with_ci else None
    loo = []
    if len(with_ci) >= 2:
        for f in with_ci:
            t, k = discrepancy([g for g in mine if g is not f], level)
            if t is None:
                continue
            lo, hi = widen(f.predicted, f.interval, t, k, f.distance, level)
            loo.append(lo <= f.observed <= hi)
    errs = np.array([f.log_error for f in mine])
    return Calibration(
        approach, level, mine, tau, dof, coverage, float(np.mean(loo)) if loo else None,
        float(np.sqrt(np.mean(errs**2))), float(np.mean(errs)),
        reason=None if tau is not None else "no fold extrapolates",
    )  # fmt: skip


def fold_spec(spec: FitSpec, budget: float) -> FitSpec:
    """``spec`` for one fold: predict ``budget`` with ``holdout.rolling_resamples`` bootstrap
    resamples (at most ``bootstrap.resamples``); no nested held-out check, no joint laws."""
    resamples = min(spec.bootstrap.resamples, spec.holdout.rolling_resamples)
    return dataclasses.replace(
        spec,
        predict=[float(budget)],
        bootstrap=dataclasses.replace(spec.bootstrap, resamples=resamples),
        holdout=HoldoutSpec(budgets=0),
        joint=JointSpec(enabled=False),
    )


def law_form(mf, approach: str) -> str | None:
    """The law ``approach`` fitted in a MethodFit (:attr:`Fold.form`)."""
    if approach == "approach3":
        return "chinchilla" if mf.approach3 is not None else None
    fit = getattr(mf, approach)
    return fit.loss.form if fit is not None and fit.loss is not None else None


def observed_optima(points: Points, spec: FitSpec) -> dict[int, float]:
    """Budget index → its observed isoFLOP minimum (windowed parabola's L*), for the budgets with an
    interior one: what the held-out check compares predictions with."""
    parabolas = fit_isoflop(points, spec.approach2).parabolas
    return {g: p.loss_opt for g, p in enumerate(parabolas)
            if p.status == "ok" and p.loss_opt is not None}  # fmt: skip


def rolling_folds(
    points: Points,
    spec: FitSpec,
    *,
    min_train: int = 2,
    max_folds: int | None = None,
    seed: int = 0,
    progress=None,
    best: np.ndarray | None = None,
) -> tuple[Fold, ...]:
    """Every rolling-origin fold of ``points`` (module docstring): for each budget with an interior
    isoFLOP minimum and at least ``min_train`` budgets below it (the ``max_folds`` largest such, if
    given), a refit on the budgets below and its prediction of that budget's L* per approach.
    ``best``: the full fit's approach-3 θ; given, each refit starts from it and a tenth of the grid
    (:func:`scaling.fit.holdout.holdout_starts`, as the held-out check does) instead of the grid."""
    progress = progress or (lambda stage: None)
    optima = observed_optima(points, spec)
    targets = [g for g in sorted(optima) if g >= min_train]
    if max_folds is not None:
        targets = targets[len(targets) - max_folds :] if max_folds > 0 else []
    folds = []
    for g in targets:
        c = float(points.budgets[g])
        train = points.subset(points.group < g)
        base = dict(budget=c, train_max=float(train.budgets.max()),
                    train_centre=centre(train.budgets), n_train_budgets=len(train.budgets),
                    observed=float(optima[g]))  # fmt: skip
        progress(f"held-out budget {c:.3g} (fit on {len(train.budgets)} budgets)")
        starts = None if best is None else holdout_starts(spec, best)
        out = fit_method(train, fold_spec(spec, c), seed=[seed, g], starts=starts)
        if isinstance(out, str):
            folds += [Fold(a, **base, reason=out) for a in APPROACHES]
            continue
        mf = out[0]
        for a in APPROACHES:
            q = next((q for q in mf.predictions
                      if q.approach == a and math.isclose(q.C, c, rel_tol=1e-9)), None)  # fmt: skip
            if q is None or q.loss is None or not q.loss > 0:
                why = next((n for n in mf.notes if n.startswith(a)), f"{a} gave no L* here")
                folds.append(Fold(a, **base, reason=why))
                continue
            folds.append(Fold(a, **base, predicted=float(q.loss), interval=q.ci.get("loss"),
                              form=law_form(mf, a)))  # fmt: skip
    return tuple(folds)


def rolling_check(
    points: Points,
    spec: FitSpec,
    *,
    min_train: int = 2,
    max_folds: int | None = None,
    seed: int = 0,
    progress=None,
    best: np.ndarray | None = None,
) -> RollingCheck:
    """:func:`rolling_folds` and each approach's :func:`calibrate` over them."""
    level = spec.bootstrap.level
    reason = None
    if not spec.approach2.enabled:
        reason = "the observed optimum is a budget's isoFLOP parabola: approach 2 is disabled"
        return RollingCheck(points.method, level, (), {}, reason)
    folds = rolling_folds(points, spec, min_train=min_train, max_folds=max_folds, seed=seed,
                          progress=progress, best=best)  # fmt: skip
    if not folds:
        n = len(observed_optima(points, spec))
        reason = (f"no budget with an interior isoFLOP minimum has {min_train} budget(s) below it "
                  f"({n} of {len(points.budgets)} budgets have such a minimum)")  # fmt: skip
    enabled = [a for a in APPROACHES if getattr(spec, a).enabled]
    cals = {a: calibrate(folds, a, level) for a in enabled}
    return RollingCheck(points.method, level, folds, cals, reason)
