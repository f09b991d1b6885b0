"""Task scaling laws (:mod:`scaling.fit.tasklaw`, :mod:`scaling.fit.taskfit`): the two-step fit recovers known laws from synthetic
runs, its intervals and held-out check, and ``scaling fit`` on runs that logged task evaluations."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest

from scaling import cli
from scaling.errors import ScalingError
from scaling.fit import synth, taskfit, taskident, tasklaw, taskplots
from scaling.fit.bootstrap import resample_weights
from scaling.fit.frontier import fit_flops_model, optimal_allocation
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec, TasksSpec
from scaling.io import write_parquet

TRUE_STEP1 = {"E": 1.0, "A": 50.0, "B": 100.0, "alpha": 0.3, "beta": 0.3}
TRUE_STEP2 = {"a": 0.7, "k": -4.0, "L0": 2.5, "b": 0.2}
BUDGETS = (1e13, 3e13, 1e14, 3e14, 1e15)


def synthetic(seed: int = 0, loss_noise: float = 0.005, acc_noise: float = 0.01, evals: int = 3):
    """An isoFLOP grid (7 sizes × 5 budgets, C = 6·N·D) whose task loss follows TRUE_STEP1 (times
    log-normal noise) and accuracy TRUE_STEP2 (plus normal noise); ``evals`` task rows per run, at
    fractions of its tokens, the last one final."""
    rng = np.random.default_rng(seed)
    t = TRUE_STEP1
    law = lambda N, D: t["E"] + t["A"] * N ** -t["alpha"] + t["B"] * D ** -t["beta"]  # noqa: E731
    rows, run_id, N, D, C, group = [], [], [], [], [], []
    for g, c in enumerate(BUDGETS):
        for n in np.geomspace(1e5, 1e7, 7):
            rid = f"r{len(run_id)}"
            d = c / (6 * n)
            run_id.append(rid), N.append(n), D.append(d), C.append(c), group.append(g)
            factor = np.exp(rng.normal(0, loss_noise))  # one run's offset, as a seed would give
            for j in range(1, evals + 1):
                loss = law(n, d * j / evals) * factor
                acc = tasklaw.sigmoid(loss, *TRUE_STEP2.values()) + rng.normal(0, acc_noise)
                rows.append({"run_id": rid, "kind": "task/arith", "step": j * 10,
                             "tokens": int(d * j / evals), "flops": c * j / evals,
                             "loss": float(loss), "accuracy": float(acc)})  # fmt: skip
            rows.append({"run_id": rid, "kind": "eval", "step": evals * 10, "tokens": int(d),
                         "flops": c, "loss": 3.0, "accuracy": None})  # fmt: skip
    N, D, C = map(np.array, (N, D, C))
    points = Points("ladder", np.array(run_id), N, D, C, np.full(len(N), 3.0),
                    np.array(group), np.array(BUDGETS))  # fmt: skip
    return points, pl.DataFrame(rows, infer_schema_length=None)


def test_two_step_fit_recovers_known_parameters():
    points, curves = synthetic()
    data = tasklaw.task_data(points, curves, "arith", intermediate=True)
    assert len(data.loss) == 35 and len(data.pair_loss) == 105
    s1 = tasklaw.fit_task_loss(data.points.N, data.points.D, data.loss)
    assert s1.E == pytest.approx(TRUE_STEP1["E"], rel=0.05)
    assert s1.A == pytest.approx(TRUE_STEP1["A"], rel=0.2)
    assert s1.B == pytest.approx(TRUE_STEP1["B"], rel=0.2)
    assert s1.alpha == pytest.approx(TRUE_STEP1["alpha"], abs=0.02)
    assert s1.beta == pytest.approx(TRUE_STEP1["beta"], abs=0.02)
    assert s1.bound_hits == ()
    s2 = tasklaw.fit_sigmoid(data.pair_loss, data.pair_acc)
    assert s2.a == pytest.approx(TRUE_STEP2["a"], abs=0.05)
    assert s2.k == pytest.approx(TRUE_STEP2["k"], rel=0.1)
    assert s2.L0 == pytest.approx(TRUE_STEP2["L0"], abs=0.05)
    assert s2.b == pytest.approx(TRUE_STEP2["b"], abs=0.03)
    assert s2.rmse == pytest.approx(0.01, rel=0.3)  # the accuracy noise, not more


def test_noise_free_data_are_recovered_exactly():
    points, curves = synthetic(loss_noise=0.0, acc_noise=0.0)
    data = tasklaw.task_data(points, curves, "arith", intermediate=False)
    s1 = tasklaw.fit_task_loss(data.points.N, data.points.D, data.loss)
    for k, v in TRUE_STEP1.items():
        assert getattr(s1, k) == pytest.approx(v, rel=1e-3), k
    s2 = tasklaw.fit_sigmoid(data.loss, data.accuracy)
    for k, v in TRUE_STEP2.items():
        assert getattr(s2, k) == pytest.approx(v, rel=1e-3), k


def test_chained_accuracy_intervals_and_holdout():
    points, curves = synthetic(seed=1)
    spec = FitSpec.from_dict({"bootstrap": {"resamples": 60, "starts": 2}, "predict": [3e15]})
    tf = taskfit.fit_task(points, curves, "arith", spec, seed=0)
    assert isinstance(tf, taskfit.TaskFit)
    # The chained curve is the true accuracy of the true compute-optimal allocation.
    fm = fit_flops_model(points.N, points.fpt)
    t = TRUE_STEP1
    theta = np.log([t["A"], t["B"]]).tolist() + [t["alpha"], t["beta"], np.log(t["E"])]
    _, _, L_true = optimal_allocation(np.array(theta), fm, tf.curve["C"])
    acc_true = tasklaw.sigmoid(L_true, *TRUE_STEP2.values())
    inside = tf.curve["C"] <= points.C.max()
    assert np.max(np.abs(tf.curve["acc"] - acc_true)[inside]) < 0.02
    assert np.all(tf.curve["acc_lo"] <= tf.curve["acc"] + 1e-9)
    assert np.all(tf.curve["acc"] <= tf.curve["acc_hi"] + 1e-9)
    # Each interval holds its estimate, and the truth lies within one interval width of it (a 95%
    # interval misses now and then: asserting the truth inside all nine would be a coin toss).
    for law, truth in ((tf.step1, TRUE_STEP1), (tf.step2, TRUE_STEP2)):
        for name, value in truth.items():
            lo, hi = law.ci[name]
            est = getattr(law, name)
            assert lo <= est <= hi and abs(est - value) < hi - lo, name
    assert tf.bootstrap == {"resamples": 60, "failed": 0}
    assert tf.identification == {"step1": [], "step2": []} and tf.identified  # not flagged
    h = tf.holdout
    assert h.held_out == (1e15,) and h.n_test == 7 and h.n_train == 28
    assert h.mae < 0.03 and abs(h.bias) < 0.03 and h.loss_mape < 0.02
    (q,) = tf.predictions
    assert q["extrapolated"] and q["ci"]["accuracy"][0] <= q["accuracy"] <= q["ci"]["accuracy"][1]
    json.dumps(tf.to_json())  # every field is JSON


def _floor_accuracy(curves: pl.DataFrame, seed: int = 0) -> pl.DataFrame:
    """The task rows' accuracies replaced by a hard task's for tiny models: 64 examples drawn from a
    sigmoid whose rise lies far below every task loss observed (accuracy ≈ 0, now and then 1/64)."""
    rng = np.random.default_rng(seed)
    p = np.nan_to_num(tasklaw.sigmoid(curves["loss"].to_numpy(), 0.7, -4.0, 0.5, 0.0))
    acc = pl.Series(rng.binomial(64, p) / 64)
    task = pl.col("kind") == "task/arith"
    return curves.with_columns(
        pl.when(task).then(acc).otherwise(pl.col("accuracy")).alias("accuracy")
    )


def test_accuracy_on_its_floor_is_not_identified(tmp_path):
    points, curves = synthetic(seed=0)
    floor = _floor_accuracy(curves)
    assert floor.filter(pl.col("kind") == "task/arith")["accuracy"].max() > 0  # not flat: fitted
    spec = FitSpec.from_dict({"bootstrap": {"resamples": 40, "starts": 2}, "predict": [3e15]})
    tf = taskfit.fit_task(points, floor, "arith", spec, seed=0)
    assert isinstance(tf, taskfit.TaskFit) and not tf.identified
    assert tf.identification["step1"] == []  # the task loss still follows its law
    assert any("never leaves its floor or ceiling" in r for r in tf.identification["step2"])
    j = tf.to_json()
    assert j["identified"] == {"step1": True, "step2": False}
    assert j["not_identified"]["step2"] == tf.identification["step2"]
    assert j["predictions"][0]["identified"] is False
    lines = taskfit.summary_lines(taskfit.TaskReport({"arith": {"ladder": tf}}, {}))
    text = "\n".join(lines)
    assert "NOT IDENTIFIED (step 2)" in text
    assert "ladder step 2 (sigmoid Acc(L)): accuracy never leaves its floor" in text
    (pred,) = [ln for ln in lines if "at C=3e+15" in ln]
    assert "accuracy not given (a step is NOT IDENTIFIED)" in pred and "task loss" in pred
    # the figure keeps the runs but draws no chained accuracy for it, and a dotted sigmoid
    fig = taskplots.task_figure(taskfit.TaskReport({"arith": {"ladder": tf}}, {}), "arith")
    ax, bx = fig.axes
    assert (
        len(ax.get_lines()) == 0 and "NOT IDENTIFIED" in ax.get_legend().get_texts()[0].get_text()
    )
    assert [ln.get_linestyle() for ln in bx.get_lines()] == [":"]
    plt.close(fig)


def _law2(**kw) -> tasklaw.SigmoidLaw:
    base = dict(a=0.7, k=-4.0, L0=2.5, b=0.2, n_points=105, rmse=0.01)
    return tasklaw.SigmoidLaw(**(base | kw))


def test_each_identification_test_flags_its_case():
    L = np.linspace(1.5, 4.0, 40)
    acc = tasklaw.sigmoid(L, 0.7, -4.0, 2.5, 0.2)
    assert taskident.step2_reasons(_law2(), L, acc) == []
    good_ci = {"a": (0.68, 0.72), "k": (-4.2, -3.8), "L0": (2.45, 2.55), "b": (0.19, 0.21)}
    assert taskident.step2_reasons(_law2(ci=good_ci), L, acc, failed=3, resamples=100) == []
    flat = np.full_like(L, 0.25) + np.random.default_rng(0).normal(0, 0.01, L.size)
    assert any("floor or ceiling" in r for r in taskident.step2_reasons(_law2(), L, flat))
    # a spread of ~0.6 over a scatter of 0.25 about the curve is within noise
    assert any("floor or ceiling" in r for r in taskident.step2_reasons(_law2(rmse=0.25), L, acc))
    steep = taskident.step2_reasons(_law2(k=-400.0), L, acc)
    assert any("rising part" in r and "fewer than 4" in r for r in steep)
    checks = {
        "k sits at its bound": _law2(bound_hits=("k",)),
        "L0 = 0.55 lies outside its own 95% interval": _law2(L0=0.55, ci={"L0": (0.86, 1.2)}),
        "k's 95% interval [-1.4e+03, -4] spans more than a decade": _law2(ci={"k": (-1400, -4)}),
        "k's 95% interval [-5, 0] reaches zero": _law2(ci={"k": (-5.0, 0.0)}),
        "a's 95% interval [0, 0.9] reaches zero": _law2(ci={"a": (0.0, 0.9)}),
        "L0's 95% interval [0.86, 7.2] is wider": _law2(ci={"L0": (0.86, 7.2)}),
    }
    for reason, law in checks.items():
        assert any(r.startswith(reason) for r in taskident.step2_reasons(law, L, acc)), reason
    assert "60 of 100 bootstrap resamples failed" in taskident.step2_reasons(
        _law2(), L, acc, failed=60, resamples=100
    )
    s1 = tasklaw.TaskLossLaw(E=1.0, A=50.0, B=100.0, alpha=0.3, beta=0.3, n_points=35, cost=0.0)
    assert taskident.step1_reasons(s1, 1.5) == []
    assert taskident.step1_reasons(s1, 0.9)[0].startswith("E = 1 lies above the lowest")
    bad = dataclasses.replace(s1, ci={"alpha": (0.0, 0.5), "E": (0.05, 1.2)}, bound_hits=("beta",))
    assert taskident.step1_reasons(bad, 1.5) == [
        "beta sits at its bound (0.3)", "alpha's 95% interval [0, 0.5] reaches zero",
        "E's 95% interval [0.05, 1.2] spans more than a decade",
    ]  # fmt: skip
    outside = dataclasses.replace(s1, ci={"E": (1.1, 1.3)})
    assert taskident.step1_reasons(outside, 1.5) == [
        "E = 1 lies outside its own 95% interval [1.1, 1.3]: the resampled fits land elsewhere "
        "(a parameter on a boundary, or another basin)"
    ]


def test_batched_bootstrap_gives_the_one_by_one_refits():
    """The batched refits find, resample by resample, the optimum the former loop of scipy refits found
    (the same resamples and starts: the former code, verbatim, on the same seed), so the intervals
    are the same, not merely close within Monte-Carlo noise."""
    points, curves = synthetic(seed=2)
    R = 24
    spec = FitSpec.from_dict({"bootstrap": {"resamples": R, "starts": 2}})
    data = tasklaw.task_data(points, curves, "arith", intermediate=True)
    s1 = tasklaw.fit_task_loss(data.points.N, data.points.D, data.loss)
    s2 = tasklaw.fit_sigmoid(data.pair_loss, data.pair_acc)
    fm = fit_flops_model(points.N, points.fpt)
    grid = np.geomspace(points.C.min(), points.C.max() * 3, 10)
    new = taskfit._bootstrap(data, s1, s2, fm, grid, spec, seed=7)
    assert new["failed"] == 0
    rng = np.random.default_rng(7)
    W = resample_weights(data.points, R, rng)
    screened = tasklaw.screen_starts(data.points.N, data.points.D, data.loss, spec.tasks.delta)
    thetas, sigs = [], []
    for w in W:
        d = taskfit._resample(data, w)
        extra = screened[rng.choice(len(screened), 2, replace=False)]
        th, _ = tasklaw.solve_step1(d.points.N, d.points.D, d.loss, np.vstack([s1.theta, extra]),
                                    spec.tasks.delta)  # fmt: skip
        p0 = np.array([s2.a, s2.k, s2.L0, s2.b])
        sg, _ = tasklaw.solve_step2(d.pair_loss, d.pair_acc, p0)
        thetas.append(th), sigs.append(sg)
    np.testing.assert_allclose(new["thetas"], np.array(thetas), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["sig"], np.array(sigs), rtol=1e-4, atol=1e-5)
    old_acc = tasklaw.sigmoid(optimal_allocation(np.array(thetas), fm, grid)[2],
                              *(np.array(sigs).T[:, :, None]))  # fmt: skip
    np.testing.assert_allclose(np.quantile(new["acc"], [0.025, 0.975], axis=0),
                               np.quantile(old_acc, [0.025, 0.975], axis=0), atol=1e-5)  # fmt: skip


def test_too_few_runs_or_flat_accuracy_are_reasons_not_errors():
    points, curves = synthetic()
    spec = FitSpec.from_dict({"bootstrap": {"resamples": 0}})
    few = points.subset(points.group == 0)
    assert "tasks.min_points" in taskfit.fit_task(few.subset(np.arange(len(few)) < 5), curves,
                                                   "arith", spec)  # fmt: skip
    assert "one compute budget" in taskfit.fit_task(few, curves, "arith", spec)
    flat = curves.with_columns(pl.lit(0.25).alias("accuracy"))
    assert "does not vary" in taskfit.fit_task(points, flat, "arith", spec)


def test_task_names_and_spec():
    points, curves = synthetic()
    assert tasklaw.task_names(curves) == ["arith"]
    assert tasklaw.task_names(None) == []
    spec = FitSpec.from_dict({"tasks": {"names": ["nope"]}})
    with pytest.raises(ScalingError, match="unknown task 'nope'; the runs logged: arith"):
        taskfit.check_names(curves, spec)
    with pytest.raises(ScalingError, match="no run logged a task evaluation"):
        taskfit.check_names(None, spec)
    with pytest.raises(ScalingError, match="min_points"):
        TasksSpec(min_points=5)
    with pytest.raises(ScalingError, match="tasks.resamples"):
        TasksSpec(resamples=-1)
    capped = FitSpec.from_dict({"bootstrap": {"resamples": 500}, "tasks": {"resamples": 12}})
    assert taskfit.fit_task(points, curves, "arith", capped).bootstrap["resamples"] == 12
    with pytest.raises(ScalingError, match="unknown"):
        FitSpec.from_dict({"tasks": {"resample": 3}})


def _add_task_rows(sweep: Path) -> dict[str, float]:
    """Task rows beside each simulated run's eval rows: task loss 0.5 + 1.1 × the eval loss (so of
    the law's additive form), accuracy a sigmoid of it. Returns the sigmoid's parameters."""
    truth = {"a": 0.6, "k": -5.0, "L0": 2.9, "b": 0.15}  # mid-sigmoid over the runs' losses
    for path in sorted(sweep.glob("runs/*/metrics.parquet")):
        m = pl.read_parquet(path)
        ev = m.filter(pl.col("kind") == "eval")
        loss = 0.5 + 1.1 * ev["loss"].to_numpy()
        task = ev.with_columns(
            pl.lit("task/arith").alias("kind"), pl.Series("loss", loss),
            pl.Series("accuracy", tasklaw.sigmoid(loss, *truth.values())),
            pl.lit(12.0).alias("gen_tokens"), pl.lit(64).alias("examples"),
            pl.lit(1e9).alias("eval_flops"),
        )  # fmt: skip
        write_parquet(pl.concat([m, task], how="diagonal_relaxed"), path)
    return truth


@pytest.fixture(scope="module")
def task_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "sweep"
    synth.simulate(out, noise=0.003, seed=4)
    return out, _add_task_rows(out)


def test_scaling_fit_fits_task_laws_when_runs_logged_them(task_sweep, tmp_path, capsys):
    sweep, truth = task_sweep
    out = tmp_path / "fit"
    argv = ["fit", str(sweep), "--out", str(out), "--grid", "small", "--bootstrap", "20"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "task laws (Bhagia et al. 2024)" in text and "task arith:" in text
    data = json.loads((out / "fits.json").read_text())
    fits = data["tasks"]["arith"]["methods"]
    assert set(fits) == {"ladder", "lora"}
    for f in fits.values():
        s2 = f["step2"]
        assert s2["a"] == pytest.approx(truth["a"], abs=0.05)
        assert s2["L0"] == pytest.approx(truth["L0"], abs=0.1)
        assert s2["b"] == pytest.approx(truth["b"], abs=0.05)
        assert f["holdout"]["mae"] < 0.05
        assert f["identified"] == {"step1": True, "step2": True} and f["not_identified"] == {}
        assert len(f["curve"]["acc_lo"]) == len(f["curve"]["C"])
    assert (out / "task-arith.png").is_file() and (out / "task-arith.pdf").is_file()
    # a second fit replaces the first's output (task figures are a fit's own files)
    assert cli.main([*argv, "--no-tasks"]) == 0
    capsys.readouterr()
    assert "tasks" not in json.loads((out / "fits.json").read_text())
    assert not (out / "task-arith.png").exists()


def test_unknown_task_is_one_line_before_fitting(task_sweep, tmp_path, capsys):
    sweep, _ = task_sweep
    code = cli.main(["fit", str(sweep), "--out", str(tmp_path / "f"), "--task", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2 and err[-1] == "scaling fit: error: unknown task 'nope'; the runs logged: arith"
    )
    assert not [line for line in err if line.startswith("fit [")]  # no stage of the fit began
    assert not (tmp_path / "f").exists()
