"""Joint laws recover known parameters from synthetic sweeps, and the held-out comparison picks the
form that generated the data."""

from __future__ import annotations

import numpy as np
import pytest

from scaling.errors import ScalingError
from scaling.fit.joint import fit_form, fit_joint, forms_for
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec

BUDGETS = np.geomspace(3e10, 1e12, 4)
SIZES = np.geomspace(8e4, 2e6, 6)


def sweep(law, *, ranks=(None,), noise=0.003, seed=0):
    """A backbone ladder × budgets (× PEFT sizes) sweep, C = 3·X·D, losses from ``law``."""
    rng = np.random.default_rng(seed)
    rows = [(x, c, g, r) for g, c in enumerate(BUDGETS) for x in SIZES for r in ranks]
    X = np.array([r[0] for r in rows])
    C = np.array([r[1] for r in rows])
    group = np.array([r[2] for r in rows])
    P = None if ranks == (None,) else np.array([r[3] for r in rows], dtype=float)
    D = C / (3 * X)
    L = law(X, D, P) * np.exp(rng.normal(0, noise, len(X)))
    ids = np.array([f"r{i}" for i in range(len(X))], dtype=object)
    return Points("m", ids, X, D, C, L, group, BUDGETS.copy(), "backbone", P)


MULT = dict(E=0.4, A=60.0, alpha=0.3, beta=0.25)
ADD = dict(E=0.5, A=40.0, alpha=0.35, B=25.0, beta=0.3)


def mult(X, D, P=None):
    return MULT["E"] + MULT["A"] * X ** -MULT["alpha"] * D ** -MULT["beta"]


def add(X, D, P=None):
    return ADD["E"] + ADD["A"] * X ** -ADD["alpha"] + ADD["B"] * D ** -ADD["beta"]


@pytest.mark.parametrize(
    "form, law, truth", [("multiplicative", mult, MULT), ("additive", add, ADD)]
)
def test_each_form_recovers_its_parameters(form, law, truth):
    p = sweep(law, noise=0.002)
    fit = fit_form(form, {"X": p.N, "D": p.D}, p.L)
    assert fit.bound_hits == ()
    for key in ("E", "alpha", "beta"):
        assert fit.params[key] == pytest.approx(truth[key], rel=0.1), key
    assert np.abs(fit.predict(p.N, p.D) / p.L - 1).max() < 0.02


def test_exact_data_is_recovered_exactly():
    p = sweep(mult, noise=0.0)
    fit = fit_form("multiplicative", {"X": p.N, "D": p.D}, p.L)
    for key, value in MULT.items():
        assert fit.params[key] == pytest.approx(value, rel=1e-3), key
    assert fit.isoflop_direction == "largest"  # α > β: the largest backbone along an isoFLOP line


def test_three_variable_form_recovers_the_peft_exponent():
    truth = dict(E=0.45, A=30.0, alpha=0.25, gamma=0.15, beta=0.2)

    def law(X, D, P):
        return (
            truth["E"]
            + truth["A"] * X ** -truth["alpha"] * P ** -truth["gamma"] * D ** -truth["beta"]
        )

    p = sweep(law, ranks=(1e3, 1e4, 1e5), noise=0.0)
    assert forms_for(p) == ["additive", "multiplicative", "additive+peft", "multiplicative+peft"]
    fit = fit_form("multiplicative+peft", {"X": p.N, "D": p.D, "P": p.P}, p.L)
    for key, value in truth.items():
        assert fit.params[key] == pytest.approx(value, rel=1e-3), key


@pytest.mark.parametrize("law, preferred", [(mult, "multiplicative"), (add, "additive")])
def test_held_out_error_prefers_the_generating_form(law, preferred):
    j = fit_joint(sweep(law), FitSpec())
    assert j.preferred == preferred, j.reason
    by = {f.form: f for f in j.fits}
    assert by[preferred].holdout_mape < 0.01
    assert all(f.holdout_mape is not None for f in j.fits)
    assert j.to_json()["forms"][preferred]["holdout_mape"] == by[preferred].holdout_mape


def test_peft_forms_only_when_peft_size_varies_apart_from_the_backbone():
    fixed_rule = sweep(mult)  # one PEFT size per backbone (P a function of X)
    fixed_rule = Points(*[getattr(fixed_rule, f) for f in
                          ("method", "run_id", "N", "D", "C", "L", "group", "budgets")],
                        "backbone", fixed_rule.N / 10)  # fmt: skip
    assert forms_for(fixed_rule) == ["additive", "multiplicative"]


def test_no_held_out_score_is_said_and_too_few_points_raise():
    p = sweep(mult)
    j = fit_joint(p, FitSpec.from_dict({"holdout": {"budgets": 0}}))
    assert j.preferred is None and "no held-out budget" in j.reason
    with pytest.raises(ScalingError, match="points for 4 parameters"):
        fit_form("multiplicative", {"X": p.N[:4], "D": p.D[:4]}, p.L[:4])
