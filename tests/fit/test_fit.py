"""The analyses on tables of runs: recovery from a simulated sweep, the isoFLOP guard, bootstrap,
held-out check, method comparison, exclusions and bad input, memory-aware advice."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from scaling import fit
from scaling.errors import ScalingError
from scaling.fit import collect, synth
from scaling.fit.approach3 import fit_approach3
from scaling.fit.bootstrap import approach3_notes
from scaling.fit.compare import choose_source
from scaling.fit.isoflop import fit_isoflop
from scaling.fit.points import Columns, Points
from scaling.fit.report import clean_json, summary
from scaling.fit.results import Holdout
from scaling.fit.spec import Approach2Spec, FitSpec, load_spec
from scaling.sweep import load_fit

SMALL = {"alpha": [0.25, 0.75, 1.5], "e": [-1.0, 0.0, 1.0], "a": [0.0, 10.0, 20.0]}


def small_spec(**over) -> FitSpec:
    data = {"approach3": SMALL, "bootstrap": {"resamples": 40}} | over
    return FitSpec.from_dict(data)


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """A noise-free simulated Ladder-vs-LoRA sweep, collected and fitted once."""
    out = tmp_path_factory.mktemp("sim") / "sweep"
    laws = synth.simulate(out, noise=0.0)
    c = collect.collect(out)
    spec = small_spec(predict=[1e14])
    return laws, c, fit.fit(c.table(spec), spec, curves=c.curves)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "noisy"
    laws = synth.simulate(out, noise=0.005, seed=3)
    c = collect.collect(out)
    spec = small_spec(bootstrap={"resamples": 100}, holdout={"budgets": 0}, predict=[1e13])
    return laws, fit.fit(c.table(spec), spec, curves=c.curves)


def table(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, infer_schema_length=None)


def csv_cols(**over) -> Columns:
    return Columns(**{"params": "N", "tokens": "D", "loss": "L", "flops": "C"} | over)


def chinchilla_rows(budgets=(1e18, 1e19, 1e20, 1e21), per=7, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt = 0.6 * (c / 6) ** 0.5
        for n in n_opt * np.geomspace(0.1, 10, per):
            d = c / (6 * n)
            loss = (1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28) * math.exp(noise * rng.normal())
            rows.append({"N": n, "D": d, "C": c, "L": loss})
    return rows


# --------------------------------------------------------------------------------------------------
# Recovery from a simulated sweep


def test_approach3_recovers_the_simulated_laws(exact):
    laws, _, report = exact
    for m, law in laws.items():
        a3 = report.methods[m].approach3
        for key in ("E", "A", "B", "alpha", "beta"):
            assert getattr(a3, key) == pytest.approx(getattr(law, key), rel=1e-4), (m, key)
        assert a3.flops.max_rel_error < 0.05
        n, d, _ = a3.optimal(1e12)
        assert float(n[0] * d[0]) > 0


def test_fits_json_feeds_the_sweep_planner(exact, tmp_path):
    _, _, report = exact
    data = clean_json(report.to_json())
    (tmp_path / "fits.json").write_text(json.dumps(data))
    laws = load_fit(tmp_path / "fits.json")  # exactly what `scaling sweep --from-fit` reads
    for m, mf in report.methods.items():
        A, a = laws[m]
        assert A == mf.optimal_params.A and a == mf.optimal_params.a
        # approach 2's law when it is identified (its minima are measured), else approach 3's
        source = next(a for a in ("approach2", "approach3") if not mf.identification.get(a))
        assert data["methods"][m]["optimal_params"]["source"] == source
        assert data["methods"][m]["identified"][source] is True
        # N*(C) from the isoFLOP minima is near the law's optimum; a parabola in log N over
        # ±0.8 decades of an asymmetric PEFT isoFLOP curve puts it 10-20% low (approach 2's bias).
        exact_n = mf.approach3.optimal(3e12)[0][0]
        assert A * 3e12**a == pytest.approx(exact_n, rel=0.25)
    assert any(d["optimal_params"]["source"] == "approach2" for d in data["methods"].values())


def test_every_budget_has_an_interior_minimum(exact):
    _, _, report = exact
    for mf in report.methods.values():
        assert [p.status for p in mf.approach2.parabolas] == ["ok"] * 4
        assert mf.approach2.n_opt.a > 0 and mf.approach2.loss is not None


def test_holdout_predicts_the_largest_budget(exact):
    _, _, report = exact
    for mf in report.methods.values():
        h = mf.holdout
        assert h.held_out == (pytest.approx(mf.points.budgets[-1]),)
        assert h.mape < 1e-4 and abs(h.bias) < 1e-4
        assert abs(h.approach2_loss_error) < 0.1


def test_predictions_and_frontier_bands(exact):
    _, _, report = exact
    for mf in report.methods.values():
        approaches = {q.approach for q in mf.predictions}
        assert approaches == {"approach1", "approach2", "approach3"}
        q = next(q for q in mf.predictions if q.approach == "approach2")
        assert q.extrapolated and q.ci["loss"][0] <= q.loss <= q.ci["loss"][1]
        cols = mf.frontier["approach2"]
        assert (cols["L_lo"] <= cols["L"] + 1e-9).all() and (cols["L"] <= cols["L_hi"] + 1e-9).all()


def test_approach1_envelope_from_logged_curves(exact):
    _, _, report = exact
    for mf in report.methods.values():
        e = mf.approach1.envelope
        assert len(e.C) >= 10 and (np.diff(e.L) < 0).all()
        assert mf.approach1.n_opt.a > 0


def test_noisy_bootstrap_intervals_cover_the_truth(noisy):
    laws, report = noisy
    for m, law in laws.items():
        a3 = report.methods[m].approach3
        for key in ("alpha", "beta", "E"):
            lo, hi = a3.ci[key]
            assert lo <= getattr(law, key) <= hi, (m, key, lo, hi)
        assert report.methods[m].bootstrap["approach3"]["failed"] == 0


def test_method_comparison(noisy):
    laws, report = noisy
    cmp = report.comparison
    pairs = {(x["method"], x["versus"]) for x in cmp["multipliers"]}
    ref = cmp["reference"]  # the best at the largest budget both reached: each other one vs it
    other = ({"ladder", "lora"} - {ref}).pop()
    assert pairs == {(other, ref)}
    at = {m: report.methods[m].approach3.optimal(max(cmp["reference_C"]))[2][0] for m in laws}
    assert at[ref] < at[other]
    assert cmp["source"] in ("approach3", "approach2") and "held-out" in cmp["chosen_by"]
    for x in cmp["multipliers"]:
        assert x["multiplier"] > 0 and x["ci"][0] <= x["multiplier"] <= x["ci"][1]
    keys = {(e["approach"], e["exponent"]) for e in cmp["exponents"]}
    assert ("approach3", "alpha") in keys and ("approach3", "loss_exponent") in keys
    for e in cmp["exponents"]:
        assert e["significant"] == (e["ci"][0] > 0 or e["ci"][1] < 0)


def test_compute_multiplier_of_a_method_twice_as_cheap_per_token():
    """Same L(N, D), half the FLOPs per token: at equal C it sees 2× the tokens, so the other
    method needs exactly 2× the compute for its loss."""
    rows = []
    for method, k in (("costly", 6.0), ("cheap", 3.0)):
        for r in chinchilla_rows():
            n, c = r["N"], r["C"]
            d = c / (k * n)
            loss = 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28
            rows.append({"N": n, "D": d, "C": c, "L": loss, "m": method})
    spec = small_spec(bootstrap={"resamples": 0}, holdout={"budgets": 0}, predict=[1e20])
    report = fit.fit(table(rows), spec, csv_cols(method="m"))
    (x,) = [x for x in report.comparison["multipliers"] if x["method"] == "costly"]
    assert x["multiplier"] == pytest.approx(2.0, rel=1e-3)
    assert report.comparison["crossovers"] == []
    # One line per method against the reference (the best: the cheap one), inside the fitted range.
    assert report.comparison["reference"] == "cheap" and len(report.comparison["multipliers"]) == 1
    assert x["versus"] == "cheap" and x["extrapolated"] is False
    text = summary(report)
    assert "each method against cheap, the lowest frontier loss at C=1e+21" in text
    # Beyond the fitted budgets the same comparison is marked as an extrapolation.
    spec = small_spec(bootstrap={"resamples": 0}, holdout={"budgets": 0}, predict=[1e23])
    far = fit.fit(table(rows), spec, csv_cols(method="m")).comparison["multipliers"][0]
    assert far["extrapolated"] and far["budget_outside"]
    assert "[EXTRAPOLATED: C outside a fitted range" in summary(
        fit.fit(table(rows), spec, csv_cols(method="m"))
    )


# --------------------------------------------------------------------------------------------------
# The isoFLOP guard


def points(N, L, D=None, C=1e18) -> Points:
    N = np.asarray(N, dtype=float)
    D = np.asarray(D if D is not None else C / (6 * N), dtype=float)
    return Points("m", np.array([f"r{i}" for i in range(len(N))], dtype=object), N, D,
                  np.full(len(N), C), np.asarray(L, dtype=float), np.zeros(len(N), dtype=int),
                  np.array([C]))  # fmt: skip


def test_parabola_vertex_of_an_exact_parabola():
    N = np.geomspace(1e6, 1e8, 7)
    u = np.log(N) - math.log(1.3e7)
    a2 = fit_isoflop(points(N, 2.0 + 0.05 * u**2), Approach2Spec())
    (p,) = a2.parabolas
    assert p.status == "ok" and p.n_opt == pytest.approx(1.3e7, rel=1e-9)
    assert p.loss_opt == pytest.approx(2.0, rel=1e-12)
    assert (p.below, p.above) == (3, 3)  # distinct N either side of the lowest point (1e7)


def test_edge_minimum_is_flagged_and_left_out():
    """A grid lying on one side of the optimum: its 'minimum' is an extrapolation."""
    N = np.geomspace(1e6, 1e7, 6)
    u = np.log(N) - math.log(2e7)  # optimum above the grid
    a2 = fit_isoflop(points(N, 2.0 + 0.05 * u**2), Approach2Spec())
    (p,) = a2.parabolas
    assert p.status == "edge" and "one side of the optimum" in p.reason
    assert a2.n_opt is None and "interior minimum" in a2.reason
    # One point below the lowest one: interior by default (min_side = 1), not with min_side = 2.
    N = np.geomspace(1e6, 1e8, 5)
    u = np.log(N) - math.log(4e6)
    (p,) = fit_isoflop(points(N, 2.0 + 0.05 * u**2), Approach2Spec(min_side=2)).parabolas
    assert p.status == "edge" and (p.below, p.above) == (1, 3)
    (p,) = fit_isoflop(points(N, 2.0 + 0.05 * u**2), Approach2Spec()).parabolas
    assert p.status == "ok" and p.n_opt == pytest.approx(4e6, rel=1e-9)


def test_too_few_points_and_concave_budgets():
    (p,) = fit_isoflop(points([1e6, 1e8], [2.1, 2.0]), Approach2Spec()).parabolas
    assert p.status == "too_few" and "2 distinct N" in p.reason
    (p,) = fit_isoflop(points([1e6, 1e7, 1e8], [2.1, 2.0, 2.1]), Approach2Spec()).parabolas
    assert p.status == "ok" and p.n_opt == pytest.approx(1e7)  # three points: an interior minimum
    (p,) = fit_isoflop(
        points([1e6, 1e7, 1e8], [2.1, 2.0, 2.1]), Approach2Spec(min_side=2)
    ).parabolas
    assert p.status == "too_few" and "3 distinct N (< 5)" in p.reason
    N = np.geomspace(1e6, 1e8, 5)  # lowest point in the middle, but the ends lower than the rest
    (p,) = fit_isoflop(points(N, [1.0, 2.0, 0.99, 2.0, 1.0]), Approach2Spec(huber=100.0)).parabolas
    assert p.status == "concave"


def test_robust_parabola_shrugs_off_an_outlier():
    N = np.geomspace(1e6, 1e8, 9)
    u = np.log(N) - math.log(1e7)
    L = 2.0 + 0.05 * u**2
    L[1] += 0.5
    (p,) = fit_isoflop(points(N, L), Approach2Spec()).parabolas
    (ls,) = fit_isoflop(points(N, L), Approach2Spec(huber=100.0)).parabolas  # plain least squares
    assert p.n_opt == pytest.approx(1e7, rel=0.05)
    assert abs(math.log(p.n_opt / 1e7)) < 0.2 * abs(math.log(ls.n_opt / 1e7))


# --------------------------------------------------------------------------------------------------
# Exclusions and bad input


def test_exclusions_are_listed_with_reasons(tmp_path):
    out = tmp_path / "sweep"
    synth.simulate(out, statuses={0: "diverged", 1: "failed"}, unfinished=(2,), curves=False)
    c = collect.collect(out)
    spec = small_spec(bootstrap={"resamples": 0}, holdout={"budgets": 0}, exclude=[])
    runs = c.table(spec).to_dicts()
    runs[3]["final_eval_loss"] = float("nan")
    runs[4]["final_eval_loss"] = -1.0
    report = fit.fit(table(runs), spec)
    reasons = {e.run_id: e.reason for e in report.exclusions}
    ids = [r["run_id"] for r in runs]
    assert reasons[ids[0]].startswith("diverged: simulated diverged")
    assert reasons[ids[1]].startswith("failed")
    assert reasons[ids[2]] == "not finished: no result.json"
    assert reasons[ids[3]] == "final_eval_loss is missing"
    assert reasons[ids[4]] == "final_eval_loss = -1 is not positive"
    assert sum(len(m.points) for m in report.methods.values()) == len(runs) - 5


def test_outliers_are_excluded_with_their_residual():
    rows = chinchilla_rows(noise=0.002, seed=1)
    rows[9]["L"] *= 1.2
    spec = small_spec(bootstrap={"resamples": 0}, outlier_sigma=6.0)
    report = fit.fit(table(rows), spec, csv_cols())
    (e,) = report.exclusions
    assert e.run_id == "row9" and e.reason.startswith("outlier: log residual +0.1")
    assert report.methods["all"].approach3.alpha == pytest.approx(0.34, abs=0.01)


@pytest.mark.parametrize(
    ("rows", "cols", "message"),
    [
        ([], csv_cols(), "is empty"),
        ([{"N": 1.0, "D": 1.0, "L": 1.0}], csv_cols(), "column 'C' not in"),
        (
            [{"N": 1.0, "L": 1.0}],
            csv_cols(tokens=None, flops=None),
            "need two of parameters, tokens and FLOPs",
        ),
        ([{"N": -1.0, "D": 1.0, "C": 1.0, "L": 1.0}], csv_cols(), "nothing to fit: all 1 rows"),
        ([{"N": 1.0, "D": 1.0, "C": 1.0, "L": float("nan")}], csv_cols(), "L is missing"),
    ],
)
def test_bad_tables_are_one_line_errors(rows, cols, message):
    t = table(rows) if rows else pl.DataFrame({"N": [], "D": [], "C": [], "L": []})
    with pytest.raises(ScalingError, match=message) as e:
        fit.fit(t, small_spec(), cols)
    assert "\n" not in str(e.value)


def test_all_runs_diverged(tmp_path):
    out = tmp_path / "sweep"
    synth.simulate(out, statuses={i: "diverged" for i in range(200)}, curves=False)
    c = collect.collect(out)
    n = c.runs.height
    with pytest.raises(
        ScalingError, match=rf"nothing to fit: all {n} rows .* \({n} diverged; first: "
    ):
        fit.fit(c.table(), small_spec())


def test_single_budget_fits_approach3_and_says_why_not_approach2():
    rows = chinchilla_rows(budgets=(1e19,), per=12)
    report = fit.fit(table(rows), small_spec(bootstrap={"resamples": 0}), csv_cols())
    mf = report.methods["all"]
    assert mf.approach2.n_opt is None and mf.approach3 is not None
    # N*(C) still comes from approach 3's law around the budget, for `sweep --from-fit`.
    assert mf.optimal_params.source == "approach3"
    assert mf.optimal_params.a == pytest.approx(0.28 / 0.62, rel=1e-4)
    assert any("1 of 1 budget(s) have an interior minimum" in n for n in mf.notes)
    assert any("holding out 1 needs ≥ 3" in (mf.holdout.reason or "") for _ in [0])


def test_too_few_points_for_anything():
    rows = chinchilla_rows(budgets=(1e19,), per=3)
    with pytest.raises(ScalingError, match="nothing could be fitted: all: nothing could be"):
        fit.fit(table(rows), small_spec(bootstrap={"resamples": 0}), csv_cols())


def test_budgets_cluster_by_flops_without_a_budget_column():
    rows = chinchilla_rows(budgets=(1e19, 1e20), per=6)
    for i, r in enumerate(rows):
        r["C"] *= 1 + 0.03 * (-1) ** i  # digitisation-like jitter around each budget
    report = fit.fit(table(rows), small_spec(bootstrap={"resamples": 0}), csv_cols())
    assert len(report.methods["all"].points.budgets) == 2


def test_flops_derived_from_tokens_with_a_warning():
    rows = [{k: v for k, v in r.items() if k != "C"} for r in chinchilla_rows()]
    report = fit.fit(table(rows), small_spec(bootstrap={"resamples": 0}), csv_cols(flops=None))
    assert any("C = 6·N·D" in w for w in report.warnings)
    assert report.methods["all"].approach3.alpha == pytest.approx(0.34, rel=1e-4)


def test_fit_spec_toml_rejects_unknown_keys(tmp_path):
    p = tmp_path / "spec.toml"
    p.write_text('n = "trainable"\n[bootstrap]\nresamples = 10\nsamples = 3\n')
    with pytest.raises(ScalingError, match="unknown key 'samples'.*valid keys: resamples"):
        load_spec(str(p))
    p.write_text('n = "side"\n')
    with pytest.raises(ScalingError, match="n must be one of auto, trainable, backbone, total"):
        load_spec(str(p))
    p.write_text("[holdout]\npool = 1\n")
    with pytest.raises(ScalingError, match="holdout.pool must be true or false"):
        load_spec(str(p))


def test_analysis_specs_load():
    from pathlib import Path

    specs = sorted((Path(__file__).resolve().parents[2] / "analysis").glob("*.toml"))
    assert specs
    for p in specs:
        load_spec(str(p))


# --------------------------------------------------------------------------------------------------
# Memory-aware advice


def test_memory_advice_picks_the_best_configuration_that_fits(exact):
    _, c, _ = exact
    spec = small_spec(bootstrap={"resamples": 0}, holdout={"budgets": 0}, predict=[1e14],
                      gpu_mem="4MB")  # fmt: skip
    report = fit.fit(c.table(spec), spec, curves=None)
    by = {a["method"]: a for a in report.advice}
    assert set(by) == {"ladder", "lora"}
    for a in by.values():
        best, free = a["best_fitting"], a["unconstrained"]
        assert best["fits"] and best["peak_bytes"] <= 4e6
        assert best["loss"] >= free["loss"]
        assert isinstance(best["levers"], list) and free["levers"] == []
    # LoRA's unconstrained optimum does not fit in 4 MB: the advice trades loss for memory.
    assert not by["lora"]["unconstrained"]["fits"]
    assert by["lora"]["best_fitting"]["loss"] > by["lora"]["unconstrained"]["loss"]


def test_memory_advice_needs_sweep_configs():
    spec = small_spec(bootstrap={"resamples": 0}, predict=[1e20], gpu_mem="12GB")
    with pytest.raises(ScalingError, match="--gpu-mem needs runs from a sweep directory"):
        fit.fit(table(chinchilla_rows()), spec, csv_cols())


def test_several_backbones_are_fitted_separately():
    rows = [r | {"bb": bb, "m": "ladder"} for bb in ("small", "big") for r in chinchilla_rows()]
    for r in rows[len(rows) // 2 :]:
        r["L"] += 0.3  # a different backbone: a different law
    spec = small_spec(bootstrap={"resamples": 0}, holdout={"budgets": 0}, methods=["ladder"])
    report = fit.fit(table(rows), spec, csv_cols(method="m", backbone="bb"))
    assert set(report.methods) == {"ladder@small", "ladder@big"}
    assert report.methods["ladder@small"].approach3.E == pytest.approx(1.69, rel=1e-4)
    assert any("fitted per backbone" in w for w in report.warnings)


def test_best_learning_rate_per_point_and_edge_flags():
    """Runs that differ only in their learning rate are one point: the best is kept, the others are
    excluded with the reason, a best at the grid's edge is flagged, and the smallest budget's median
    best multiplier is reported (what --from-fit carries up)."""
    rows = []
    for c in (1e18, 1e19):
        for n in np.geomspace(1e7, 1e9, 5):
            for mult in (0.5, 1.0, 2.0):
                # the best rate is ×1 for most sizes, ×2 (the edge) for the largest
                best = 2.0 if n > 5e8 else 1.0
                penalty = 0.05 * abs(math.log2(mult / best))
                loss = 1.69 + 406.4 * n**-0.34 + 410.7 * (c / (6 * n)) ** -0.28 + penalty
                rows.append({"method": "m", "N": n, "D": c / (6 * n), "C": c, "L": loss,
                             "lr": 2e-4 * mult, "mult": mult, "seed": 0, "run_id": f"{c}-{n}-{mult}"})  # fmt: skip
    cols = Columns(params="N", loss="L", tokens="D", flops="C", method="method", run_id="run_id",
                   lr="lr", lr_multiplier="mult", seed="seed")  # fmt: skip
    report = fit.fit(table(rows), small_spec(bootstrap={"resamples": 0}, holdout={"budgets": 0}),
                     cols)  # fmt: skip
    mf = report.methods["m"]
    assert len(mf.points) == 10  # one per (budget, size)
    dropped = [e for e in report.exclusions if e.kind == "not the best learning rate"]
    assert len(dropped) == 20 and all("not the best at this point" in e.reason for e in dropped)
    kept = set(mf.points.run_id)
    assert all(rid.endswith("-1.0") or float(rid.split("-")[1]) > 5e8 for rid in kept)
    assert any("best learning rate at the edge of the grid" in w for w in report.warnings)
    assert mf.best_lr_multiplier == 1.0
    assert report.to_json()["methods"]["m"]["best_lr_multiplier"] == 1.0


# --------------------------------------------------------------------------------------------------
# Real published sweeps: wide grids, misspecified approach 3, the held-out budget


def wide_grid_points(window_noise=0.003, seed=0) -> tuple[Points, float]:
    """8 budgets, one fixed ladder of 15 sizes spanning 3.5 decades (the optimum crosses the grid as
    C grows, as when a lab runs the same models at every budget), L = E + A/N^α + B/D^β with
    α < β so that the isoFLOP curves are lopsided, C = 6·N·D."""
    E, A, B, al, be = 1.5, 1000.0, 400.0, 0.3, 0.45
    rng = np.random.default_rng(seed)
    G = (al * A / (be * B)) ** (1 / (al + be))
    budgets = np.logspace(18, 22, 8)
    ns = G * (budgets[0] / 6) ** (be / (al + be)) / 10**0.5 * 10 ** np.linspace(0, 3.5, 15)
    N, C = np.meshgrid(ns, budgets)
    N, C = N.ravel(), C.ravel()
    D = C / (6 * N)
    L = (E + A * N**-al + B * D**-be) * np.exp(window_noise * rng.standard_normal(len(N)))
    group = np.repeat(np.arange(len(budgets)), len(ns))
    pts = Points("m", np.array([f"r{i}" for i in range(len(N))], dtype=object), N, D, C, L, group,
                 budgets)  # fmt: skip
    return pts, be / (al + be)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_grids_recover_the_exponent_with_the_window(seed):
    pts, true = wide_grid_points(seed=seed)
    a2 = fit_isoflop(pts, Approach2Spec())
    assert all(p.status == "ok" for p in a2.parabolas)
    assert a2.n_opt.a == pytest.approx(true, abs=0.02)
    for p in a2.parabolas:  # the window used is reported: ±1 decade around the lowest point
        assert p.window[0] >= p.lowest / 10**1.01 and p.window[1] <= p.lowest * 10**1.01
        assert p.n_window < p.n_points
    # One parabola over the whole 3.5-decade grid is pulled off by the far ends.
    whole = fit_isoflop(pts, Approach2Spec(window=0))
    assert abs(whole.n_opt.a - true) > 0.05


def test_a_lowest_point_with_one_model_below_it_is_kept():
    """The lowest observed point is interior (one model below it): the budget counts, although a
    parabola over the whole grid would put its vertex below the smallest model."""
    N = np.geomspace(1e6, 1e10, 17)
    x = np.log(N / 7e5)
    L = 2.0 + 0.3 * (np.exp(-0.5 * x) + 0.5 * np.exp(0.4 * x))  # lopsided: steep below, slow above
    true = 7e5 * math.exp(math.log(2.5) / 0.9)  # the curve's argmin
    (p,) = fit_isoflop(points(N, L), Approach2Spec()).parabolas
    assert p.status == "ok" and p.below == 1 and p.lowest == pytest.approx(N[1])
    assert abs(math.log10(p.n_opt / true)) < 0.1
    (whole,) = fit_isoflop(points(N, L), Approach2Spec(window=0)).parabolas
    assert abs(math.log10(whole.n_opt / true)) > 3 * abs(math.log10(p.n_opt / true))


def misspecified_rows():
    """Mostly under-trained checkpoints: each run logs 3 checkpoints on one law (E = 3) and ends
    20% lower once its schedule has annealed; approach 3's robust fit follows the majority."""
    rows = []
    for c in (1e19, 1e20, 1e21, 1e22):
        n_opt = 0.6 * (c / 6) ** 0.5
        for i in range(7):
            n = n_opt * 10 ** (-1 + i / 3)
            for f in (0.25, 0.5, 0.75, 1.0):
                d = c / (6 * n) * f
                loss = (3.0 + 406.4 * n**-0.34 + 410.7 * d**-0.28) * (0.8 if f == 1 else 1.0)
                rows.append({"N": n, "D": d, "C": 6 * n * d, "L": loss})
    return rows


def test_misspecified_approach3_is_flagged():
    report = fit.fit(table(misspecified_rows()), small_spec(bootstrap={"resamples": 0}), csv_cols())
    mf = report.methods["all"]
    a3 = mf.approach3
    assert a3.E > a3.min_loss
    (reason,) = [r for r in mf.identification["approach3"] if "lowest observed loss" in r]
    assert f"E = {a3.E:.4g} lies above the lowest observed loss {a3.min_loss:.4g}" in reason
    assert mf.optimal_params is None or mf.optimal_params.source != "approach3"
    text = summary(report)
    assert "NOT IDENTIFIED" in text and "lies above the lowest observed loss" in text
    assert "optimiser" in text and "residuals" in text
    assert mf.holdout.bias > 0.02 and any("bias" in n for n in mf.notes)


def test_structured_residuals_and_abnormal_termination_are_reported():
    """A multiplicative law fitted by the additive form leaves a smooth residual pattern."""
    pts, _ = wide_grid_points(window_noise=0.0)
    L = 1.5 + 3e3 * pts.N**-0.3 * pts.D**-0.2
    pts = Points("m", pts.run_id, pts.N, pts.D, pts.C, L, pts.group, pts.budgets)
    a3 = fit_approach3(pts, small_spec())
    rs = a3.residual_structure
    assert rs["structured"] and rs["r2"] > 0.3 and rs["p_value"] < 0.01
    assert any("residuals have structure" in n for n in approach3_notes(a3))
    # the law's own data: nothing to report
    good = fit_approach3(wide_grid_points()[0], small_spec())
    assert not good.residual_structure["structured"]
    ok = dataclasses.replace(
        good, polish_message="CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
    )
    assert approach3_notes(ok) == []
    stalled = dataclasses.replace(good, polish_message="ABNORMAL: ", grad_norm=1e-6)
    (note,) = approach3_notes(stalled)
    assert "ended with 'ABNORMAL:'" in note and "stalled at float precision" in note
    far = dataclasses.replace(good, polish_message="ABNORMAL: ", grad_norm=0.5)
    (note,) = approach3_notes(far)
    assert "the optimum may not be reached" in note
    report = fit.fit(table(chinchilla_rows()), small_spec(bootstrap={"resamples": 0}), csv_cols())
    a3 = report.methods["all"].approach3
    shown = "converged" if a3.converged_polish else f"{a3.polish_message.split(':')[0]}, |g|"
    assert shown in summary(report)  # the termination is in the summary's approach-3 table


def test_holdout_holds_out_the_largest_budget_with_a_minimum():
    rows = chinchilla_rows(budgets=(1e18, 1e19, 1e20, 1e21))
    # The largest budget's grid lies below its optimum: no interior minimum there.
    for n in 0.6 * (1e22 / 6) ** 0.5 * np.geomspace(0.003, 0.1, 7):
        d = 1e22 / (6 * n)
        rows.append({"N": n, "D": d, "C": 1e22, "L": 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28})
    spec = small_spec(bootstrap={"resamples": 0})
    mf = fit.fit(table(rows), spec, csv_cols()).methods["all"]
    assert [p.status for p in mf.approach2.parabolas][-1] == "edge"
    h = mf.holdout
    assert h.held_out == (pytest.approx(1e21),) and h.skipped == (pytest.approx(1e22),)
    assert "held out 1e+21: the largest budget(s) with an interior isoFLOP minimum" in h.reason
    assert h.approach2_loss_error is not None and abs(h.approach2_loss_error) < 0.1  # E = 0 law
    assert h.approach3_loss_error == pytest.approx(0.0, abs=1e-3)
    assert len(h.observed) == len(h.predicted) == h.n_test == 7
    assert h.n_train == sum(r["C"] < 1e21 for r in rows)


def test_comparison_source_is_the_best_held_out_approach():
    def mf(e3, e2):
        h = Holdout((1.0,), 1, 1, None, None, approach2_loss_error=e2, approach3_loss_error=e3)
        return SimpleNamespace(approach3=object(), approach2=SimpleNamespace(loss=object()),
                               holdout=h)  # fmt: skip

    src, why = choose_source({"a": mf(0.05, 0.01), "b": mf(-0.03, 0.02)})
    assert src == "approach2" and "approach2 1.50%, approach3 4.00%" in why
    src, _ = choose_source({"a": mf(0.001, 0.01), "b": mf(-0.003, -0.02)})
    assert src == "approach3"
    src, why = choose_source({"a": mf(None, None)})
    assert src == "approach3" and "no held-out" in why
