"""Does a 95% interval of L* at the next budget hold the observed optimum 95% of the time? Synthetic
isoFLOP sweeps from laws the fitter assumes and from laws it does not, and the measured coverage of
the bootstrap intervals and of the calibrated ones (:mod:`scaling.fit.calibration`).

    >>> from scaling.fit.coverage import SUITES, measure
    >>> result = measure("curvature", seeds=range(20), spec=spec)
    >>> result.coverage["approach3"], result.calibrated["approach3"]

One seed = one sweep of three methods (:data:`LAWS`) over ``budgets`` (log-spaced; each budget a
grid of sizes centred on the method's optimum, so every isoFLOP minimum is interior), log-normal
noise per run. Each method's last budget is held out: every approach is fitted on the others and
predicts its L*; the earlier rolling-origin folds (fit on budgets ≤ k, predict k + 1) calibrate the
widening, the method's own and, with ``holdout.pool``, the other methods' (as ``scaling fit`` pools
them), and never see the last budget. Both intervals are checked against the last budget's observed
optimum (its isoFLOP parabola's L*): the bootstrap interval of L* as it is, the calibrated one as
the interval of that observation (with its own bootstrap spread,
:attr:`scaling.fit.folds.Fold.observed_spread`, added in quadrature). A trial is one method's
held-out budget.

Suites (on Hoffmann et al.'s fitted law E = 1.69, A = 406.4, B = 410.7, α = 0.34, β = 0.28 and two
neighbours, with C = 6·N·D, the setting approach 3 assumes; the misspecification is the sweep's,
shared by its methods):

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

from scaling.fit.calibration import Calibration, calibrate, widen
from scaling.fit.folds import APPROACHES, Fold, rolling_folds
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec

CHINCHILLA = (1.69, 406.4, 410.7, 0.34, 0.28)
"""E, A, B, α, β of Hoffmann et al. (2022), approach 3."""
LAWS = (CHINCHILLA, (1.80, 480.0, 350.0, 0.32, 0.30), (1.60, 350.0, 460.0, 0.36, 0.26))
"""The laws of a synthetic sweep's methods: Hoffmann et al.'s and two neighbours with other E, A, B,
α and β, as a sweep's methods differ in level and exponents while sharing its data, schedule and
budgets (and so whatever bends its frontier or leaves its runs short of converging)."""
BUDGETS = tuple(np.logspace(18, 20, 5))
CURVATURE = 0.015
"""κ of the ``curvature`` suite: +6% loss at the last budget, 2 decades above the first."""
UNDERTRAINED = 0.06
"""u of the ``undertrained`` suite: +6% loss per decade below 20 tokens per parameter."""


def sweep(
    seed: int,
    *,
    method: int = 0,
    budgets: Iterable[float] = BUDGETS,
    sizes: int = 7,
    half_width: float = 0.8,
    noise: float = 0.005,
    curvature: float = 0.0,
    undertrained: float = 0.0,
) -> Points:
    """One synthetic sweep (module docstring): ``sizes`` models per budget spanning ±``half_width``
    decades of N around the law's optimum, losses times exp(``noise``·ε); ``method``: which of
    :data:`LAWS` (the first draws the noise from ``seed`` alone)."""
    E, A, B, al, be = LAWS[method]
    budgets = np.asarray(sorted(budgets), dtype=float)
    rng = np.random.default_rng(seed if method == 0 else [seed, method])
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
    ids = np.array([f"s{seed}-m{method}-r{i}" for i in range(len(L))], dtype=object)
    return Points(f"synthetic{method or ''}", ids, N, D, C, L, group, budgets)


SUITES: dict[str, Callable[[int, int], Points]] = {
    "well_specified": lambda seed, method=0: sweep(seed, method=method),
    "curvature": lambda seed, method=0: sweep(seed, method=method, curvature=CURVATURE),
    "undertrained": lambda seed, method=0: sweep(seed, method=method, undertrained=UNDERTRAINED),
}
"""Suite name → (seed, method) → one method's sweep."""


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
    method: str = "synthetic"
    own: tuple[float, float] | None = None
    """The calibrated interval with τ from the method's own folds alone (``holdout.pool`` off)."""

    @property
    def covered(self) -> bool | None:
        return None if self.interval is None else _inside(self.observed, self.interval)

    @property
    def covered_calibrated(self) -> bool | None:
        return None if self.calibrated is None else _inside(self.observed, self.calibrated)

    @property
    def covered_own(self) -> bool | None:
        return None if self.own is None else _inside(self.observed, self.own)


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
    own: dict[str, float]
    """The same for the intervals calibrated by each method's own folds alone."""
    width_ratio: dict[str, float]
    """Median width of the calibrated interval over the bootstrap one's."""
    tau_ratio: dict[str, float]
    """Median width of the calibrated interval over the bootstrap one's with the observation's own
    spread added: the discrepancy's share of the widening."""
    own_ratio: dict[str, float]
    """The same for the intervals calibrated by each method's own folds alone."""
    n: dict[str, int]
    """Trials with both intervals."""

    def line(self, approach: str) -> str:
        """One line for a test's message or a benchmark's table."""
        a = approach
        return (f"{self.suite} {a}: bootstrap {self.coverage[a]:.0%}, calibrated "
                f"{self.calibrated[a]:.0%} (own folds alone {self.own[a]:.0%}) of {self.n[a]} at "
                f"nominal {self.level:.0%} (median width ×{self.width_ratio[a]:.2f}, "
                f"×{self.tau_ratio[a]:.2f} of the observation's unwidened interval; own folds "
                f"alone ×{self.own_ratio[a]:.2f})")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"suite": self.suite, "level": self.level, "n": self.n,
                "coverage": self.coverage, "calibrated": self.calibrated, "own": self.own,
                "own_ratio": self.own_ratio,
                "width_ratio": self.width_ratio, "tau_ratio": self.tau_ratio}  # fmt: skip


def sequential(
    folds: Iterable[Fold], approach: str, level: float, pool: dict[str, Any] | None = None
) -> list[tuple[Fold, Calibration]]:
    """Each fold of ``approach`` that has earlier ones, with the calibration of the earlier folds
    (of every approach, for :func:`scaling.fit.calibration.matching`, and of the sweep's other
    methods in ``pool``) only, for the law that fold fitted: how the widening would have done,
    budget by budget, had the sweep stopped there."""
    folds = [f for f in folds if f.predicted is not None]
    mine = sorted((f for f in folds if f.approach == approach), key=lambda f: f.budget)

    def before(fs, f):
        return [g for g in fs if g.budget < f.budget]

    return [(f, calibrate(before(folds, f), approach, level, f.form,
                          {m: before(v, f) for m, v in (pool or {}).items()}))
            for f in mine if any(g.budget < f.budget for g in mine)]  # fmt: skip


def trial(
    sweeps: Points | list[Points], spec: FitSpec, seed: int, *, min_train: int = 2
) -> list[Trial]:
    """Hold out the last budget of each method's sweep: its fold is the test, the earlier folds
    calibrate (every method's, where ``holdout.pool``, as ``scaling fit`` does)."""
    sweeps = [sweeps] if isinstance(sweeps, Points) else sweeps
    folds = {p.method: rolling_folds(p, spec, min_train=min_train, seed=seed) for p in sweeps}
    out = []
    for m, mine in folds.items():
        if not mine:
            continue
        pool = {o: v for o, v in folds.items() if o != m} if spec.holdout.pool else None
        last = max(f.budget for f in mine)
        for a in APPROACHES:
            seq = sequential(mine, a, spec.bootstrap.level, pool)
            alone = dict(sequential(mine, a, spec.bootstrap.level) if pool else seq)
            for test, cal in seq:
                if test.budget != last:
                    continue
                widened = cal.interval(test.predicted, test.interval, test.distance,
                                       test.observed_spread)  # fmt: skip
                own = alone[test].interval(test.predicted, test.interval, test.distance,
                                           test.observed_spread)  # fmt: skip
                plain = (widen(test.predicted, test.interval, 0.0, 0, 0.0, cal.level,
                               test.observed_spread or 0.0) if test.interval else None)  # fmt: skip
                out.append(Trial(seed, a, test.observed, test.predicted, test.interval, widened,
                                 cal.tau, plain, m, own))  # fmt: skip
    return out


def measure(
    suite: str | Callable[[int, int], Points],
    *,
    seeds: Iterable[int],
    spec: FitSpec,
    name: str = "",
    methods: int = 3,
) -> Coverage:
    """Trials of ``suite`` (a name in SUITES or a (seed, method) → Points function) over ``seeds``,
    each a sweep of ``methods`` methods (:data:`LAWS`), each method's last budget held out."""
    make = SUITES[suite] if isinstance(suite, str) else suite
    trials = tuple(t for s in seeds for t in trial([make(s, m) for m in range(methods)], spec, s))
    cov, cal, own, ratio, tau_ratio, own_ratio, n = {}, {}, {}, {}, {}, {}, {}
    for a in APPROACHES:
        mine = [t for t in trials if t.approach == a and t.interval and t.calibrated and t.own]
        if not mine:
            continue
        n[a] = len(mine)
        cov[a] = float(np.mean([t.covered for t in mine]))
        cal[a] = float(np.mean([t.covered_calibrated for t in mine]))
        own[a] = float(np.mean([t.covered_own for t in mine]))
        ratio[a] = _median_ratio(mine, "calibrated", "interval")
        tau_ratio[a] = _median_ratio(mine, "calibrated", "unwidened")
        own_ratio[a] = _median_ratio(mine, "own", "unwidened")
    return Coverage(name or str(suite), spec.bootstrap.level, trials, cov, cal, own, ratio,
                    tau_ratio, own_ratio, n)  # fmt: skip


def _median_ratio(trials: list[Trial], wide: str, narrow: str) -> float:
    """Median over ``trials`` of the width (in log loss) of one interval over another's."""
    return float(np.median([np.log(getattr(t, wide)[1] / getattr(t, wide)[0])
                            / np.log(getattr(t, narrow)[1] / getattr(t, narrow)[0])
                            for t in trials]))  # fmt: skip
