"""Which approach to trust, and the calibrated intervals ``scaling fit`` reports: per method, the
rolling held-out checks of :mod:`scaling.fit.calibration` applied to its predictions.

    >>> from scaling.fit.trust import assess, trusted_approach
    >>> a = assess(method_fit, spec, seed=0)       # rolling checks, widened L* intervals, trust
    >>> [(t.C, t.trusted, t.disagree, t.reason) for t in a.trust]

Where the approaches' L* intervals at a budget do not overlap, they cannot both be right, and the
one to read is the one with the lower root-mean-square held-out error of L*, on the held-out budgets
both were scored on (:func:`held_out_record`): the out-of-sample record, not the in-sample fit, is
what says which extrapolation has held up on this sweep. ``scaling sweep --from-fit`` then re-centres
on that approach's N*(C) (:func:`with_assessment`), and memory-aware advice names its L*
(:func:`trusted_advice`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from scaling.fit.calibration import Calibration, RollingCheck, rolling_check
from scaling.fit.folds import APPROACHES, law_form, lever_arm
from scaling.fit.results import OptimalParams
from scaling.fit.spec import FitSpec


@dataclasses.dataclass(frozen=True)
class Trust:
    """Which approach's L*(C) to read at one budget."""

    C: float
    trusted: str | None
    disagree: bool
    """Some two approaches' intervals do not overlap."""
    intervals: dict[str, tuple[float, float]]
    record: dict[str, float]
    """Root-mean-square held-out log error per approach, on the folds all of them were scored on."""
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def held_out_record(
    calibrations: dict[str, Calibration], approaches
) -> tuple[dict[str, float], int]:
    """Root-mean-square held-out log error of L* per approach among ``approaches``, over the
    held-out budgets all of those with folds were scored on (so the records compare), and how many
    budgets that is."""
    scored = {a: {f.budget: f.log_error for f in calibrations[a].folds}
              for a in approaches if a in calibrations and calibrations[a].folds}  # fmt: skip
    common = set.intersection(*(set(v) for v in scored.values())) if scored else set()
    if not common:
        return {}, 0
    return {
        a: float(np.sqrt(np.mean([v[c] ** 2 for c in common]))) for a, v in scored.items()
    }, len(common)


def trusted_approach(
    C: float,
    predictions: dict[str, tuple[float, tuple[float, float] | None]],
    calibrations: dict[str, Calibration],
) -> Trust:
    """Which approach to read at compute ``C``, given each approach's (L*, interval) there (the
    widened intervals where they exist): the one with the better held-out record
    (:func:`held_out_record`). ``disagree`` says whether some two intervals fail to overlap (the
    choice then matters)."""
    iv = {a: v[1] for a, v in predictions.items() if v[1] is not None}
    names = sorted(iv)
    disagree = any(iv[a][1] < iv[b][0] or iv[b][1] < iv[a][0]
                   for i, a in enumerate(names) for b in names[i + 1 :])  # fmt: skip
    record, n = held_out_record(calibrations, predictions)
    head = "the approaches' intervals do not overlap" if disagree else "the intervals overlap"
    if not record:
        return Trust(float(C), None, disagree, iv, {},
                     f"{head}; no held-out budget on which every approach was scored")  # fmt: skip
    best = min(record, key=record.get)
    why = ", ".join(f"{a} {v:.2%}" for a, v in sorted(record.items(), key=lambda kv: kv[1]))
    if len(record) < len(predictions):
        lacking = ", ".join(sorted(set(predictions) - set(record)))
        return Trust(float(C), best, disagree, iv, record,
                     f"{head}; only {best} has a held-out record ({why}; none for "
                     f"{lacking})")  # fmt: skip
    return Trust(float(C), best, disagree, iv, record,
                 f"{head}; {best} has the better held-out record (RMS log error of L* over "
                 f"{n} held-out budget(s): {why})")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CalibratedPrediction:
    """A prediction's L* with its bootstrap and its calibrated interval."""

    C: float
    approach: str
    loss: float
    interval: tuple[float, float] | None
    calibrated: tuple[float, float] | None
    lever_arm: float
    """Decades of C from the centre of the fitted budgets."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Assessment:
    """One method's held-out record, its predictions' calibrated intervals and, per predicted
    budget, which approach to trust: what ``scaling fit`` reports beside each interval."""

    check: RollingCheck
    predictions: tuple[CalibratedPrediction, ...]
    trust: tuple[Trust, ...]

    def to_json(self) -> dict[str, Any]:
        return self.check.to_json() | {
            "predictions": [p.to_json() for p in self.predictions],
            "trust": [t.to_json() for t in self.trust],
        }


def forms_of(mf) -> dict[str, str | None]:
    """The law each approach of a MethodFit predicts with (:func:`law_form`): whose folds give τ."""
    return {a: law_form(mf, a) for a in APPROACHES}


def check_method(mf, spec: FitSpec, *, seed=0, min_train: int = 2, progress=None) -> RollingCheck:
    """:func:`rolling_check` on a MethodFit's points, each refit started from its approach-3 optimum,
    each approach's τ from the folds of the law it predicts with
    (:func:`scaling.fit.calibration.matching`)."""
    best = mf.approach3.theta if mf.approach3 is not None else None
    return rolling_check(mf.points, spec, min_train=min_train, seed=seed, progress=progress,
                         best=best, forms=forms_of(mf))  # fmt: skip


def assess(
    mf,
    spec: FitSpec,
    *,
    seed=0,
    min_train: int = 2,
    progress=None,
    check: RollingCheck | None = None,
) -> Assessment:
    """A MethodFit's predictions' L* intervals widened by its rolling ``check`` (default:
    :func:`check_method`; the sweep's, :func:`scaling.fit.calibration.pool_checks`, in ``scaling
    fit``), and :func:`trusted_approach` at every predicted budget."""
    if check is None:
        check = check_method(mf, spec, seed=seed, min_train=min_train, progress=progress)
    preds = []
    for q in mf.predictions:
        if q.approach not in APPROACHES or q.loss is None:
            continue
        d = lever_arm(q.C, mf.points.budgets)
        iv = q.ci.get("loss")
        cal = check.calibrations.get(q.approach)
        widened = cal.interval(q.loss, iv, d) if cal is not None else iv
        preds.append(CalibratedPrediction(q.C, q.approach, q.loss, iv, widened, d))
    trust = []
    for c in sorted({p.C for p in preds}):
        here = {p.approach: (p.loss, p.calibrated) for p in preds if p.C == c}
        if len(here) > 1:
            trust.append(trusted_approach(c, here, check.calibrations))
    return Assessment(check, tuple(preds), tuple(trust))


def with_assessment(mf, a: Assessment):
    """``mf`` (a MethodFit) with its assessment: each prediction's ``ci["loss_calibrated"]``, and
    ``optimal_params`` (what ``scaling sweep --from-fit`` reads) taken from the approach to trust
    where the approaches' L* disagree beyond their intervals at a predicted budget (the largest
    such) and that approach's N*(C) law is identified; a note says so."""
    widened = {(p.C, p.approach): p.calibrated for p in a.predictions if p.calibrated}
    preds = tuple(
        dataclasses.replace(q, ci=q.ci | {"loss_calibrated": widened[(q.C, q.approach)]})
        if (q.C, q.approach) in widened
        else q
        for q in mf.predictions
    )
    opt, notes = mf.optimal_params, list(mf.notes)
    split = [t for t in a.trust if t.disagree and t.trusted]
    if split and opt is not None:
        t = max(split, key=lambda t: t.C)
        fit = getattr(mf, t.trusted, None)
        law = getattr(fit, "n_opt", None)
        if t.trusted != opt.source and law is not None and not mf.identification.get(t.trusted):
            notes.append(f"optimal_params: {t.trusted}'s N*(C) rather than {opt.source}'s — at "
                         f"C={t.C:.3g} {t.reason}")  # fmt: skip
            opt = OptimalParams(law.A, law.a, t.trusted, opt.n, law.ci)
    return dataclasses.replace(mf, predictions=preds, optimal_params=opt, calibration=a,
                               notes=tuple(notes))  # fmt: skip


def trusted_advice(entry: dict[str, Any], methods: dict) -> dict[str, Any]:
    """A memory-aware advice entry (:func:`scaling.fit.advice.advise`, which ranks configurations by
    approach 3's L(N, D)) with the approach to trust at its budget; where approach 3's L* disagrees
    with a better-recorded approach beyond their intervals, that approach's L* and calibrated
    interval are what the advice's loss should be read against (``trusted_loss``)."""
    a = getattr(methods.get(entry["method"]), "calibration", None)
    t = (
        next((t for t in a.trust if math.isclose(t.C, entry["C"], rel_tol=1e-9)), None)
        if a
        else None
    )
    if t is None:
        return entry
    out = entry | {"trusted": t.to_json()}
    if t.disagree and t.trusted not in (None, "approach3"):
        p = next(p for p in a.predictions if p.C == t.C and p.approach == t.trusted)
        out["trusted_loss"] = {"approach": p.approach, "loss": p.loss,
                               "ci": list(p.calibrated) if p.calibrated else None}  # fmt: skip
    return out
