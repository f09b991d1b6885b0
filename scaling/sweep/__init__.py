"""Stage 1, planning: a sweep spec and budgets in, a run directory of fully specified runs out.

    >>> from scaling import sweep
    >>> spec = sweep.load_spec("sweeps/quickstart.toml")
    >>> p = sweep.build_plan(spec, [1e11, 1e12], from_fit=None)    # runs, dropped points, warnings
    >>> sweep.write(p, "runs/quickstart")                           # the runs that were new

    scaling sweep sweeps/quickstart.toml --flops 1e11 1e12 --dry-run

Modules: :mod:`~scaling.sweep.spec` (the TOML spec), :mod:`~scaling.sweep.inputs` (budgets,
backbones, a prior fit), :mod:`~scaling.sweep.grid` (dial grids), :mod:`~scaling.sweep.planner`
(budgets → runs), :mod:`~scaling.sweep.rundir` (the run directory), :mod:`~scaling.sweep.cli`.
The run record itself (:class:`~scaling.runspec.RunSpec`, run ids) lives in :mod:`scaling.runspec`.
"""

from __future__ import annotations

from scaling.runspec import SPEC_FORMAT_VERSION, RunSpec, budget_label, dial_label, run_id
from scaling.sweep.grid import centred_grid, dial_grid, dial_values, grid_warnings
from scaling.sweep.inputs import check_budgets, load_fit, parse_budgets, resolve_backbone
from scaling.sweep.planner import Dropped, Plan, build_plan, plan
from scaling.sweep.rundir import write
from scaling.sweep.spec import (
    Constraints,
    DatasetSpec,
    GridSpec,
    OptimizerSpec,
    SweepSpec,
    TrainSpec,
    load_spec,
)

__all__ = [
    "SPEC_FORMAT_VERSION", "Constraints", "DatasetSpec", "Dropped", "GridSpec", "OptimizerSpec",
    "Plan", "RunSpec", "SweepSpec", "TrainSpec", "budget_label", "build_plan", "centred_grid",
    "check_budgets", "dial_grid", "dial_label", "dial_values", "grid_warnings",
    "load_fit", "load_spec", "parse_budgets", "plan", "resolve_backbone", "run_id", "write",
]  # fmt: skip
