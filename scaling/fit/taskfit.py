"""Task scaling laws per method and task: the two steps of :mod:`scaling.fit.tasklaw` chained into
accuracy vs compute, with bootstrap intervals, a held-out check and predictions.

    >>> from scaling.fit import taskfit
    >>> tf = taskfit.fit_task(points, curves, "arith", spec)      # one method's points (a TaskFit)
    >>> tf.step1.alpha, tf.step2.L0, tf.curve["acc"], tf.holdout.mae
    >>> report = taskfit.fit_tasks({"ladder": points}, curves, spec)   # every task and method

Chained: the accuracy at compute C is Acc(L*(C)), L*(C) = min over N of L(N, C/F(N)) with the runs'
own FLOPs per token F(N) (:func:`scaling.fit.frontier.optimal_allocation`); Acc is decreasing in L, so
this is also the most accurate allocation the law knows. Intervals: the runs are resampled within each
isoFLOP budget (:func:`scaling.fit.bootstrap.resample_weights`) and both steps refitted on every
resample at once (a run's evaluations travel with it: its counts weight them). Each step is then
checked for identification (:mod:`scaling.fit.taskident`): a step the data do not pin down is marked
NOT IDENTIFIED with its reasons, and no accuracy is then reported as a result. Held-out check: both
steps refitted without the largest budget(s), the held-out runs' accuracies predicted from their N and
D (mean absolute error in accuracy points, signed bias, and the task loss's MAPE).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import polars as pl

from scaling.errors import ScalingError
from scaling.fit.bootstrap import bands, interval, resample_weights
from scaling.fit.frontier import FlopsModel, fit_flops_model, optimal_allocation
from scaling.fit.points import Points
from scaling.fit.taskident import step1_reasons, step2_reasons
from scaling.fit.tasklaw import (
    CURVE_POINTS,
    STEP1_NAMES,
    STEP2_NAMES,
    SigmoidLaw,
    TaskData,
    TaskLossLaw,
    fit_sigmoid,
    fit_task_loss,
    refit_step1,
    refit_step2,
    screen_starts,
    sigmoid,
    step2_starts,
    task_data,
    task_names,
)


@dataclasses.dataclass(frozen=True)
class TaskHoldout:
    """Both steps refitted without the largest budget(s); the held-out runs' accuracies predicted."""

    held_out: tuple[float, ...]
    n_train: int
    n_test: int
    run_id: tuple[str, ...] = ()
    observed: tuple[float, ...] = ()
    predicted: tuple[float, ...] = ()
    mae: float | None = None
    """Mean |Âcc − Acc| over the held-out runs, in accuracy (0–1)."""
    bias: float | None = None
    """Mean (Âcc − Acc): positive, the law promises more accuracy than the runs reached."""
    loss_mape: float | None = None
    """Step 1 alone: mean |L̂ − L| / L of the held-out runs' task losses."""
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class TaskFit:
    """One method's two-step law for one task evaluation."""

    task: str
    method: str
    run_id: np.ndarray
    C: np.ndarray
    N: np.ndarray
    D: np.ndarray
    loss: np.ndarray
    """Final task loss of each run."""
    accuracy: np.ndarray
    """Final accuracy of each run."""
    pairs: int
    """(task loss, accuracy) pairs step 2 was fitted on."""
    step1: TaskLossLaw
    step2: SigmoidLaw
    flops: FlopsModel
    curve: dict[str, np.ndarray]
    """On a log grid of C: N*, D*, task loss L* and accuracy Acc(L*), with ``<col>_lo``/``_hi`` bands."""
    budgets: np.ndarray
    holdout: TaskHoldout | None
    predictions: tuple[dict[str, Any], ...] = ()
    bootstrap: dict[str, int] = dataclasses.field(default_factory=dict)
    identification: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Why each step (``step1``, ``step2``) is not identified
    (:func:`scaling.fit.taskident.step1_reasons`, :func:`~scaling.fit.taskident.step2_reasons`); []
    when it is. The chained accuracy, its band and the predicted accuracies hold only when both are."""

    @property
    def identified(self) -> bool:
        """Both steps identified: the accuracy-vs-compute law is a result."""
        return not any(self.identification.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "method": self.method, "n_runs": len(self.run_id),
            "pairs": self.pairs, "budgets": self.budgets.tolist(),
            "step1": self.step1.to_json(), "step2": self.step2.to_json(),
            "flops_per_token": self.flops.to_json(),
            "runs": {"run_id": self.run_id.tolist(), "C": self.C.tolist(), "N": self.N.tolist(),
                     "D": self.D.tolist(), "loss": self.loss.tolist(),
                     "accuracy": self.accuracy.tolist()},
            "curve": {k: np.asarray(v).tolist() for k, v in self.curve.items()},
            "holdout": self.holdout and self.holdout.to_json(),
            "predictions": list(self.predictions), "bootstrap": self.bootstrap,
            "identified": {k: not v for k, v in self.identification.items()},
            "not_identified": {k: v for k, v in self.identification.items() if v},
        }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The fit of one method and task


def fit_task(points: Points, curves: pl.DataFrame, task: str, spec, *, seed=0) -> TaskFit | str:
    """Both steps, the chained accuracy-vs-compute curve with bootstrap bands, predictions at
    ``spec.predict`` and the held-out check; or why not (a one-line reason)."""
    ts = spec.tasks
    data = task_data(points, curves, task, intermediate=ts.intermediate)
    p = data.points
    if len(p) < ts.min_points:
        return (f"{len(p)} run(s) with a final {task} evaluation; step 1 needs "
                f"tasks.min_points = {ts.min_points}")  # fmt: skip
    if len(p.budgets) < 2:
        return "one compute budget: task loss vs compute is not identified"
    if len(data.pair_loss) < 5 or np.ptp(data.pair_acc) <= 0:
        return "accuracy does not vary across evaluations: no sigmoid to fit"
    try:
        step1 = fit_task_loss(p.N, p.D, data.loss, delta=ts.delta)
        step2 = fit_sigmoid(data.pair_loss, data.pair_acc)
    except ValueError as e:
        return str(e)
    fm = fit_flops_model(p.N, p.fpt)
    lo_c = float(p.C.min())
    hi_c = float(max(p.C.max(), *(spec.predict or [0.0])))
    grid = np.geomspace(lo_c, hi_c * 3, CURVE_POINTS)
    Nc, Dc, Lc = optimal_allocation(step1.theta, fm, grid)
    curve = {"C": grid, "N": Nc, "D": Dc, "L": Lc, "acc": step2.predict(Lc)}
    boot = _bootstrap(data, step1, step2, fm, grid, spec, seed)
    level = spec.bootstrap.level
    if boot["thetas"] is not None:
        step1 = dataclasses.replace(step1, ci=_cis(boot["thetas"], STEP1_NAMES, level, step1=True))
        step2 = dataclasses.replace(step2, ci=_cis(boot["sig"], STEP2_NAMES, level))
        for key, s in (("L", boot["L"]), ("acc", boot["acc"])):
            lo, hi = bands(s, level)
            curve[f"{key}_lo"], curve[f"{key}_hi"] = lo, hi
    predictions = []
    for c in spec.predict:
        n, d, loss = optimal_allocation(step1.theta, fm, np.array([c]))
        q = {"C": float(c), "n_opt": float(n[0]), "d_opt": float(d[0]), "loss": float(loss[0]),
             "accuracy": float(step2.predict(loss)[0]), "extrapolated": bool(c > p.C.max() * 1.01)}  # fmt: skip
        if boot["thetas"] is not None:
            bn, bd, bl = optimal_allocation(boot["thetas"], fm, np.array([c]))
            bacc = sigmoid(bl[:, 0], *boot["sig"].T)
            q["ci"] = {"loss": interval(bl[:, 0], spec.bootstrap.level),
                       "accuracy": interval(bacc, spec.bootstrap.level)}  # fmt: skip
        predictions.append(q)
    R = boot["resamples"]
    ident = {
        "step1": step1_reasons(step1, float(data.loss.min()), failed=boot["failed_step1"],
                               resamples=R, level=level),
        "step2": step2_reasons(step2, data.pair_loss, data.pair_acc, failed=boot["failed_step2"],
                               resamples=R, level=level),
    }  # fmt: skip
    for q in predictions:  # the chained accuracy holds only where both steps do
        q["identified"] = not any(ident.values())
    return TaskFit(
        task=task, method=p.method, run_id=p.run_id, C=p.C, N=p.N, D=p.D, loss=data.loss,
        accuracy=data.accuracy, pairs=len(data.pair_loss), step1=step1, step2=step2, flops=fm,
        curve=curve, budgets=p.budgets, holdout=_holdout(data, spec),
        predictions=tuple(predictions),
        bootstrap={"resamples": R, "failed": boot["failed"]}, identification=ident,
    )  # fmt: skip


def _resample(data: TaskData, counts: np.ndarray) -> TaskData:
    """The runs repeated ``counts`` times, each with its own evaluations (step 2's pairs)."""
    idx = np.repeat(np.arange(len(counts)), counts.astype(int))
    pair_idx = np.concatenate([np.flatnonzero(data.pair_run == i) for i in idx])
    return dataclasses.replace(
        data, points=_take(data.points, idx), loss=data.loss[idx], accuracy=data.accuracy[idx],
        pair_run=data.pair_run[pair_idx], pair_loss=data.pair_loss[pair_idx],
        pair_acc=data.pair_acc[pair_idx],
    )  # fmt: skip


def _take(p: Points, idx: np.ndarray) -> Points:
    return dataclasses.replace(p, run_id=p.run_id[idx], N=p.N[idx], D=p.D[idx], C=p.C[idx],
                               L=p.L[idx], group=p.group[idx],
                               P=None if p.P is None else p.P[idx])  # fmt: skip


def _bootstrap(data, step1, step2, fm, grid, spec, seed) -> dict[str, Any]:
    """Both steps refitted on runs resampled within each budget, every resample at once
    (:func:`scaling.fit.tasklaw.refit_step1`, :func:`~scaling.fit.tasklaw.refit_step2`: the same
    objectives and starts as the former one-by-one scipy refits, which ``bench/task_bootstrap.py``
    times against them on the same draws). Step 1 starts from the point
    estimate and ``bootstrap.starts`` of the grid's screened starts drawn per resample; step 2 from
    the point estimate and curve_fit's default starts. A resample fails when a step has no finite
    optimum, or when its evaluations' accuracies do not vary (no sigmoid)."""
    R = min(spec.bootstrap.resamples, spec.tasks.resamples)
    out: dict[str, Any] = {"resamples": R, "failed": 0, "failed_step1": 0, "failed_step2": 0,
                           "thetas": None}  # fmt: skip
    if R == 0:
        return out
    rng = np.random.default_rng(seed)
    W = resample_weights(data.points, R, rng)
    screened = screen_starts(data.points.N, data.points.D, data.loss, spec.tasks.delta)
    k = min(spec.bootstrap.starts, len(screened))
    starts = np.stack([np.vstack([step1.theta, screened[rng.choice(len(screened), k, replace=False)]])
                       for _ in range(R)])  # fmt: skip
    th, _ = refit_step1(data.points.N, data.points.D, data.loss, W, starts, spec.tasks.delta)
    Wp = W[:, data.pair_run]  # a pair counts as often as its run was drawn
    p0 = np.array([step2.a, step2.k, step2.L0, step2.b])
    sg, _ = refit_step2(data.pair_loss, data.pair_acc, Wp,
                        np.vstack([p0, step2_starts(data.pair_loss, data.pair_acc)]))  # fmt: skip
    drawn = Wp > 0
    flat = (np.where(drawn, data.pair_acc, -np.inf).max(axis=1)
            <= np.where(drawn, data.pair_acc, np.inf).min(axis=1))  # fmt: skip
    ok1, ok2 = np.isfinite(th).all(axis=1), np.isfinite(sg).all(axis=1) & ~flat
    ok = ok1 & ok2
    out |= {"failed": int((~ok).sum()), "failed_step1": int((~ok1).sum()),
            "failed_step2": int((~ok2).sum())}  # fmt: skip
    if ok.sum() < 10:
        return out
    th, sg = th[ok], sg[ok]
    _, _, L = optimal_allocation(th, fm, grid)
    acc = sigmoid(L, sg[:, 0, None], sg[:, 1, None], sg[:, 2, None], sg[:, 3, None])
    return out | {"thetas": th, "sig": sg, "L": L, "acc": acc}


def _cis(samples: np.ndarray, names, level: float, *, step1: bool = False) -> dict:
    if step1:  # θ = (log A, log B, α, β, log E) → E, A, B, α, β
        a, b, al, be, e = samples.T
        cols = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": al, "beta": be}
    else:
        cols = dict(zip(names, samples.T, strict=True))
    out = {k: interval(v, level) for k, v in cols.items()}
    return {k: v for k, v in out.items() if v is not None}


def _holdout(data: TaskData, spec) -> TaskHoldout | None:
    k = spec.holdout.budgets
    p = data.points
    if k == 0:
        return None
    held = p.budgets[-k:]
    test = p.group >= len(p.budgets) - k
    train = ~test
    base = {"held_out": tuple(float(c) for c in held), "n_train": int(train.sum()),
            "n_test": int(test.sum())}  # fmt: skip
    if len(p.budgets) - k < 2 or train.sum() < spec.tasks.min_points:
        return TaskHoldout(**base, reason="too few budgets or runs left to fit on")
    tr = _resample(data, train.astype(int))
    try:
        s1 = fit_task_loss(tr.points.N, tr.points.D, tr.loss, delta=spec.tasks.delta)
        if len(tr.pair_loss) < 5 or np.ptp(tr.pair_acc) <= 0:
            raise ValueError("accuracy does not vary on the smaller budgets")
        s2 = fit_sigmoid(tr.pair_loss, tr.pair_acc)
    except ValueError as e:
        return TaskHoldout(**base, reason=str(e))
    L_hat = s1.predict(p.N[test], p.D[test])
    acc_hat = s2.predict(L_hat)
    obs = data.accuracy[test]
    return TaskHoldout(
        **base, run_id=tuple(p.run_id[test].tolist()), observed=tuple(obs.tolist()),
        predicted=tuple(acc_hat.tolist()), mae=float(np.mean(np.abs(acc_hat - obs))),
        bias=float(np.mean(acc_hat - obs)),
        loss_mape=float(np.mean(np.abs(L_hat - data.loss[test]) / data.loss[test])),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Every method and task of a fit


@dataclasses.dataclass(frozen=True, eq=False)
class TaskReport:
    """Every task's fits: ``fits[task][method]``, and why a method has none (``skipped``)."""

    fits: dict[str, dict[str, TaskFit]]
    skipped: dict[str, dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {t: {"methods": {m: f.to_json() for m, f in self.fits.get(t, {}).items()},
                    "skipped": self.skipped.get(t, {})}
                for t in sorted({*self.fits, *self.skipped})}  # fmt: skip


def check_names(curves: pl.DataFrame | None, spec) -> list[str]:
    """The tasks the runs logged; a one-line ScalingError when ``spec.tasks.names`` asks for one
    they did not (checked before any fit, so a typo costs nothing)."""
    available = task_names(curves)
    if not spec.tasks.enabled or not spec.tasks.names:
        return available
    if not available:
        raise ScalingError(f"task {spec.tasks.names[0]!r} asked for, but no run logged a task "
                           "evaluation (metrics.parquet rows of kind task/<name>)")  # fmt: skip
    unknown = [t for t in spec.tasks.names if t not in available]
    if unknown:
        raise ScalingError(f"unknown task {unknown[0]!r}; the runs logged: {', '.join(available)}")
    return available


def fit_tasks(points: dict[str, Points], curves: pl.DataFrame | None, spec,
              progress=lambda stage: None) -> TaskReport | None:  # fmt: skip
    """Task laws for every task evaluation in ``curves`` (or ``spec.tasks.names``) and every method of
    ``points``; None when task laws are off or no run has a task evaluation."""
    available = check_names(curves, spec)
    if not spec.tasks.enabled or not available:
        return None
    fits: dict[str, dict[str, TaskFit]] = {}
    skipped: dict[str, dict[str, str]] = {}
    for task in spec.tasks.names or available:
        for i, (m, pts) in enumerate(points.items()):
            progress(f"{m}: task law {task}")
            result = fit_task(pts, curves, task, spec, seed=[spec.bootstrap.seed, 1000 + i])
            if isinstance(result, str):
                skipped.setdefault(task, {})[m] = result
            else:
                fits.setdefault(task, {})[m] = result
    return TaskReport(fits, skipped)


# --------------------------------------------------------------------------------------------------
# The summary's lines


def _g(x, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _ci(ci: dict, key: str, digits: int = 3) -> str:
    v = ci.get(key)
    return "" if not v else f" [{_g(v[0], digits)}, {_g(v[1], digits)}]"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]  # fmt: skip


STEPS = {"step1": "step 1 (task loss L(N, D))", "step2": "step 2 (sigmoid Acc(L))"}


def _law(f: TaskFit) -> str:
    bad = [k[-1] for k in ("step1", "step2") if f.identification.get(k)]
    return "identified" if not bad else f"NOT IDENTIFIED (step {', '.join(bad)})"


def summary_lines(tasks: TaskReport | None) -> list[str]:
    """The summary's task-law block: both steps per task and method with their intervals, whether
    each is identified (and why not), the held-out check and predictions (the accuracy only where
    both steps are identified); nothing when the runs logged no task evaluation."""
    if tasks is None:
        return []
    lines = ["", "task laws (Bhagia et al. 2024): task loss L(N, D) = E + A/N^α + B/D^β, then "
             "Acc(L) = a / (1 + e^(−k(L − L0))) + b; accuracy at C is Acc(L*(C))"]  # fmt: skip
    for task in sorted({*tasks.fits, *tasks.skipped}):
        rows = []
        for m, f in tasks.fits.get(task, {}).items():
            s1, s2, h = f.step1, f.step2, f.holdout
            rows.append((
                m, str(len(f.run_id)), str(f.pairs), _g(s1.E, 4) + _ci(s1.ci, "E"),
                _g(s1.alpha) + _ci(s1.ci, "alpha"), _g(s1.beta) + _ci(s1.ci, "beta"),
                _g(s2.a) + _ci(s2.ci, "a"), _g(s2.k) + _ci(s2.ci, "k"),
                _g(s2.L0, 4) + _ci(s2.ci, "L0", 4), _g(s2.b) + _ci(s2.ci, "b"), f"{s2.rmse:.3f}",
                "-" if h is None or h.mae is None else f"{h.mae:.3f} / {h.bias:+.3f}",
                "-" if h is None or h.loss_mape is None else f"{h.loss_mape:.2%}",
                _law(f), h.reason if h is not None and h.reason else "",
            ))  # fmt: skip
        lines += ["", f"task {task}:"]
        if rows:
            lines += _table(("method", "runs", "evals", "E", "α", "β", "a", "k", "L0", "b",
                             "acc rmse", "held-out acc MAE / bias", "held-out L MAPE", "law",
                             "note"), rows)  # fmt: skip
        unknown = [(m, step, r) for m, f in tasks.fits.get(task, {}).items()
                   for step, rs in f.identification.items() for r in rs]  # fmt: skip
        if unknown:
            lines.append("  not identified (the data do not pin these steps down; a step-2 law "
                         "gives no accuracy vs compute):")  # fmt: skip
            lines += [f"    {m} {STEPS[step]}: {r}" for m, step, r in unknown]
        lines += [f"  {m}: no task law — {why}" for m, why in tasks.skipped.get(task, {}).items()]
        for m, f in tasks.fits.get(task, {}).items():
            s1_ok, s2_ok = (not f.identification.get(k) for k in ("step1", "step2"))
            for q in f.predictions:
                ci = q.get("ci") or {}
                lines.append(
                    f"  {m} at C={_g(q['C'])}: N*={_g(q['n_opt'])}, task loss "
                    f"{_g(q['loss'], 4)}{_ci(ci, 'loss', 4)}"
                    + ("" if s1_ok else " (step 1 NOT IDENTIFIED)") + ", accuracy "
                    + (f"{_g(q['accuracy'])}{_ci(ci, 'accuracy')}" if s1_ok and s2_ok
                       else "not given (a step is NOT IDENTIFIED)")
                    + (" (extrapolated)" if q["extrapolated"] else "")
                )  # fmt: skip
    return lines
