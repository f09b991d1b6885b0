"""Calibrated extrapolation: rolling-origin folds, the discrepancy widening, which approach to trust,
and the measured coverage of bootstrap vs calibrated intervals on synthetic sweeps from laws the
fitter assumes and from laws it does not."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import numpy as np
import polars as pl
import pytest
import scipy.stats

from scaling import fit
from scaling.fit import coverage
from scaling.fit.bootstrap import fit_method
from scaling.fit.calibration import (
    RollingCheck,
    calibrate,
    discrepancy,
    matching,
    pool_checks,
    pooled_tau,
    rolling_check,
    widen,
)
from scaling.fit.folds import Fold, lever_arm, observed_spreads, rolling_folds
from scaling.fit.holdout import holdout
from scaling.fit.isoflop import fit_isoflop
from scaling.fit.lbfgs import single_threaded_blas
from scaling.fit.points import Columns
from scaling.fit.report import clean_json, summary
from scaling.fit.spec import FitSpec
from scaling.fit.trust import Trust, assess, trusted_approach, with_assessment

TINY = {"alpha": [0.25, 0.75], "e": [0.0, 1.0], "a": [0.0, 10.0]}
"""32 starts: enough for these sweeps (the same optimum as Chinchilla-style grids), fast."""


def fast_spec(**over) -> FitSpec:
    return FitSpec.from_dict(
        {"approach3": TINY, "bootstrap": {"resamples": 40, "starts": 0}} | over
    )


def fold(error, spread, *, budget=10.0, centre=10**0.5, approach="approach3", form=None, obs=None):
    """A fold with log error ``error`` and a symmetric bootstrap interval of log sd ``spread``,
    log10(budget / centre) decades from the centre of its fitted budgets; ``obs``: the observed
    optimum's own log sd."""
    z = scipy.stats.norm.ppf(0.975)
    observed = 2.0
    pred = observed * math.exp(error)
    iv = (pred * math.exp(-z * spread), pred * math.exp(z * spread))
    return Fold(approach, budget, centre, centre, 2, observed, pred, iv, form=form,
                observed_spread=obs)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The discrepancy and the widened interval


def test_discrepancy_is_the_error_beyond_the_bootstrap_spread_per_decade():
    folds = [fold(0.03, 0.01), fold(-0.04, 0.02, budget=100.0, centre=10.0)]
    tau, k = discrepancy(folds, 0.95)
    expected = (0.03**2 - 0.01**2 + 0.04**2 - 0.02**2) / (0.5**2 + 1.0**2)
    assert k == 2 and tau == pytest.approx(math.sqrt(expected), rel=1e-6)
    # errors within the bootstrap's own spread: nothing to add
    assert discrepancy([fold(0.005, 0.02), fold(-0.01, 0.02)], 0.95) == (0.0, 2)
    assert discrepancy([], 0.95) == (None, 0)
    # the observed optimum's own spread is the observation's noise, not the law's discrepancy
    noisy = [fold(0.03, 0.01, obs=0.005), fold(-0.04, 0.02, budget=100.0, centre=10.0, obs=0.01)]
    expected = (0.03**2 - 0.01**2 - 0.005**2 + 0.04**2 - 0.02**2 - 0.01**2) / (0.5**2 + 1.0**2)
    assert discrepancy(noisy, 0.95)[0] == pytest.approx(math.sqrt(expected), rel=1e-6)


def test_widening_adds_the_discrepancy_with_a_student_t_quantile():
    iv = (1.9, 2.2)  # asymmetric around 2.0
    assert widen(2.0, iv, 0.0, 3, 0.5, 0.95) == iv  # τ = 0: the bootstrap interval unchanged
    lo, hi = widen(2.0, iv, 0.02, 2, 0.5, 0.95)
    assert lo < iv[0] and hi > iv[1]
    assert math.log(hi / 2.0) > math.log(2.0 / lo)  # the longer side stays longer
    # With no bootstrap spread the interval is a t with K degrees of freedom around the prediction.
    lo, hi = widen(2.0, (2.0, 2.0), 0.02, 3, 1.0, 0.95)
    q = scipy.stats.t.ppf(0.975, 3)
    assert math.log(hi / 2.0) == pytest.approx(q * 0.02, rel=1e-9)
    assert math.log(2.0 / lo) == pytest.approx(q * 0.02, rel=1e-9)
    # more folds behind τ, a smaller quantile; further out, a wider interval
    few, many = widen(2.0, iv, 0.02, 1, 0.5, 0.95), widen(2.0, iv, 0.02, 8, 0.5, 0.95)
    assert few[1] - few[0] > many[1] - many[0]
    near, far = widen(2.0, iv, 0.02, 3, 0.3, 0.95), widen(2.0, iv, 0.02, 3, 1.0, 0.95)
    assert far[1] - far[0] > near[1] - near[0]
    # the interval of an observed optimum adds its own spread, known: with τ = 0 a normal quantile
    z = scipy.stats.norm.ppf(0.975)
    lo, hi = widen(2.0, (2.0 * math.exp(-z * 0.01), 2.0 * math.exp(z * 0.01)), 0.0, 2, 1.0, 0.95,
                   0.01)  # fmt: skip
    assert math.log(hi / 2.0) == pytest.approx(z * math.hypot(0.01, 0.01), rel=1e-9)
    lo, hi = widen(2.0, (2.0, 2.0), 0.02, 3, 1.0, 0.95, 0.01)  # and with τ, in quadrature
    nu = (0.01**2 + 0.02**2) ** 2 / (0.02**4 / 3)
    assert math.log(hi / 2.0) == pytest.approx(
        scipy.stats.t.ppf(0.975, nu) * math.hypot(0.01, 0.02)
    )


def test_calibration_reports_coverage_record_and_leave_one_out_coverage():
    folds = [fold(0.03, 0.005), fold(0.002, 0.005, budget=20.0), fold(-0.025, 0.005, budget=40.0),
             fold(0.01, 0.005, approach="approach2")]  # fmt: skip
    cal = calibrate(folds, "approach3", 0.95)
    assert len(cal.folds) == 3 and cal.dof == 3
    assert cal.coverage == pytest.approx(1 / 3)  # only the 0.002 error lies inside ±1.96·0.005
    assert cal.rmse == pytest.approx(math.sqrt((0.03**2 + 0.002**2 + 0.025**2) / 3))
    assert cal.bias == pytest.approx((0.03 + 0.002 - 0.025) / 3)
    assert cal.calibrated_coverage is not None and cal.calibrated_coverage > cal.coverage
    f = cal.folds[0]
    assert f.covered is False and cal.interval(f.predicted, f.interval, 0.5)[0] <= f.observed
    assert cal.interval(f.predicted, f.interval, 0.0) == f.interval  # inside the fitted range
    js = cal.to_json()
    assert js["tau_per_decade"] == cal.tau and len(js["folds"]) == 3
    assert js["folds"][0]["covered"] is False and js["folds"][0]["distance"] == pytest.approx(0.5)


def test_tau_comes_from_the_folds_of_the_law_the_prediction_is_made_with():
    """Approach 2's E = 0 folds miss by more than its saturating law does: their errors do not widen
    a saturating prediction; approach 3's folds (its L(N, D) implies a saturating L*(C)) do, with
    approach 2's own saturating folds once there are any."""
    power = [fold(0.05, 0.005, approach="approach2", form="power"),
             fold(0.04, 0.005, budget=20.0, approach="approach2", form="power")]  # fmt: skip
    a3 = [fold(0.01, 0.005, form="chinchilla"), fold(-0.012, 0.005, budget=20.0, form="chinchilla")]
    sat = fold(0.008, 0.005, budget=30.0, approach="approach2", form="saturating")
    # any law: every approach-2 fold, as before
    anyl = calibrate(power + a3, "approach2", 0.95)
    assert anyl.tau == pytest.approx(discrepancy(power, 0.95)[0]) and anyl.dof == 2
    # a saturating prediction with no saturating approach-2 fold: approach 3's folds
    cal = calibrate(power + a3, "approach2", 0.95, "saturating")
    assert cal.tau == pytest.approx(discrepancy(a3, 0.95)[0]) and cal.tau < anyl.tau
    assert cal.tau_folds == "approach3's folds of the saturating L*(C) law" and cal.dof == 2
    assert len(cal.folds) == 2 and cal.rmse == anyl.rmse  # the record stays approach 2's own
    # ... and with its own saturating fold once it has one
    own = calibrate(power + a3 + [sat], "approach2", 0.95, "saturating")
    assert own.tau == pytest.approx(discrepancy([sat] + a3, 0.95)[0]) and own.dof == 3
    assert own.tau_folds.startswith("approach2 and approach3's folds")
    # a power prediction: the power folds; approach 3 is scored on its own folds only
    assert calibrate(power + a3, "approach2", 0.95, "power").tau == anyl.tau
    a3cal = calibrate(power + a3 + [sat], "approach3", 0.95, "chinchilla")
    assert a3cal.tau == pytest.approx(discrepancy(a3, 0.95)[0]) and a3cal.dof == 2
    js = cal.to_json()
    assert js["form"] == "saturating" and js["tau_folds"] == cal.tau_folds
    assert [f["form"] for f in js["folds"]] == ["power", "power"]


def test_a_method_takes_the_sweeps_tau_where_its_own_folds_show_less():
    """Two folds of one method can miss a bend (τ̂ = 0: the first fold's wide bootstrap cancels the
    second's miss); the sweep's other methods' folds of the same approach and law show it."""
    a3 = functools.partial(fold, form="chinchilla")
    quiet = [a3(0.001, 0.02), a3(0.02, 0.005, budget=20.0)]  # e² − s² sums below zero
    assert discrepancy(quiet, 0.95) == (0.0, 2)
    bent = {"b": [a3(0.03, 0.005), a3(0.04, 0.005, budget=20.0)],
            "c": [a3(0.025, 0.005), a3(0.035, 0.005, budget=20.0),
                  fold(0.5, 0.005, approach="approach2", form="power")]}  # fmt: skip
    tau, k, source, own = pooled_tau(quiet, "approach3", 0.95, "chinchilla", bent)
    every = quiet + bent["b"] + bent["c"][:2]
    assert own == 0.0 and (tau, k) == pytest.approx(discrepancy(every, 0.95)) and k == 6
    assert source == (
        "approach3's folds of the saturating L*(C) law, pooled over all 3 methods "
        "(its own alone: τ = 0.00%)"
    )
    cal = calibrate(quiet, "approach3", 0.95, "chinchilla", bent)
    assert cal.tau == tau and cal.tau_own == 0.0 and cal.dof == 6
    assert cal.folds == tuple(quiet) and cal.rmse == calibrate(quiet, "approach3", 0.95).rmse
    assert cal.to_json()["tau_own_per_decade"] == 0.0
    # a method whose own folds show more than the sweep's keeps its own
    loud = [a3(0.08, 0.005), a3(0.1, 0.005, budget=20.0)]
    tau, k, source, own = pooled_tau(loud, "approach3", 0.95, "chinchilla", bent)
    assert (
        (tau, k) == discrepancy(loud, 0.95)
        and own == tau
        and "all 3 methods' folds give no more: τ = " in source
    )
    # nothing to pool: the method's own
    assert pooled_tau(quiet, "approach3", 0.95, "chinchilla", {"b": []})[:2] == (0.0, 2)
    # leave-one-out coverage leaves the fold's budget out of every method's folds
    wide = calibrate(quiet, "approach3", 0.95, "chinchilla", bent)
    alone = calibrate(quiet, "approach3", 0.95, "chinchilla")
    assert wide.calibrated_coverage == 1.0 and alone.calibrated_coverage == 0.5
    lone = {"b": [a3(0.04, 0.005, budget=20.0)]}  # only at the missed fold's own budget
    assert calibrate(quiet, "approach3", 0.95, "chinchilla", lone).calibrated_coverage == 0.5


def test_pool_checks_recalibrates_every_method_against_the_sweep():
    a3 = functools.partial(fold, form="chinchilla")
    f = {"quiet": (a3(0.001, 0.02), a3(0.02, 0.005, budget=20.0)),
         "bent": (a3(0.03, 0.005), a3(0.04, 0.005, budget=20.0))}  # fmt: skip
    checks = {m: RollingCheck(m, 0.95, v, {"approach3": calibrate(v, "approach3", 0.95)})
              for m, v in f.items()}  # fmt: skip
    out = pool_checks(checks, {m: {"approach3": "chinchilla"} for m in f})
    assert out["quiet"].folds == f["quiet"] and out["quiet"].method == "quiet"
    assert checks["quiet"].calibrations["approach3"].tau == 0.0
    pooled = discrepancy(f["quiet"] + f["bent"], 0.95)[0]
    assert pooled > 0 and out["quiet"].calibrations["approach3"].tau == pytest.approx(pooled)
    assert out["bent"].calibrations["approach3"].tau == checks["bent"].calibrations["approach3"].tau
    assert out["bent"].calibrations["approach3"].tau > pooled


def test_the_approach_with_the_better_held_out_record_is_trusted():
    cals = {"approach3": calibrate([fold(0.04, 0.004), fold(0.05, 0.004, budget=20.0)],
                                   "approach3", 0.95),
            "approach2": calibrate([fold(0.01, 0.01, approach="approach2"),
                                    fold(-0.01, 0.01, budget=20.0, approach="approach2")],
                                   "approach2", 0.95)}  # fmt: skip
    t = trusted_approach(1e21, {"approach3": (2.5, (2.45, 2.55)),
                                "approach2": (2.3, (2.25, 2.35))}, cals)  # fmt: skip
    assert t.disagree and t.trusted == "approach2"
    assert t.record["approach2"] == pytest.approx(0.01) and "do not overlap" in t.reason
    assert "approach2 1.00%, approach3 4.53%" in t.reason
    t = trusted_approach(1e21, {"approach3": (2.5, (2.3, 2.6)),
                                "approach2": (2.4, (2.25, 2.45))}, cals)  # fmt: skip
    assert not t.disagree and t.trusted == "approach2" and "overlap" in t.reason
    # records on different budgets are not compared
    lone = {"approach3": cals["approach3"],
            "approach2": calibrate([fold(0.0, 0.01, budget=99.0, approach="approach2")],
                                   "approach2", 0.95)}  # fmt: skip
    t = trusted_approach(1e21, {"approach3": (2.5, (2.45, 2.55)), "approach2": (2.3, None)}, lone)
    assert t.trusted is None and "no held-out budget" in t.reason


# --------------------------------------------------------------------------------------------------
# Rolling-origin folds through the real fit


@pytest.fixture(scope="module")
def sweep_folds():
    points = coverage.sweep(0)
    spec = fast_spec()
    with single_threaded_blas():
        return points, spec, rolling_folds(points, spec, seed=0)


def test_rolling_folds_fit_the_smaller_budgets_and_predict_the_next(sweep_folds):
    points, spec, folds = sweep_folds
    nb = len(points.budgets)
    assert [f.budget for f in folds if f.approach == "approach3"] == list(points.budgets[2:])
    parabolas = fit_isoflop(points, spec.approach2).parabolas
    for f in folds:
        g = int(np.argmin(np.abs(points.budgets - f.budget)))
        assert f.n_train_budgets == g and f.train_max == pytest.approx(points.budgets[g - 1])
        assert f.observed == pytest.approx(parabolas[g].loss_opt)
        # the lever arm: decades from the centre of the fitted budgets
        assert f.distance == pytest.approx(np.log10(f.budget) - np.log10(points.budgets[:g]).mean())
        assert f.distance == pytest.approx(lever_arm(f.budget, points.budgets[:g]))
        assert f.predicted is not None and f.interval is not None and f.reason is None
        assert abs(f.log_error) < 0.05
        assert f.observed_spread == observed_spreads(points, spec, 0)[g]
    assert {f.form for f in folds if f.approach == "approach2"} == {"power", "saturating"}
    # The last fold is the leave-the-largest-budget-out check: the same observed optimum and the
    # same approach-2 error as the held-out check's.
    h = holdout(points, spec)
    last = {f.approach: f for f in folds if f.budget == points.budgets[nb - 1]}
    assert last["approach2"].observed == pytest.approx(h.observed_loss_opt)
    assert last["approach2"].error == pytest.approx(h.approach2_loss_error, rel=1e-6)
    assert last["approach3"].error == pytest.approx(h.approach3_loss_error, abs=1e-3)


def test_observed_spread_is_the_parabola_minimum_s_own_noise():
    """The run bootstrap's spread of a budget's observed optimum: about the runs' noise over the
    square root of the points its parabola is fitted to, and halving with that noise."""
    spec = fast_spec(bootstrap={"resamples": 200})
    wide = observed_spreads(coverage.sweep(0, noise=0.01), spec, 0)
    narrow = observed_spreads(coverage.sweep(0, noise=0.005), spec, 0)
    assert sorted(wide) == sorted(narrow) == list(range(len(coverage.BUDGETS)))
    ratio = np.median([wide[g] / narrow[g] for g in wide])
    assert 1.6 < ratio < 2.5, ratio
    assert all(0.001 < v < 0.01 for v in narrow.values()), narrow  # 7 runs of 0.5% noise each
    assert observed_spreads(coverage.sweep(0), fast_spec(bootstrap={"resamples": 0})) == {}


def test_rolling_check_says_why_there_is_nothing_to_check():
    spec = fast_spec()
    points = coverage.sweep(0, budgets=(1e18, 1e19))
    check = rolling_check(points, spec)
    assert check.folds == () and "budget(s) below it" in check.reason
    assert check.calibrations["approach3"].reason == "no held-out fold"
    off = rolling_check(points, fast_spec(approach2={"enabled": False}))
    assert "approach 2 is disabled" in off.reason and off.to_json()["calibrations"] == {}


def test_assess_widens_the_predictions_and_names_the_approach_to_trust():
    """A sweep of under-trained runs: approach 3's held-out record is the worse one."""
    points = coverage.sweep(1, budgets=coverage.BUDGETS[:4], undertrained=coverage.UNDERTRAINED)
    spec = fast_spec(predict=[1e21])
    with single_threaded_blas():
        mf, _ = fit_method(points, spec, seed=0)
        a = assess(mf, spec, seed=0)
    assert len(a.check.folds) == 4  # 2 held-out budgets × 2 approaches
    assert {p.approach for p in a.predictions} == {"approach3", "approach2"}
    for p in a.predictions:
        tau = a.check.calibrations[p.approach].tau
        assert p.lever_arm == pytest.approx(lever_arm(1e21, points.budgets))
        assert p.calibrated[0] <= p.interval[0] <= p.loss <= p.interval[1] <= p.calibrated[1]
        assert (p.calibrated != p.interval) == (tau > 0)
    (t,) = a.trust
    assert t.C == 1e21 and t.trusted == min(t.record, key=t.record.get) == "approach2"
    assert "held-out record" in t.reason
    assert json.loads(json.dumps(a.to_json()))["trust"][0]["trusted"] == "approach2"


def test_disagreeing_approaches_hand_from_fit_the_trusted_law():
    points = coverage.sweep(1, budgets=coverage.BUDGETS[:4], undertrained=coverage.UNDERTRAINED)
    spec = fast_spec(predict=[1e21])
    with single_threaded_blas():
        mf, _ = fit_method(points, spec, seed=0)
        a = assess(mf, spec, seed=0)
    source = mf.optimal_params.source
    other = "approach3" if source == "approach2" else "approach2"
    assert not mf.identification[other]
    split = Trust(1e21, other, True, {}, {}, "the approaches' intervals do not overlap; ...")
    out = with_assessment(mf, dataclasses.replace(a, trust=(split,)))
    law = getattr(mf, other).n_opt
    assert out.optimal_params.source == other and out.optimal_params.A == law.A
    assert any(n.startswith(f"optimal_params: {other}'s N*(C) rather than {source}'s")
               for n in out.notes)  # fmt: skip
    for q in out.predictions:  # the calibrated intervals ride along in fits.json
        if q.approach in ("approach2", "approach3"):
            assert "loss_calibrated" in q.ci and "loss_calibrated" in q.to_json()["ci"]
    # overlapping intervals: the default source stays
    agree = with_assessment(mf, dataclasses.replace(a, trust=(dataclasses.replace(split,
                                                                                  disagree=False),)))  # fmt: skip
    assert agree.optimal_params.source == source


def test_scaling_fit_reports_the_rolling_check():
    pts = coverage.sweep(2, budgets=coverage.BUDGETS[:4])
    table = pl.DataFrame({"N": pts.N, "D": pts.D, "C": pts.C, "L": pts.L,
                          "budget": pts.budgets[pts.group]})  # fmt: skip
    spec = fast_spec(predict=[1e21])
    report = fit.fit(table, spec, Columns(params="N", tokens="D", loss="L", flops="C",
                                          budget="budget"))  # fmt: skip
    mf = report.methods["all"]
    assert mf.calibration is not None and len(mf.calibration.check.folds) == 4
    text = summary(report)
    assert "rolling held-out check" in text and "bootstrap intervals held" in text
    assert "which approach to trust" in text and "calibrated" in text
    assert "τ from two held-out budgets or fewer per method is a rough guide" in text  # 4 budgets
    assert "fold(s) (approach3's folds of the saturating L*(C) law)" in text  # which folds τ uses
    js = clean_json(report.to_json())["methods"]["all"]["calibration"]
    assert set(js["calibrations"]) == {"approach3", "approach2"}
    assert js["predictions"][0]["calibrated"] is not None
    off = fit.fit(table, fast_spec(holdout={"rolling": False}),
                  Columns(params="N", tokens="D", loss="L", flops="C", budget="budget"))  # fmt: skip
    assert off.methods["all"].calibration is None
    assert "two held-out budgets or fewer" not in summary(off)


def test_scaling_fit_pools_the_methods_folds_for_tau():
    """Two methods of one bending sweep: each method's τ is the larger of its own folds' and both
    methods' (``holdout.pool``); with pooling off, its own. The folds and records stay its own."""
    parts = []
    for m in (0, 1):
        pts = coverage.sweep(
            3, method=m, budgets=coverage.BUDGETS[:4], curvature=coverage.CURVATURE
        )
        parts.append(pl.DataFrame({"method": f"m{m}", "N": pts.N, "D": pts.D, "C": pts.C,
                                   "L": pts.L, "budget": pts.budgets[pts.group]}))  # fmt: skip
    cols = Columns(params="N", tokens="D", loss="L", flops="C", budget="budget", method="method")
    table = pl.concat(parts)
    spec = fast_spec(predict=[1e21], joint={"enabled": False})
    pooled = fit.fit(table, spec, cols)
    alone = fit.fit(table, fast_spec(predict=[1e21], joint={"enabled": False},
                                     holdout={"pool": False}), cols)  # fmt: skip
    raised = 0
    for m in ("m0", "m1"):
        p, a = pooled.methods[m].calibration, alone.methods[m].calibration
        assert p.check.folds == a.check.folds  # the same refits
        for name, c in p.check.calibrations.items():
            own = a.check.calibrations[name]
            every = (
                a.check.folds + alone.methods["m1" if m == "m0" else "m0"].calibration.check.folds
            )
            sweep = discrepancy(matching(every, name, c.form)[0], 0.95)[0]
            assert c.tau_own == own.tau and c.rmse == own.rmse
            assert c.tau == pytest.approx(max(own.tau, sweep))
            raised += c.tau > own.tau
            if c.tau > own.tau:
                assert "pooled over all 2 methods (its own alone: τ = " in c.tau_folds
                assert c.dof == 4 and c.tau_folds in summary(pooled)
        for q in p.predictions:  # widened by the pooled τ, at its folds' degrees of freedom
            c = p.check.calibrations[q.approach]
            assert q.calibrated == widen(q.loss, q.interval, c.tau, c.dof, q.lever_arm, 0.95)
    assert raised >= 1  # two methods' τ differ: the lower one takes the sweep's
    assert "cannot see it, even pooled over methods," in summary(pooled)  # 4 budgets: 2 folds
    assert "cannot see it and the calibrated" in summary(alone)


def test_advice_names_the_trusted_loss_where_approach3_is_outvoted():
    from types import SimpleNamespace

    from scaling.fit.trust import Assessment, CalibratedPrediction, trusted_advice

    preds = (CalibratedPrediction(1e21, "approach3", 2.5, (2.45, 2.55), (2.44, 2.56), 1.0),
             CalibratedPrediction(1e21, "approach2", 2.3, (2.26, 2.34), (2.2, 2.4), 1.0))  # fmt: skip
    split = Trust(1e21, "approach2", True, {}, {"approach2": 0.01}, "do not overlap")
    a = Assessment(rolling_check(coverage.sweep(0, budgets=(1e18, 1e19)), fast_spec()), preds,
                   (split,))  # fmt: skip
    methods = {"m": SimpleNamespace(calibration=a)}
    entry = {"method": "m", "C": 1e21, "best_fitting": {}, "unconstrained": {}}
    out = trusted_advice(entry, methods)
    assert out["trusted"]["trusted"] == "approach2"
    assert out["trusted_loss"] == {"approach": "approach2", "loss": 2.3, "ci": [2.2, 2.4]}
    agree = Assessment(a.check, preds, (dataclasses.replace(split, disagree=False),))
    out = trusted_advice(entry, {"m": SimpleNamespace(calibration=agree)})
    assert "trusted_loss" not in out and out["trusted"]["disagree"] is False
    assert trusted_advice(entry | {"C": 1e22}, methods) == entry | {"C": 1e22}


def test_one_approach_with_a_record_is_named_as_the_only_one():
    cals = {"approach3": calibrate([fold(0.04, 0.004)], "approach3", 0.95)}
    t = trusted_approach(1e21, {"approach3": (2.5, (2.4, 2.6)), "approach2": (2.5, (2.4, 2.6))},
                         cals)  # fmt: skip
    assert t.trusted == "approach3" and "only approach3 has a held-out record" in t.reason
    assert "none for approach2" in t.reason and not t.disagree


# --------------------------------------------------------------------------------------------------
# Coverage on synthetic sweeps: nominal 95% intervals of the held-out last budget's L*


SEEDS = range(8)


@pytest.fixture(scope="module")
def suites():
    with single_threaded_blas():
        return {s: coverage.measure(s, seeds=SEEDS, spec=fast_spec()) for s in coverage.SUITES}


def test_well_specified_coverage_stays_near_nominal_and_not_needlessly_wide(suites):
    r = suites["well_specified"]
    msg = r.line("approach3") + "; " + r.line("approach2")
    print(msg)
    assert r.n["approach3"] == 3 * len(SEEDS), msg  # three methods per sweep
    assert r.calibrated["approach3"] >= 0.8, msg
    # the law holds: little to add beyond the observed optimum's own noise
    assert r.tau_ratio["approach3"] < 1.3, msg
    assert r.calibrated["approach2"] >= 0.8, msg
    # approach 2's saturating prediction is widened by saturating laws' folds, not by its E = 0
    # folds' misses (×2.4 before)
    assert r.width_ratio["approach2"] <= 1.3, msg


def test_misspecified_coverage_reaches_nominal_where_the_bootstrap_falls_short(suites):
    lines = []
    for name in ("curvature", "undertrained"):
        r = suites[name]
        lines += [r.line("approach3"), r.line("approach2")]
    msg = "; ".join(lines)
    print(msg)
    a3 = [t for s in ("curvature", "undertrained") for t in suites[s].trials
          if t.approach == "approach3"]  # fmt: skip
    plain = np.mean([t.covered for t in a3])
    calibrated = np.mean([t.covered_calibrated for t in a3])
    alone = np.mean([t.covered_own for t in a3])
    assert plain <= 0.6, msg  # tight intervals around a law that does not hold
    # two folds per method: τ from the sweep's six where a method's own two show less (79% on the
    # curvature suite from its own folds alone, measured)
    assert calibrated >= 0.9 and calibrated >= alone, msg
    for name in ("curvature", "undertrained"):
        assert suites[name].calibrated["approach3"] > suites[name].coverage["approach3"], msg
        assert suites[name].calibrated["approach3"] >= 0.85, msg


def test_a_coverage_trial_without_pooling_calibrates_each_method_from_its_own_folds():
    sweeps = [coverage.sweep(4, method=m, budgets=coverage.BUDGETS[:4]) for m in (0, 1)]
    with single_threaded_blas():
        trials = coverage.trial(sweeps, fast_spec(holdout={"pool": False}), 4)
    assert {t.method for t in trials} == {"synthetic", "synthetic1"}
    assert all(t.own == t.calibrated for t in trials)


@pytest.mark.slow
def test_coverage_reaches_nominal_with_four_calibration_folds():
    """Seven budgets: four rolling folds per method calibrate the held-out last budget
    (bench/coverage.py runs this over more seeds)."""
    budgets = tuple(np.logspace(18, 21, 7))
    kw = {"well_specified": {}, "curvature": {"curvature": coverage.CURVATURE},
          "undertrained": {"undertrained": coverage.UNDERTRAINED}}  # fmt: skip
    with single_threaded_blas():
        r = {s: coverage.measure(lambda seed, m, k=k: coverage.sweep(seed, method=m,
                                                                     budgets=budgets, **k),
                                 seeds=range(100, 108), spec=fast_spec(), name=s)
             for s, k in kw.items()}  # fmt: skip
    msg = "; ".join(r[s].line(a) for s in r for a in r[s].n)
    print(msg)
    well = r["well_specified"]
    assert well.calibrated["approach3"] >= 0.85 and well.tau_ratio["approach3"] < 1.5, msg
    assert well.width_ratio["approach2"] <= 1.3, msg
    for s in ("curvature", "undertrained"):
        assert r[s].coverage["approach3"] <= 0.5, msg
        assert r[s].calibrated["approach3"] >= 0.9, msg
    for s in r:
        assert r[s].calibrated["approach2"] >= 0.85, msg


@pytest.mark.slow
def test_well_specified_five_budget_intervals_are_not_needlessly_wide_over_many_seeds():
    """Five budgets, 8 more seeds of three methods: both approaches' calibrated intervals of the
    observed optimum hold it about as often as asked, and stay within twice the interval the
    observation's own spread gives (approach 2's saturating prediction was ×2.4 the bootstrap width
    when its E = 0 folds widened it). On these seeds the bootstrap intervals of L* held 71% (approach
    3), and the pooled folds show it: the widening here is τ's, not an artefact."""
    with single_threaded_blas():
        r = coverage.measure("well_specified", seeds=range(200, 208), spec=fast_spec())
    msg = r.line("approach3") + "; " + r.line("approach2")
    print(msg)
    assert r.tau_ratio["approach3"] < 2 and r.tau_ratio["approach2"] < 2, msg
    assert r.calibrated["approach3"] >= 0.85 and r.calibrated["approach2"] >= 0.85, msg
