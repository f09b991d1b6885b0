"""Task scaling laws (:mod:`scaling.fit.tasklaw`, :mod:`scaling.fit.taskfit`): the two-step fit recovers known laws from synthetic
runs, its intervals and held-out check, and ``scaling fit`` on runs that logged task evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from scaling import cli
from scaling.errors import ScalingError
from scaling.fit import synth, taskfit, tasklaw
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
    h = tf.holdout
    assert h.held_out == (1e15,) and h.n_test == 7 and h.n_train == 28
    assert h.mae < 0.03 and abs(h.bias) < 0.03 and h.loss_mape < 0.02
    (q,) = tf.predictions
    assert q["extrapolated"] and q["ci"]["accuracy"][0] <= q["accuracy"] <= q["ci"]["accuracy"][1]
    json.dumps(tf.to_json())  # every field is JSON


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
