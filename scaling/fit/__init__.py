"""Stage 4, fitting: collect a sweep's runs, fit scaling laws and compute frontiers, compare methods,
draw the figures. Importable without torch.

    >>> from scaling import fit
    >>> from scaling.fit import collect
    >>> spec = fit.load_spec("analysis/default.toml")
    >>> runs = collect.collect(["runs/quickstart"])
    >>> report = fit.fit(runs.table(spec), spec, fit.Columns.for_runs(spec), curves=runs.curves)

    scaling fit runs/quickstart --predict 1e13 --gpu-mem 12GB

Modules, in the order data flows: :mod:`~scaling.fit.collect` (run directories → one table),
:mod:`~scaling.fit.spec` (fit specs), :mod:`~scaling.fit.points` (table → per-method points),
:mod:`~scaling.fit.laws` and :mod:`~scaling.fit.lbfgs` (the LSE law and its batched optimiser),
:mod:`~scaling.fit.approach3`, :mod:`~scaling.fit.isoflop` (approach 2), :mod:`~scaling.fit.frontier`
(power laws in C, approach 1, optimal allocation), :mod:`~scaling.fit.bootstrap` (intervals),
:mod:`~scaling.fit.holdout` (the held-out check), :mod:`~scaling.fit.calibration` (rolling held-out
checks, coverage, intervals widened for misspecification), :mod:`~scaling.fit.trust` (which approach
to trust), :mod:`~scaling.fit.coverage` (their coverage on synthetic sweeps), :mod:`~scaling.fit.compare`, :mod:`~scaling.fit.advice`, :mod:`~scaling.fit.results` (typed
results), :mod:`~scaling.fit.pipeline` (all of it per method), :mod:`~scaling.fit.report` (files and
summary), :mod:`~scaling.fit.plots` (figures; plots never fit), :mod:`~scaling.fit.synth` (simulated
sweeps with a known answer), :mod:`~scaling.fit.cli`.
"""

from __future__ import annotations

from scaling.fit.pipeline import fit
from scaling.fit.points import Columns, Exclusion, Points, Prepared, prepare
from scaling.fit.results import (
    FORMAT_VERSION,
    ChinchillaFit,
    EnvelopeFit,
    FitReport,
    Holdout,
    MethodFit,
    OptimalParams,
    Prediction,
)
from scaling.fit.spec import FitSpec, load_spec

__all__ = [
    "FORMAT_VERSION", "ChinchillaFit", "Columns", "EnvelopeFit", "Exclusion", "FitReport", "FitSpec",
    "Holdout", "MethodFit", "OptimalParams", "Points", "Prediction", "Prepared", "fit", "load_spec",
    "prepare",
]  # fmt: skip
