"""Fits that say when they know nothing: a table built so that no law can be identified is marked
*not identified* (with reasons) everywhere it is reported, and never re-centres a sweep."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from scaling import fit, sweep
from scaling.fit.identify import approach3_reasons, power_law_reasons
from scaling.fit.points import Columns
from scaling.fit.report import clean_json, summary
from scaling.fit.spec import FitSpec

SMALL = {"alpha": [0.25, 0.75, 1.5], "e": [-1.0, 0.0, 1.0], "a": [0.0, 10.0, 20.0]}
COLS = Columns(params="N", loss="L", tokens="D", flops="C", method="method")


def flat_table(seed: int = 0) -> pl.DataFrame:
    """Losses that do not depend on N or D: pure noise around 2.0 at three budgets."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in (1e18, 3e18, 1e19):
        for n in np.geomspace(1e7, 1e9, 7):
            rows.append({"method": "m", "N": n, "D": c / (6 * n), "C": c,
                         "L": 2.0 * math.exp(0.01 * rng.normal())})  # fmt: skip
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def flat():
    spec = FitSpec.from_dict({"approach3": SMALL, "bootstrap": {"resamples": 60},
                              "holdout": {"budgets": 0}})  # fmt: skip
    return fit.fit(flat_table(), spec, COLS)


def test_an_unidentifiable_table_is_marked_and_writes_no_optimal_params(flat, tmp_path):
    mf = flat.methods["m"]
    assert mf.identification["approach3"], "approach 3 on noise must not be identified"
    assert mf.optimal_params is None
    assert (
        "not identified" in mf.optimal_params_reason and "add budgets" in mf.optimal_params_reason
    )
    data = clean_json(flat.to_json())
    entry = data["methods"]["m"]
    assert entry["optimal_params"] is None and entry["identified"]["approach3"] is False
    assert entry["not_identified"]["approach3"] == mf.identification["approach3"]
    text = summary(flat)
    assert "NOT IDENTIFIED" in text and "none written" in text
    # the planner re-centres nothing on it, and says why
    path = tmp_path / "fits.json"
    path.write_text(json.dumps(data))
    p = sweep.build_plan(sweep.load_spec(methods=["ladder"]), [1e18],
                         from_fit={"methods": {"ladder": data["methods"]["m"]}})  # fmt: skip
    assert any("no identified N*(C) law" in w and "add budgets" in w for w in p.warnings)


def test_an_exact_law_is_identified(tmp_path):
    rows = []
    for c in np.geomspace(1e18, 1e21, 5):
        n_opt = 0.6 * (c / 6) ** 0.5
        for n in n_opt * np.geomspace(0.2, 5, 7):
            d = c / (6 * n)
            rows.append({"method": "m", "N": n, "D": d, "C": c,
                         "L": 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28})  # fmt: skip
    spec = FitSpec.from_dict({"approach3": SMALL, "bootstrap": {"resamples": 60},
                              "holdout": {"budgets": 0}})  # fmt: skip
    mf = fit.fit(pl.DataFrame(rows), spec, COLS).methods["m"]
    assert mf.identification["approach3"] == []
    assert mf.optimal_params is not None and mf.optimal_params_reason is None


class _Law:
    def __init__(self, ci, a=0.2, **values):
        self.ci, self.a = ci, a
        self.E, self.A, self.alpha, self.bound_hits = 0.5, 1.0, 0.1, ()
        self.__dict__.update(values)


class _A3:
    E, A, B, alpha, beta = 1e-11, 10.0, 10.0, 0.3, 0.2

    def __init__(self, ci, bound_hits=()):
        self.ci, self.bound_hits, self.n_opt = ci, bound_hits, _Law({"a": (0.1, 0.3)})


def test_each_reason():
    assert approach3_reasons(_A3({}), None) == []
    assert approach3_reasons(_A3({}, ("e",)), None) == ["E sits at its bound (1e-11)"]
    r = approach3_reasons(_A3({"alpha": (0.0, 0.5), "E": (1e-12, 2.0)}), {"resamples": 10,
                                                                           "failed": 6})  # fmt: skip
    assert r == ["α's 95% interval [0, 0.5] reaches zero",
                 "E's 95% interval [1e-12, 2] spans more than a decade",
                 "6 of 10 bootstrap resamples failed"]  # fmt: skip

    class _PL:
        n_opt = _Law({"a": (-0.1, 0.2)})
        loss = _Law({"alpha": (0.01, 0.2)})

    r = power_law_reasons(_PL(), (1e6, 2e7), {"resamples": 10, "failed": 5})
    assert r == ["the N*(C) exponent's 95% interval [-0.1, 0.2] reaches zero",
                 "N* at the middle budget has a 95% interval [1e+06, 2e+07] spanning more than a "
                 "decade"]  # fmt: skip


def test_an_estimate_outside_its_own_interval_or_a_floor_at_its_bound_is_a_reason():
    """The quickstart's Ladder approach 2: E of L*(C) at its floor, γ = 0.0642 and its percentile
    interval [0.0662, 5] — every resample bent away from the pure power law the point fit is."""
    r = approach3_reasons(_A3({"beta": (0.25, 0.4)}), None)
    assert r == ["β = 0.2 lies outside its own 95% interval [0.25, 0.4]: the resampled fits land "
                 "elsewhere (a parameter on a boundary, or another basin)"]  # fmt: skip

    class _PL:
        n_opt = _Law({"a": (0.1, 0.3)})
        loss = _Law({"alpha": (0.0662, 5.0)}, E=1.39e-11, alpha=0.0642, bound_hits=("E",))

    r = power_law_reasons(_PL(), None, None)
    assert r == ["the L*(C) law's E sits at its bound (1.39e-11): the optimal losses do not bend "
                 "toward a floor",
                 "the L*(C) exponent γ = 0.0642 lies outside its own 95% interval [0.0662, 5]: the "
                 "resampled fits land elsewhere (a parameter on a boundary, or another basin)"]  # fmt: skip
    _PL.n_opt = _Law({"a": (0.3, 0.5)})
    _PL.loss = _Law({"alpha": (0.05, 0.2)})
    assert power_law_reasons(_PL(), None, None) == [
        "the N*(C) exponent = 0.2 lies outside its own 95% interval [0.3, 0.5]: the resampled fits "
        "land elsewhere (a parameter on a boundary, or another basin)"]  # fmt: skip


def test_the_frontier_law_reports_its_floor_on_the_bound():
    from scaling.fit.frontier import fit_frontier_law

    # the quickstart's Ladder isoFLOP minima: they bend away from any floor
    C = np.array([1.50311088e10, 4.01061961e10, 1.10137162e11, 2.99988414e11])
    law = fit_frontier_law(C, np.array([0.86633569, 0.83565979, 0.76801931, 0.71872951]))
    assert law.bound_hits == ("E",) and law.E < 1e-10
    C = np.geomspace(1e10, 1e12, 5)
    assert fit_frontier_law(C, 1.5 + 40.0 * C**-0.15).bound_hits == ()
