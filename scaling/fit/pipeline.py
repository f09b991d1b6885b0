"""Scaling-law fits: a table of runs in, typed results out. Importable without torch.

    >>> from scaling import fit
    >>> from scaling.fit import collect
    >>> spec = fit.load_spec("analysis/default.toml")
    >>> runs = collect.collect(["runs/quickstart"])                   # tidy table of every run
    >>> report = fit.fit(runs.table(spec), spec, fit.Columns.for_runs(spec), curves=runs.curves)
    >>> m = report.methods["ladder"]
    >>> m.approach3.alpha, m.approach3.ci["alpha"]                     # L = E + A/N^α + B/D^β
    >>> m.approach2.n_opt.A, m.approach2.n_opt.a                      # N*(C) = A·C^a (isoFLOP minima)
    >>> report.to_json()["methods"]["ladder"]["optimal_params"]       # what `scaling sweep --from-fit` reads

Per method (docs/fitting.md has the methodology and its traps):

* approach 3 (:mod:`scaling.fit.approach3`, :mod:`scaling.fit.laws`): L(N, D) = E + A/N^α + B/D^β on every point, log-space LSE
  parametrisation, SUM of Huber(δ = 1e-3), L-BFGS-B with analytic gradients from Chinchilla's 4500-start
  grid run as one batch; the spread of objectives over starts and any bound hit are reported. The
  compute-optimal N*(C), D*(C), L*(C) minimise L(N, C/F(N)) with the runs' own FLOPs per token F(N)
  (:func:`scaling.fit.frontier.optimal_allocation`), not 6·N·D.
* approach 2 (:mod:`scaling.fit.isoflop`): per-budget parabolas on ±1 decade around each budget's
  lowest point, with the interior-minimum guard, then power laws N*(C), D*(C) and L*(C) = E + A·C^−α.
* approach 1 (:mod:`scaling.fit.frontier`): the envelope of the runs' loss-vs-FLOPs curves, when per-step
  logs are given.
* bootstrap CIs (runs resampled within each budget, every fit repeated on each resample, vectorised,
  :mod:`scaling.fit.bootstrap`), a held-out check (fit the smaller budgets, predict the largest with an
  interior isoFLOP minimum: MAPE, signed bias, each approach's L* error; :mod:`scaling.fit.holdout`),
  rolling held-out checks that give each interval's empirical coverage, widen the predictions' L*
  intervals for a law that does not hold and say which approach to trust
  (:mod:`scaling.fit.calibration`, :mod:`scaling.fit.trust`; ``holdout.rolling``; each method's
  τ from all methods' folds where they show more than its own, ``holdout.pool``) and, across
  methods, every method against one reference by the approach with the lowest held-out error:
  compute multipliers at equal loss (extrapolations marked), crossovers and exponent differences
  (:mod:`scaling.fit.compare`).
* task laws (:mod:`scaling.fit.tasklaw`, :mod:`scaling.fit.taskfit`), when the runs logged task evaluations: compute → task loss
  L(N, D), then task loss → accuracy through a sigmoid (Bhagia et al. 2024), chained into accuracy vs
  compute, with the same bootstrap and held-out check.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from scaling.errors import ScalingError
from scaling.fit.bootstrap import fit_method
from scaling.fit.calibration import RollingCheck, pool_checks
from scaling.fit.compare import compare
from scaling.fit.lbfgs import single_threaded_blas
from scaling.fit.points import Columns, prepare
from scaling.fit.results import FitReport, MethodFit
from scaling.fit.spec import FitSpec
from scaling.fit.taskfit import check_names, fit_tasks
from scaling.fit.trust import assess, check_method, forms_of, trusted_advice, with_assessment


def fit(
    table,
    spec: FitSpec | None = None,
    cols: Columns | None = None,
    *,
    curves=None,
    source: str = "the table",
    inputs: list[str] | None = None,
    described: str | None = None,
    progress=None,
) -> FitReport:
    """Every fit for every method of ``table`` (polars DataFrame; ``cols`` names its columns,
    default: a collected sweep table). ``curves``: per-step metrics (run_id, kind, step, flops,
    tokens, loss) for approach 1. ``described``: the summary header's account of what was read (a
    table's columns; default: the N convention and loss of collected runs). ``progress``: called with
    each stage's name as it starts (and ``None`` at the end), for the CLI's progress display.
    Raises ScalingError when nothing can be fitted."""
    with single_threaded_blas():
        return _fit(table, spec, cols, curves=curves, source=source, inputs=inputs,
                    described=described, progress=progress or (lambda stage: None))  # fmt: skip


def _fit(table, spec, cols, *, curves, source, inputs, described, progress) -> FitReport:
    spec = spec or FitSpec()
    cols = cols or Columns.for_runs(spec)
    check_names(curves, spec)  # a task asked for that no run logged: refused before any fit
    prep = prepare(table, spec, cols, source=source)
    exclusions, warnings = list(prep.exclusions), list(prep.warnings)
    methods: dict[str, MethodFit] = {}
    failures = []
    checks: dict[str, RollingCheck] = {}
    for i, (m, points) in enumerate(prep.points.items()):
        result = fit_method(points, spec, curves=curves, seed=[spec.bootstrap.seed, i],
                            progress=lambda stage, m=m: progress(f"{m}: {stage}"))  # fmt: skip
        if isinstance(result, str):
            failures.append(f"{m}: {result}")
            continue
        mf, dropped = result
        exclusions += dropped
        if spec.holdout.budgets and spec.holdout.rolling:
            checks[m] = check_method(mf, spec, seed=[spec.bootstrap.seed, i],
                                     progress=lambda stage, m=m: progress(
                                         f"{m}: rolling check, {stage}"))  # fmt: skip
        methods[m] = dataclasses.replace(mf, best_lr_multiplier=prep.best_lr.get(m))
    if not methods:
        raise ScalingError("nothing could be fitted: " + "; ".join(failures))
    if spec.holdout.pool and len(checks) > 1:  # each method's τ: its own, or the sweep's if larger
        checks = pool_checks(checks, {m: forms_of(methods[m]) for m in checks})
    for m, check in checks.items():
        methods[m] = with_assessment(methods[m], assess(methods[m], spec, check=check))
    warnings += [f"{f} (method left out)" for f in failures]
    if spec.n in ("backbone", "total"):
        warnings.append(
            f"N is {spec.n} parameters: optimal_params (read by `scaling sweep --from-fit`) is in "
            "that convention; the planner re-centres on backbones only for a ladder of them"
        )
    if len(methods) > 1:
        progress("method comparison")
    comparison = compare(methods, spec) if len(methods) > 1 else None
    advice: list[dict[str, Any]] = []
    if spec.gpu_mem:  # advice plans configurations (scaling.sweep): imported only when asked
        from scaling.fit.advice import advise

        advice = [trusted_advice(a, methods) for a in advise(table, methods, spec)]
    # task laws (compute → task loss → accuracy) on the points each method's loss laws were fitted on
    tasks = fit_tasks({m: mf.points for m, mf in methods.items()}, curves, spec, progress)
    progress(None)
    return FitReport(spec, methods, comparison, exclusions, warnings, advice, inputs or [source],
                     described, tasks=tasks)  # fmt: skip
