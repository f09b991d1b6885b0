"""The held-out check: fit on the smaller budgets, predict the largest budget with an interior isoFLOP
minimum, and score each approach's L*(C) against that budget's observed minimum.

    >>> from scaling.fit.holdout import holdout
    >>> h = holdout(points, spec)                  # a Holdout
    >>> h.held_out, h.mape, h.bias, h.loss_error("approach3"), h.loss_error("approach2")

docs/fitting.md ("Traps", 3) explains why it holds out the largest *valid* budget and why both
approaches are scored against the same observed minimum.
"""

from __future__ import annotations

import numpy as np

from scaling.errors import ScalingError
from scaling.fit.approach3 import fit_approach3, grid_starts
from scaling.fit.isoflop import fit_isoflop
from scaling.fit.points import Points
from scaling.fit.results import Holdout
from scaling.fit.spec import FitSpec


def holdout_starts(spec: FitSpec, best: np.ndarray | None) -> np.ndarray:
    """Starts for the held-out refit: every 10th grid start plus the full fit's optimum (a fit on
    fewer budgets lies in the same basin far more often than not) — a tenth of the grid's cost."""
    grid = grid_starts(spec.approach3)
    if len(grid) <= 500:
        return grid if best is None else np.vstack([best[None], grid])
    return grid[::10] if best is None else np.vstack([best[None], grid[::10]])


def holdout(points: Points, spec: FitSpec, best: np.ndarray | None = None) -> Holdout:
    """Fit on the budgets below the ``holdout.budgets`` largest budgets *that have an interior isoFLOP
    minimum*, and predict those. Larger budgets without one are left out of both (a held-out check
    must extrapolate, and a budget with no observed minimum has no L* to compare with); when no
    budget has one, the largest budgets are held out and only approach 3 is scored. ``best``: the
    full fit's raw θ, used as one of the starts."""
    k = spec.holdout.budgets
    nb = len(points.budgets)
    valid = []
    if spec.approach2.enabled:
        valid = [g for g, p in enumerate(fit_isoflop(points, spec.approach2).parabolas)
                 if p.status == "ok"]  # fmt: skip
    notes = []
    if len(valid) >= k:
        held_groups = valid[len(valid) - k :]
        if held_groups[-1] != nb - 1:
            notes.append(f"held out {', '.join(f'{points.budgets[g]:.3g}' for g in held_groups)}: "
                         "the largest budget(s) with an interior isoFLOP minimum")  # fmt: skip
    else:
        held_groups = list(range(max(nb - k, 0), nb))
        if spec.approach2.enabled:
            notes.append(f"{len(valid)} budget(s) with an interior isoFLOP minimum: held out the "
                         f"largest {k} instead")  # fmt: skip
    held = tuple(float(points.budgets[g]) for g in held_groups)
    first = min(held_groups) if held_groups else nb
    skipped = tuple(float(points.budgets[g]) for g in range(first, nb) if g not in held_groups)
    if skipped:
        notes.append(f"budget(s) {', '.join(f'{c:.3g}' for c in skipped)} left out (no interior "
                     "minimum; larger than the held-out one)")  # fmt: skip
    if first < 2:
        return Holdout(held, 0, 0, None, None, skipped=skipped,
                       reason=f"{first} budget(s) below the held-out one: the check needs ≥ 2"
                       + (f" ({nb} budget(s); holding out {k} needs ≥ {k + 2})"
                          if nb < k + 2 else ""))  # fmt: skip
    test = np.isin(points.group, held_groups)
    train, tested = points.subset(points.group < first), points.subset(test)
    mape = bias = l_err = n_ratio = a3_err = None
    observed = predicted = None
    reasons = []
    target = None  # the held-out budget's observed minimum: its windowed parabola's L*
    a2_test = None
    if spec.approach2.enabled:
        a2_test = fit_isoflop(tested, spec.approach2).parabolas[-1]
        if a2_test.status == "ok":
            target = a2_test.loss_opt
    if spec.approach3.enabled:
        try:
            a3 = fit_approach3(train, spec, starts=holdout_starts(spec, best))
            pred = a3.predict(tested.N, tested.D)
            rel = pred / tested.L - 1
            mape, bias = float(np.mean(np.abs(rel))), float(np.mean(rel))
            observed, predicted = tuple(map(float, tested.L)), tuple(map(float, pred))
            if target is not None:
                lstar = float(a3.optimal(a2_test.budget)[2][0])
                a3_err = lstar / target - 1 if np.isfinite(lstar) else None
        except ScalingError as e:
            reasons.append(f"approach 3: {e}")
    if a2_test is not None:
        a2_train = fit_isoflop(train, spec.approach2)
        if a2_train.n_opt is not None and a2_test.status == "ok":
            c = a2_test.budget
            l_err = float(a2_train.loss(c) / a2_test.loss_opt - 1)
            n_ratio = float(a2_train.n_opt(c) / a2_test.n_opt)
        else:
            reasons.append(
                "approach 2: " + (a2_train.reason or f"held-out budget: {a2_test.reason}")
            )
    return Holdout(held, len(train), len(tested), mape, bias, l_err, n_ratio,
                   "; ".join(notes + reasons) or None, skipped=skipped,
                   approach3_loss_error=a3_err, observed_loss_opt=target,
                   run_id=tuple(map(str, tested.run_id)) if observed else (),
                   observed=observed or (), predicted=predicted or ())  # fmt: skip
