"""Does a 95% interval of L* at the next budget hold the observed optimum 95% of the time? Synthetic
isoFLOP sweeps from laws the fitter assumes and from laws it does not, and the measured coverage of
the bootstrap intervals and of the calibrated ones (:mod:`scaling.fit.calibration`).

    >>> from scaling.fit.coverage import SUITES, measure
    >>> result = measure("curvature", seeds=range(20), spec=spec)
    >>> result.coverage["approach3"], result.calibrated["approach3"]

One trial = one sweep of ``budgets`` (log-spaced; each budget a grid of sizes centred on the law's
optimum, so every isoFLOP minimum is interior), log-normal noise per run. The last budget is held
out: every approach is fitted on the others and predicts its L*; the earlier rolling-origin folds
(fit on budgets ≤ k, predict k + 1) calibrate the widening, and never see the last budget. Both
intervals are checked against the last budget's observed optimum (its isoFLOP parabola's L*): the
bootstrap interval of L* as it is, the calibrated one as the interval of that observation (with its
own bootstrap spread, :attr:`scaling.fit.calibration.Fold.observed_spread`, added in quadrature).

Suites (all on Hoffmann et al.'s fitted law E = 1.69, A = 406.4, B = 410.7, α = 0.34, β = 0.28 and
C = 6·N·D, the setting approach 3 assumes):

- ``well_specified``: the law itself;
- ``curvature``: an extra term bending the frontier in log C, L·exp(κ·(log10 C/C₀)²), which no
  power law in N and D has (a loss that stops falling as fast at larger budgets);
- ``undertrained``: runs with fewer than 20 tokens per parameter end above the law by
  u·log10(20·N/D) (relative), as runs stopped before convergence do; the share of such runs at a
  budget changes with the budget, which the law cannot absorb.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from scaling.fit.calibration import (
    APPROACHES,
    Calibration,
    Fold,
    calibrate,
    rolling_folds,
    widen,
)
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec

CHINCHILLA = (1.69, 406.4, 410.7, 0.34, 0.28)
"""E, A, B, α, β of Hoffmann et al. (2022), approach 3."""
BUDGETS = tuple(np.logspace(18, 20, 5))
CURVATURE = 0.015
"""κ of the ``curvature`` suite: +6% loss at the last budget, 2 decades above the first."""
UNDERTRAINED = 0.06
"""u of the ``undertrained`` suite: +6% loss per decade below 20 tokens per parameter."""


def sweep(
    seed: int,
    *,
    budgets: Iterable[float] = BUDGETS,
    sizes: int = 7,
    half_width: float = 0.8,
    noise: float = 0.005,
    curvature: float = 0.0,
    undertrained: float = 0.0,
) -> Points:
    """One synthetic sweep (module docstring): ``sizes`` models per budget spanning ±``half_width``
    decades of N around the law's optimum, losses times exp(``noise``·ε)."""
    E, A, B, al, be = CHINCHILLA
    budgets = np.asarray(sorted(budgets), dtype=float)
    rng = np.random.default_rng(seed)
    G = (al * A / (be * B)) ** (1 / (al + be))  # Hoffmann et al. eq. (4), C = 6·N·D
    n_opt = G * (budgets / 6) ** (be / (al + be))
    N = (n_opt[:, None] * np.logspace(-half_width, half_width, sizes)[None, :]).ravel()
    C = np.repeat(budgets, sizes)
    D = C / (6 * N)
    L = E + A * N**-al + B * D**-be
    L = L * np.exp(curvature * np.log10(C / budgets[0]) ** 2)
    L = L * (1 + undertrained * np.maximum(np.log10(20 * N / D), 0.0))
    L = L * np.exp(noise * rng.standard_normal(len(L)))
    group = np.repeat(np.arange(len(budgets)), sizes)
    ids = np.array([f"s{seed}-r{i}" for i in range(len(L))], dtype=object)
    return Points("synthetic", ids, N, D, C, L, group, budgets)


SUITES: dict[str, Callable[[int], Points]] = {
    "well_specified": lambda seed: sweep(seed),
    "curvature": lambda seed: sweep(seed, curvature=CURVATURE),
    "undertrained": lambda seed: sweep(seed, undertrained=UNDERTRAINED),
}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One approach's prediction of one held-out last budget."""

    seed: int
    approach: str
    observed: float
    predicted: float
    interval: tuple[float, float] | None
    calibrated: tuple[float, float] | None
    """The calibrated interval of the observed optimum (the observation's own spread included)."""
    tau: float | None
    unwidened: tuple[float, float] | None = None
    """The bootstrap interval with only the observation's own spread added (τ = 0)."""

    @property
    def covered(self) -> bool | None:
        return None if self.interval is None else _inside(self.observed, self.interval)

    @property
    def covered_calibrated(self) -> bool | None:
        return None if self.calibrated is None else _inside(self.observed, self.calibrated)


def _inside(x: float, iv: tuple[float, float]) -> bool:
    return iv[0] <= x <= iv[1]


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Coverage of one suite over its seeds, per approach."""

    suite: str
    level: float
    trials: tuple[Trial, ...]
    coverage: dict[str, float]
    """Share of trials whose bootstrap interval held the observed optimum."""
    calibrated: dict[str, float]
    """The same for the calibrated intervals."""
    width_ratio: dict[str, float]
    """Median width of the calibrated interval over the bootstrap one's."""
    tau_ratio: dict[str, float]
    """Median width of the calibrated interval over the bootstrap one's with the observation's own
    spread added: the discrepancy's share of the widening."""
    n: dict[str, int]
    """Trials with both intervals."""

    def line(self, approach: str) -> str:
        """One line for a test's message or a benchmark's table."""
        return (f"{self.suite} {approach}: bootstrap {self.coverage[approach]:.0%}, calibrated "
                f"{self.calibrated[approach]:.0%} of {self.n[approach]} at nominal "
                f"{self.level:.0%} (median width ×{self.width_ratio[approach]:.2f}, "
                f"×{self.tau_ratio[approach]:.2f} of the observation's unwidened interval)")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "level": self.level, "n": self.n,
                "coverage": self.coverage, "calibrated": self.calibrated,
                "width_ratio": self.width_ratio, "tau_ratio": self.tau_ratio}  # fmt: skip


def sequential(
    folds: Iterable[Fold], approach: str, level: float
) -> list[tuple[Fold, Calibration]]:
    """Each fold of ``approach`` that has earlier ones, with the calibration of the earlier folds
    (of every approach, for :func:`scaling.fit.calibration.matching`) only, for the law that fold
    fitted: how the widening would have done, budget by budget, had the sweep stopped there."""
    folds = [f for f in folds if f.predicted is not None]
    mine = sorted((f for f in folds if f.approach == approach), key=lambda f: f.budget)
    return [(f, calibrate([g for g in folds if g.budget < f.budget], approach, level, f.form))
            for f in mine if any(g.budget < f.budget for g in mine)]  # fmt: skip


def trial(points: Points, spec: FitSpec, seed: int, *, min_train: int = 2) -> list[Trial]:
    """Hold out the last budget: its fold is the test, the earlier folds calibrate."""
    folds = rolling_folds(points, spec, min_train=min_train, seed=seed)
    if not folds:
        return []
    last = max(f.budget for f in folds)
    out = []
    for a in APPROACHES:
        for test, cal in sequential(folds, a, spec.bootstrap.level):
            if test.budget == last:
                widened = cal.interval(test.predicted, test.interval, test.distance,
                                       test.observed_spread)  # fmt: skip
                plain = (widen(test.predicted, test.interval, 0.0, 0, 0.0, cal.level,
                               test.observed_spread or 0.0) if test.interval else None)  # fmt: skip
                out.append(Trial(seed, a, test.observed, test.predicted, test.interval, widened,
                                 cal.tau, plain))  # fmt: skip
    return out


def measure(
    suite: str | Callable[[int], Points], *, seeds: Iterable[int], spec: FitSpec, name: str = ""
) -> Coverage:
    """Trials of ``suite`` (a name in SUITES or a seed → Points function) over ``seeds``."""
    make = SUITES[suite] if isinstance(suite, str) else suite
    trials = tuple(t for s in seeds for t in trial(make(s), spec, s))
    cov, cal, ratio, tau_ratio, n = {}, {}, {}, {}, {}
    for a in APPROACHES:
        mine = [t for t in trials if t.approach == a and t.interval and t.calibrated]
        if not mine:
            continue
        n[a] = len(mine)
        cov[a] = float(np.mean([t.covered for t in mine]))
        cal[a] = float(np.mean([t.covered_calibrated for t in mine]))
        ratio[a] = float(np.median([np.log(t.calibrated[1] / t.calibrated[0])
                                    / np.log(t.interval[1] / t.interval[0]) for t in mine]))  # fmt: skip
        tau_ratio[a] = float(np.median([np.log(t.calibrated[1] / t.calibrated[0])
                                        / np.log(t.unwidened[1] / t.unwidened[0])
                                        for t in mine]))  # fmt: skip
    return Coverage(name or str(suite), spec.bootstrap.level, trials, cov, cal, ratio, tau_ratio, n)
