"""Rolling-origin folds: refit a method on its budgets ≤ k and predict L* at budget k + 1, per
approach, against that budget's observed isoFLOP minimum; what :mod:`scaling.fit.calibration`
calibrates from.

    >>> from scaling.fit.folds import rolling_folds
    >>> folds = rolling_folds(points, spec, seed=0)
    >>> [(f.approach, f.budget, f.error, f.covered) for f in folds]

**Rolling origin** (Tashman 2000): for every budget k + 1 with an interior isoFLOP minimum and at
least ``min_train`` smaller budgets, the method is refitted (:func:`scaling.fit.bootstrap.fit_method`,
bootstrap included) on the budgets ≤ k and predicts L* at budget k + 1. The prediction is compared
with the same observed optimum the held-out check uses: the held-out budget's windowed isoFLOP
parabola's L* (:func:`scaling.fit.holdout.holdout`). Each comparison is a :class:`Fold`; the share
of folds whose bootstrap interval holds the observed optimum is the interval's empirical coverage.
That optimum is itself an estimate: each fold records its spread o_k under the same run bootstrap
(the budget's runs resampled, its parabola refitted: :func:`observed_spreads`).

The lever arm d of a fold, or of a prediction, is its distance in decades of C from the centre
(geometric mean) of the fitted budgets (:func:`lever_arm`): where a discrepancy the law lacks grows
from.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import scipy.stats

from scaling.fit.bootstrap import fit_method, resample_weights
from scaling.fit.bootstrap import interval as percentile_interval
from scaling.fit.holdout import holdout_starts
from scaling.fit.isoflop import OK, fit_isoflop, isoflop_batch
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
    observed_spread: float | None = None
    """Standard deviation of log ``observed`` under the run bootstrap (its percentile interval's
    width over 2z, as :meth:`spread`): the observed optimum is itself a parabola's estimate."""

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
        return math.log(self.interval[1] / self.interval[0]) / (2 * quantile_z(level))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"distance": self.distance, "error": self.error,
                                           "covered": self.covered}  # fmt: skip


def centre(budgets) -> float:
    """Geometric mean of the fitted budgets' compute."""
    return float(np.exp(np.mean(np.log(np.asarray(budgets, dtype=float)))))


def lever_arm(C: float, budgets) -> float:
    """Decades of C from the centre of the fitted ``budgets`` to ``C``: the distance the discrepancy
    grows with."""
    return abs(math.log10(C / centre(budgets)))


def quantile_z(level: float) -> float:
    """z = Φ⁻¹((1 + level)/2): a two-sided normal interval's half-width in standard deviations."""
    return float(scipy.stats.norm.ppf((1 + level) / 2))


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


def observed_spreads(points: Points, spec: FitSpec, seed=0) -> dict[int, float]:
    """Budget index → the log standard deviation of its observed isoFLOP minimum under the run
    bootstrap (each budget's runs resampled, its windowed parabola refitted:
    :func:`scaling.fit.isoflop.isoflop_batch`), from its percentile interval as :meth:`Fold.spread`;
    ``holdout.rolling_resamples`` resamples (at most ``bootstrap.resamples``)."""
    r = min(spec.bootstrap.resamples, spec.holdout.rolling_resamples)
    if r < 10:
        return {}
    w = resample_weights(points, r, np.random.default_rng([*np.atleast_1d(seed), 0x0B5]))
    b = isoflop_batch(points, spec.approach2, w)
    out = {}
    for g in observed_optima(points, spec):
        loss = b["loss_opt"][:, g]
        iv = percentile_interval(loss[(b["status"][:, g] == OK) & (loss > 0)], spec.bootstrap.level)
        if iv is not None:
            out[g] = math.log(iv[1] / iv[0]) / (2 * quantile_z(spec.bootstrap.level))
    return out


def rolling_folds(
    points: Points,
    spec: FitSpec,
    *,
    min_train: int = 2,
    seed: int = 0,
    progress=None,
    best: np.ndarray | None = None,
) -> tuple[Fold, ...]:
    """Every rolling-origin fold of ``points`` (module docstring): for each budget with an interior
    isoFLOP minimum and at least ``min_train`` budgets below it, a refit on the budgets below and
    its prediction of that budget's L* per approach.
    ``best``: the full fit's approach-3 θ; given, each refit starts from it and a tenth of the grid
    (:func:`scaling.fit.holdout.holdout_starts`, as the held-out check does) instead of the grid."""
    progress = progress or (lambda stage: None)
    optima = observed_optima(points, spec)
    spreads = observed_spreads(points, spec, seed)
    targets = [g for g in sorted(optima) if g >= min_train]
    folds = []
    for g in targets:
        c = float(points.budgets[g])
        train = points.subset(points.group < g)
        base = dict(budget=c, train_max=float(train.budgets.max()),
                    train_centre=centre(train.budgets), n_train_budgets=len(train.budgets),
                    observed=float(optima[g]), observed_spread=spreads.get(g))  # fmt: skip
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
