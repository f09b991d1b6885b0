"""Calibrated extrapolation: rolling-origin held-out checks of each approach's L*(C), the empirical
coverage of its bootstrap intervals, and intervals widened for a law that does not hold.

    >>> from scaling.fit.calibration import rolling_check
    >>> from scaling.fit.folds import lever_arm
    >>> check = rolling_check(points, spec, seed=0)        # fits on budgets ≤ k, predicts k + 1
    >>> cal = check.calibrations["approach3"]
    >>> cal.coverage, cal.tau, [f.error for f in cal.folds]
    >>> cal.interval(2.31, (2.29, 2.33), lever_arm(1e21, points.budgets))  # widened 95% of L*

**Rolling origin**: the folds of :mod:`scaling.fit.folds` (fit on budgets ≤ k, predict k + 1).

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
e_k = log(L̂*/L*_obs), bootstrap standard deviation s_k, observed optimum's spread o_k and lever
arm d_k, the three independent,

    E[e_k²] = s_k² + o_k² + τ²·d_k²   ⇒   τ̂² = max(0, Σ (e_k² − s_k² − o_k²) / Σ d_k²)

(the method of moments; the moment is uncentred, so a consistent bias counts as width: with a
handful of folds a bias correction would be noisier than the bias it removes). The observed
optimum's noise is the observation's, not the law's: it does not grow with d, and left in the
errors it was counted as discrepancy at the folds yet missing from a well-specified sweep's
intervals, where τ̂ = 0 (measured: those bootstrap intervals held the observed optimum in about 85%
of seeds, their spread s as large as o). The widened interval of L* at distance d keeps each side
of the bootstrap interval and adds the discrepancy in quadrature, side by side,

    side' = q·√((side / z)² + τ̂²·d²),   z = Φ⁻¹((1 + level)/2),

with q the Student-t quantile at the Welch–Satterthwaite effective degrees of freedom (Satterthwaite
1946): ν_eff = σ⁴ / ((τ̂²d²)²/K) for K folds and σ² = s² + τ̂²d² (s and o come from hundreds of
resamples; only τ̂² is estimated from K). With τ̂ = 0 it is the bootstrap interval unchanged
(q = z); with τ̂ estimated from two folds it is a t with about two degrees of freedom, as wide as
two comparisons warrant. The interval of an *observed* optimum — what a fold, or the coverage
suites of :mod:`scaling.fit.coverage`, compare with — adds that observation's o² to σ² as well
(:meth:`Calibration.interval` with ``observed``).

**Which folds estimate τ.** A fold scores the law it fitted, and a discrepancy is a law's: τ for a
prediction comes from the folds whose law has the prediction's L*(C) form (:func:`matching`).
Approach 2's frontier law is E = 0 (``power``) below four budgets and E + A·C^−a (``saturating``)
from four on; the E = 0 law's misses — it cannot flatten — are no record of the saturating law, and
counting them widened a well-specified five-budget sweep's saturating intervals ×2.4 for nothing.
Approach 3's L(N, D), minimised under C = 6ND, is a saturating L*(C) (Hoffmann et al. 2022, eq. 4),
so its folds count for approach 2's saturating predictions, with approach 2's own saturating folds
once there are any (alone, the two such folds of a seven-budget sweep under-covered a bending
frontier: the saturating law absorbs the bend over few budgets and misses only further out).
Approach 3's τ comes from its own folds.

**The sweep's folds** (``holdout.pool``). A method has one fold per budget beyond its second, so a
five-budget sweep calibrates the next budget from two, and two often cannot see a bend: where the
first fold's bootstrap spread exceeds its error the moment sum goes negative and τ̂ = 0. The
methods of one sweep share its data, schedule and budgets, and with them what bends the frontier or
leaves runs short of converging; a method's τ is therefore the larger of its own folds' and all
methods' folds' (same approach and L*(C) form; :func:`pooled_tau`), the borrowing of a
heterogeneity estimate from related analyses that meta-analysis uses when one has few studies
(Turner et al. 2012, Int J Epidemiol 41:818). Taking the larger keeps a method whose own folds
show more than its neighbours' (a law may fail for one method only) from being narrowed by them.

**What short folds cannot see.** Where every fold of every method misses by less than its own
spread, no estimate tells the sweep from one whose law holds, yet a bend can grow faster than the
linear lever arm (an omitted quadratic term's leftover is κ·(d² − the fitted log C's variance)).
Carrying τ's uncertainty through (the Q-profile confidence distribution: Nagashima, Noma & Furukawa
2019, Stat Methods Med Res 28:1689) would cover them, but from a few folds τ's confidence range
runs from 0 to large values on every sweep, so it widens those whose law holds as much; it is not
done. docs/fitting.md gives the coverage measured on both kinds of sweep.

**Why not split-conformal.** A split-conformal interval (Vovk et al. 2005; Lei et al. 2018) at
level 1 − a needs ⌈(K + 1)(1 − a)⌉ ≤ K calibration scores: 19 folds for 95%. A sweep has a handful
per method; conformal would return an infinite interval (or a smaller level than asked). The
discrepancy model trades that distribution-free guarantee for one assumption (δ Gaussian with a
spread linear in distance) and gives finite intervals from one fold up.

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

from scaling.fit.folds import APPROACHES, Fold, observed_optima, quantile_z, rolling_folds
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec

FRONTIER_FORM = {"chinchilla": "saturating", "saturating": "saturating", "power": "power"}
"""The form of L*(C) each fitted law implies. Approach 3's L = E + A/N^α + B/D^β minimised under
C = 6ND is L*(C) = E + K·C^(−αβ/(α+β)) (Hoffmann et al. 2022, eq. 4): approach 2's ``saturating``
frontier law E + A·C^−a; its ``power`` law is that with E = 0."""


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
    form: str | None = None
    """The law of the predictions ``tau`` widens (:attr:`Fold.form`; None: any)."""
    tau_folds: str | None = None
    """Which folds ``tau`` comes from (:func:`matching`, and the sweep's with ``pool``)."""
    tau_own: float | None = None
    """τ from this method's own folds alone; ``tau`` is the sweep's where that is larger."""

    def interval(
        self,
        predicted: float,
        interval: tuple[float, float] | None,
        distance: float,
        observed: float | None = None,
    ) -> tuple[float, float] | None:
        """The widened interval of a prediction whose bootstrap interval is ``interval``, made
        ``distance`` decades from the centre of the fitted budgets (:func:`scaling.fit.folds.lever_arm`): of L*
        itself, or, given ``observed`` (an observed optimum's own log standard deviation,
        :attr:`Fold.observed_spread`), of that observed optimum."""
        if interval is None or self.tau is None or not predicted > 0:
            return interval
        return widen(predicted, interval, self.tau, self.dof, abs(distance), self.level,
                     observed or 0.0)  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "approach": self.approach, "level": self.level, "tau_per_decade": self.tau,
            "tau_own_per_decade": self.tau_own, "folds_used": self.dof, "form": self.form, "tau_folds": self.tau_folds,
            "coverage": self.coverage,
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


def widen(
    predicted: float,
    interval: tuple[float, float],
    tau: float,
    dof: int,
    distance: float,
    level: float,
    observed: float = 0.0,
) -> tuple[float, float]:
    """The bootstrap ``interval`` of ``predicted`` with the discrepancy τ·distance added in quadrature
    to each side (in log loss) and the Student-t quantile at the Welch–Satterthwaite degrees of
    freedom (module docstring); ``observed``: an observed optimum's own log standard deviation,
    added too, for the interval of that observation rather than of L*."""
    z = quantile_z(level)
    m = math.log(predicted)
    lo_side = max(m - math.log(interval[0]), 0.0) / z
    hi_side = max(math.log(interval[1]) - m, 0.0) / z
    extra = (tau * distance) ** 2 if dof >= 1 else 0.0
    known = observed**2
    if extra <= 0 and known <= 0:
        return interval
    s2 = ((lo_side + hi_side) / 2) ** 2 + known
    nu = (s2 + extra) ** 2 / (extra**2 / dof) if extra > 0 else math.inf
    q = float(scipy.stats.t.ppf((1 + level) / 2, nu)) if extra > 0 else z
    lo = m - q * math.sqrt(lo_side**2 + known + extra)
    hi = m + q * math.sqrt(hi_side**2 + known + extra)
    return min(math.exp(lo), interval[0]), max(math.exp(hi), interval[1])


def discrepancy(folds: list[Fold] | tuple[Fold, ...], level: float) -> tuple[float | None, int]:
    """τ̂ by the method of moments over the folds with an error and a non-zero lever arm, and how many
    there were (module docstring). A fold without a bootstrap interval counts with s = 0, one
    without an observed spread with o = 0."""
    use = [f for f in folds if f.log_error is not None and f.distance != 0]
    if not use:
        return None, 0
    num = sum(f.log_error**2 - (f.spread(level) or 0.0) ** 2 - (f.observed_spread or 0.0) ** 2
              for f in use)  # fmt: skip
    den = sum(f.distance**2 for f in use)
    return math.sqrt(max(num / den, 0.0)), len(use)


def frontier_form(form: str | None) -> str | None:
    """The form of L*(C) a fold's law implies (:data:`FRONTIER_FORM`)."""
    return FRONTIER_FORM.get(form, form) if form is not None else None


def matching(
    folds: list[Fold] | tuple[Fold, ...], approach: str, form: str | None
) -> tuple[tuple[Fold, ...], str]:
    """The folds whose errors estimate τ for a prediction of ``approach`` made with the law ``form``
    (module docstring), and which they are: ``approach``'s own folds whose law has the same L*(C)
    form (:data:`FRONTIER_FORM`) and, for a saturating L*(C) of another approach, approach 3's folds,
    whose law implies that form; without any (or ``form`` None), all of ``approach``'s folds."""
    scored = [f for f in folds if f.predicted is not None]
    own = tuple(f for f in scored if f.approach == approach)
    if form is None:
        return own, f"{approach}'s folds"
    want = frontier_form(form)
    same = tuple(f for f in own if frontier_form(f.form) == want)
    if approach != "approach3" and want == frontier_form("chinchilla"):
        same += tuple(f for f in scored if f.approach == "approach3")
    if not same:
        return own, f"{approach}'s folds (none of the {want} L*(C) law)"
    names = " and ".join(sorted({f.approach for f in same}))
    return same, f"{names}'s folds of the {want} L*(C) law"


def pooled_tau(
    folds, approach: str, level: float, form: str | None, pool: dict[str, Any] | None = None
) -> tuple[float | None, int, str, float | None]:
    """τ̂ for ``approach``'s predictions with the law ``form``, its folds, where they come from, and
    the method's own τ̂: from the :func:`matching` ``folds``, or, where larger, from those and the
    matching folds of the sweep's other methods (``pool``: method → its folds; module docstring)."""
    basis, source = matching(folds, approach, form)
    own, k = discrepancy(basis, level)
    others = {m: v for m, v in (pool or {}).items() if v}
    if not others:
        return own, k, source, own
    every = list(folds) + [f for v in others.values() for f in v]
    sweep, k_all = discrepancy(matching(every, approach, form)[0], level)
    n = len(others) + 1
    if sweep is None or (own is not None and own >= sweep):
        less = "none" if sweep is None else f"τ = {sweep:.2%}"
        return own, k, f"{source}; all {n} methods' folds give no more: {less}", own
    mine = "none" if own is None else f"τ = {own:.2%}"
    return sweep, k_all, f"{source}, pooled over all {n} methods (its own alone: {mine})", own


def _without(folds, budget: float) -> list[Fold]:
    return [g for g in folds if not math.isclose(g.budget, budget, rel_tol=1e-9)]


def calibrate(
    folds: list[Fold] | tuple[Fold, ...],
    approach: str,
    level: float,
    form: str | None = None,
    pool: dict[str, Any] | None = None,
) -> Calibration:
    """One approach's record over ``folds`` (any approach's; its own are scored), and τ for its
    predictions made with the law ``form`` (:attr:`Fold.form`; None: any law) from the
    :func:`matching` folds, or the sweep's (``pool``: the other methods' folds) where that is
    larger (:func:`pooled_tau`). Approach 2's frontier switches from E = 0 (``power``) to a fitted
    E (``saturating``) at four budgets; an E = 0 law's misses are that law's, and counting them in
    the discrepancy of a saturating prediction widened well-specified sweeps' intervals twofold for
    nothing. Approach 3's L(N, D) implies a saturating L*(C) (:data:`FRONTIER_FORM`), so its folds
    stand in where approach 2 has no saturating fold yet. The leave-one-out coverage leaves out
    each fold's budget from every method's folds."""
    mine = tuple(f for f in folds if f.approach == approach and f.predicted is not None)
    if not mine:
        why = next((f.reason for f in folds if f.approach == approach and f.reason), None)
        return Calibration(approach, level, (), None, 0, None, None, None, None,
                           reason=why or "no held-out fold", form=form)  # fmt: skip
    tau, dof, source, own = pooled_tau(folds, approach, level, form, pool)
    with_ci = [f for f in mine if f.interval is not None]
    coverage = float(np.mean([f.covered for f in with_ci])) if with_ci else None
    loo = []
    if len(with_ci) >= 2:
        for f in with_ci:
            rest = {m: _without(v, f.budget) for m, v in (pool or {}).items()}
            t, k = pooled_tau(_without(folds, f.budget), approach, level, f.form, rest)[:2]
            if t is None:
                continue
            lo, hi = widen(f.predicted, f.interval, t, k, f.distance, level,
                           f.observed_spread or 0.0)  # fmt: skip
            loo.append(lo <= f.observed <= hi)
    errs = np.array([f.log_error for f in mine])
    return Calibration(
        approach, level, mine, tau, dof, coverage, float(np.mean(loo)) if loo else None,
        float(np.sqrt(np.mean(errs**2))), float(np.mean(errs)),
        reason=None if tau is not None else "no fold extrapolates", form=form, tau_folds=source,
        tau_own=own,
    )  # fmt: skip


def rolling_check(
    points: Points,
    spec: FitSpec,
    *,
    min_train: int = 2,
    seed: int = 0,
    progress=None,
    best: np.ndarray | None = None,
    forms: dict[str, str | None] | None = None,
) -> RollingCheck:
    """:func:`scaling.fit.folds.rolling_folds` and each approach's :func:`calibrate` over them;
    ``forms``: the law each approach's predictions are made with
    (:func:`scaling.fit.folds.law_form` of the full fit), whose folds estimate its τ
    (:func:`matching`)."""
    level = spec.bootstrap.level
    reason = None
    if not spec.approach2.enabled:
        reason = "the observed optimum is a budget's isoFLOP parabola: approach 2 is disabled"
        return RollingCheck(points.method, level, (), {}, reason)
    folds = rolling_folds(points, spec, min_train=min_train, seed=seed,
                          progress=progress, best=best)  # fmt: skip
    if not folds:
        n = len(observed_optima(points, spec))
        reason = (f"no budget with an interior isoFLOP minimum has {min_train} budget(s) below it "
                  f"({n} of {len(points.budgets)} budgets have such a minimum)")  # fmt: skip
    enabled = [a for a in APPROACHES if getattr(spec, a).enabled]
    cals = {a: calibrate(folds, a, level, (forms or {}).get(a)) for a in enabled}
    return RollingCheck(points.method, level, folds, cals, reason)


def pool_checks(
    checks: dict[str, RollingCheck], forms: dict[str, dict[str, str | None]]
) -> dict[str, RollingCheck]:
    """Each method's :class:`RollingCheck` with its calibrations' τ taken from the sweep's folds
    where they show more discrepancy than its own (:func:`pooled_tau`); ``forms``: per method, the
    law each approach predicts with (as :func:`rolling_check`'s)."""
    out = {}
    for m, c in checks.items():
        pool = {o: oc.folds for o, oc in checks.items() if o != m}
        cals = {a: calibrate(c.folds, a, c.level, forms.get(m, {}).get(a), pool)
                for a in c.calibrations}  # fmt: skip
        out[m] = dataclasses.replace(c, calibrations=cals)
    return out
