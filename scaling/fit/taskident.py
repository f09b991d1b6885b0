"""Whether a task law is identified by the data, and if not, why: the task-law counterpart of
:mod:`scaling.fit.identify`, so that a fit never reports accuracy vs compute the runs cannot pin down
as if it were a result.

    >>> from scaling.fit.taskident import step1_reasons, step2_reasons
    >>> step2_reasons(tf.step2, data.pair_loss, data.pair_acc, failed=0, resamples=200)
    ['accuracy never leaves its floor or ceiling: ...', "k's 95% interval [-318, -1.89] spans ..."]

Step 1 (task loss L(N, D)) takes the loss laws' tests; step 2 (the sigmoid Acc(L)) its own, since a
sigmoid fails differently: it is pinned down only by accuracies that rise from one plateau to the
other (:func:`step2_reasons`). Used by :mod:`scaling.fit.taskfit`; docs/fitting.md, "Task scaling laws".
"""

from __future__ import annotations

import numpy as np

from scaling.fit.identify import failed_reason, fmt_interval, outside, over_a_decade
from scaling.fit.tasklaw import STEP1_NAMES, STEP2_NAMES, SigmoidLaw, TaskLossLaw

MIN_ACC_SPREAD = 0.05
"""Least spread of the accuracies (10th to 90th percentile over the evaluations) for step 2: five
accuracy points. Less, and every evaluation sits on the sigmoid's floor or ceiling."""
NOISE_SPREAD = 3.0
"""The spread must also exceed this many times the fit's residual rmse (the accuracies' scatter about
the curve): a spread of pure noise is ~2.6 σ between those percentiles."""
MIN_RISING = 4
"""Fewest evaluations on the sigmoid's rising part (fitted accuracy between 10% and 90% of its rise,
|k(L − L0)| ≤ ln 9) for its slope and midpoint: one per parameter of step 2."""


def _outside(law, names: tuple[str, ...], pct: str) -> list[str]:
    """Each parameter whose point estimate lies outside its own bootstrap interval: the resamples find
    another optimum than the full data do, so neither is a measurement."""
    return [r for n in names for r in outside(n, getattr(law, n), law.ci.get(n), pct)]


def step1_reasons(law: TaskLossLaw, min_loss: float, *, failed: int = 0, resamples: int = 0,
                  level: float = 0.95) -> list[str]:  # fmt: skip
    """Why step 1, L(N, D) = E + A/N^α + B/D^β, is not identified ([] when it is): the loss laws'
    tests (:mod:`scaling.fit.identify`) on the task loss. E above the lowest final task loss observed
    (the law's floor contradicts the data); a parameter on its bound; α's or β's interval reaching
    zero (the trend's sign is unknown); E's interval spanning more than a decade; an estimate outside
    its own interval; most resamples failed."""
    pct = f"{level:.0%}"
    reasons = []
    if law.E > min_loss:
        reasons.append(f"E = {law.E:.4g} lies above the lowest observed task loss {min_loss:.4g}")
    reasons += [f"{n} sits at its bound ({getattr(law, n):.3g})" for n in law.bound_hits]
    for n in ("alpha", "beta"):
        ci = law.ci.get(n)
        if ci is not None and ci[0] <= 1e-6:
            reasons.append(f"{n}'s {pct} interval {fmt_interval(ci)} reaches zero")
    ci = law.ci.get("E")
    if over_a_decade(ci):
        reasons.append(f"E's {pct} interval {fmt_interval(ci)} spans more than a decade")
    return reasons + _outside(law, STEP1_NAMES, pct) + failed_reason(failed, resamples)


def step2_reasons(law: SigmoidLaw, L, acc, *, failed: int = 0, resamples: int = 0,
                  level: float = 0.95) -> list[str]:  # fmt: skip
    """Why step 2, Acc(L) = a / (1 + e^(−k(L − L0))) + b, is not identified ([] when it is), from the
    (task loss, accuracy) pairs it was fitted on.

    A sigmoid is pinned down only where the accuracies leave one plateau for the other: its height a,
    slope k and midpoint L0 are then read off the rise. Tiny models on a hard task (accuracy ≈ 0 at
    every run) give a curve fitted to the floor's noise, whose midpoint and slope are anything (L0
    outside its own interval, k running off to large values) with nothing said. Not identified when:

    * the accuracies' spread (10th to 90th percentile) is below :data:`MIN_ACC_SPREAD` or within
      noise (:data:`NOISE_SPREAD` × the fit's rmse): they never leave the floor or ceiling;
    * fewer than :data:`MIN_RISING` evaluations lie on the rising part of the fitted curve;
    * a parameter sits on its bound (k at 0 is a flat line; at its lower bound, a step);
    * a point estimate lies outside its own bootstrap interval;
    * k's interval reaches zero or spans more than a decade, a's reaches zero or spans more than a
      decade, or L0's is wider than the range of task losses observed (the rise is not located);
    * most bootstrap resamples failed.

    As for the loss laws, the thresholds flag what is unknown, not what is merely imprecise; without a
    bootstrap only the first three apply."""
    L, acc = np.asarray(L, float), np.asarray(acc, float)
    pct = f"{level:.0%}"
    reasons = []
    lo, hi = np.quantile(acc, [0.1, 0.9])
    floor = max(MIN_ACC_SPREAD, NOISE_SPREAD * law.rmse)
    if hi - lo < floor:
        reasons.append(
            f"accuracy never leaves its floor or ceiling: its 10th–90th percentile over "
            f"{len(acc)} evaluations is {lo:.3g}–{hi:.3g}, a spread under max({MIN_ACC_SPREAD:g}, "
            f"{NOISE_SPREAD:g} × rmse {law.rmse:.2g}) — only the task-loss law is measured"
        )
    rising = int(np.sum(np.abs(law.k * (L - law.L0)) <= np.log(9.0)))
    if rising < MIN_RISING:
        reasons.append(f"{rising} evaluation(s) on the sigmoid's rising part (10–90% of its rise), "
                       f"fewer than {MIN_RISING}")  # fmt: skip
    reasons += [f"{n} sits at its bound ({getattr(law, n):.3g})" for n in law.bound_hits]
    reasons += _outside(law, STEP2_NAMES, pct)
    ci = law.ci.get("k")  # k ≤ 0: [lo, hi] with |lo| ≥ |hi|
    if ci is not None and (ci[1] >= -1e-12 or over_a_decade((-ci[1], -ci[0]))):
        reasons.append(f"k's {pct} interval {fmt_interval(ci)} "
                       + ("reaches zero" if ci[1] >= -1e-12 else "spans more than a decade"))  # fmt: skip
    ci = law.ci.get("a")
    if ci is not None and (ci[0] <= 1e-12 or over_a_decade(ci)):
        reasons.append(f"a's {pct} interval {fmt_interval(ci)} "
                       + ("reaches zero" if ci[0] <= 1e-12 else "spans more than a decade"))  # fmt: skip
    ci = law.ci.get("L0")
    if ci is not None and ci[1] - ci[0] > np.ptp(L):
        reasons.append(f"L0's {pct} interval {fmt_interval(ci)} is wider than the observed task losses "
                       f"({L.min():.3g}–{L.max():.3g})")  # fmt: skip
    return reasons + failed_reason(failed, resamples)
