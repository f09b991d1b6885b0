"""isoFLOP sweep planning: budgets and dial grids in, one fully specified run per point out.

    >>> from scaling import sweep
    >>> spec = sweep.load_spec()                      # the built-in default (= sweeps/default.toml)
    >>> runs = sweep.plan(spec, [1e17, 1e18])         # list[RunSpec], one per (budget, backbone,
    >>> runs[0].run_id                                #   method, dial value, seed)
    'ladder-r2-1e17-s0-…'
    >>> p = sweep.build_plan(sweep.load_spec("sweeps/quickstart.toml"), from_fit="fits.json")
    >>> p.dropped, p.warnings                         # what was left out and why; grid warnings

Tokens come from the exact training FLOPs per token of each configuration (:func:`scaling.flops.cost`),
never 6·N·D: D = C / F(config, seq_len). Steps are derived, never typed: steps = round(D / B) for a
batch of B tokens; the run trains on D' = steps·B tokens and spends C' = D'·F, which must lie within
``constraints.tolerance`` (1%) of C — guaranteed once steps ≥ 50, since |C'/C − 1| ≤ 1 / (2·steps).
A point that breaks a constraint (too few steps, too many epochs, too much memory, a budget it cannot
hit) is dropped and listed with its reason, never silently. With a fit (``from_fit``), each budget's
grid is centred on the fitted optimum (:func:`scaling.sweep.grid.centred_grid`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from scaling import flops, methods
from scaling.errors import ScalingError
from scaling.runspec import RunSpec, budget_label, run_id
from scaling.sweep.grid import centred_grid, dial_grid, grid_targets, grid_warnings, swept_dial
from scaling.sweep.inputs import check_budgets, read_fit, resolve_backbone
from scaling.sweep.levers import Fitted, fit_to_memory
from scaling.sweep.spec import SweepSpec, load_spec

BACKBONE_AXES = ("backbone", "total")
"""N conventions of a fit whose size axis is the backbone: its N*(C) picks backbones, not dials."""


@dataclasses.dataclass(frozen=True)
class Dropped:
    """A point left out of the plan, and why."""

    budget: float
    backbone: str
    method: str
    dial: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Plan:
    spec: SweepSpec
    budgets: list[float]
    runs: list[RunSpec]
    dropped: list[Dropped]
    warnings: list[str]
    fit: dict[str, tuple[float, float]] | None = None

    @property
    def identity(self) -> str:
        return self.spec.identity()

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.spec.name,
            "spec_hash": self.identity,
            "spec": self.spec.to_dict(),
            "budgets": self.budgets,
            "fit": {m: {"A": A, "a": a} for m, (A, a) in self.fit.items()} if self.fit else None,
            "runs": [r.to_dict() for r in self.runs],
            "dropped": [dataclasses.asdict(d) for d in self.dropped],
            "warnings": self.warnings,
        }


def _axes_label(method: str, spec: SweepSpec, cfg: methods.MethodConfig, placed: bool) -> str:
    """``reduction=8``: the values of the method's grid axes (its swept dial when none)."""
    table = spec.method.get(method, {})
    keys = [k for k, v in table.items() if isinstance(v, (list, dict))]
    dial = swept_dial(spec, method)
    if dial and (placed or not keys) and dial not in keys:
        keys.insert(0, dial)
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in keys)


def build_plan(
    spec: SweepSpec,
    budgets: list[float] | None = None,
    *,
    from_fit: str | Path | dict[str, Any] | None = None,
    gpu_mem: str | None = None,
) -> Plan:
    """Lay out every (budget, backbone, method, dial, seed) run; list dropped points and warnings."""
    if gpu_mem is not None:
        spec = spec.replace(constraints=spec.constraints.replace(gpu_mem=gpu_mem))
    budgets = check_budgets(list(spec.budgets if budgets is None else budgets))
    fits = read_fit(from_fit) if from_fit is not None else None
    fit = fits.laws if fits is not None else None
    gpu_mem = spec.constraints.gpu_mem
    cap = flops.parse_bytes(gpu_mem) if gpu_mem else None
    grids = {m: dial_grid(spec, m) for m in spec.methods}
    dials = {m: swept_dial(spec, m) for m in spec.methods}
    backbones = {ref: resolve_backbone(ref, inline) for ref, inline in spec.backbone_refs().items()}
    sizes = {ref: flops.backbone_params(arch).total for ref, (arch, _) in backbones.items()}
    costs: dict[tuple, Any] = {}
    runs: list[RunSpec] = []
    dropped: list[Dropped] = []
    warnings: list[str] = []
    ladder = {}  # method → N*(C) law in backbone parameters: pick family members per budget
    if fits is not None:
        for m in spec.methods:
            law = _backbone_law(fits, m, sizes, warnings)
            if law is not None:
                ladder[m] = law
            elif not any(fits.law(m, ref) for ref in backbones):
                why = fits.why_missing(m)
                warnings.append(
                    f"{m}: the fit has no identified N*(C) law ({why}); its grid is not re-centred"
                    if why
                    else f"{m}: the fit has no entry for it; its grid is not re-centred"
                )
    for budget in budgets:
        cheapest = math.inf
        members, on_ladder = {}, {m: [] for m in spec.methods}
        for m, (A, a) in ladder.items():
            members[m], notes = nearest_members(sizes, A * budget**a, spec.grid)
            warnings += [f"{budget_label(budget)} {m}: {w}" for w in notes]
        for ref, (arch, hf_config) in backbones.items():
            for m in spec.methods:
                if m in members and ref not in members[m]:
                    continue  # a family member far from this budget's N*(C)
                found = fits.law(m, ref) if fits is not None and m not in ladder else None
                if found is not None and fits.n.get(found[0]) in BACKBONE_AXES:
                    found = None  # a law in backbone parameters does not size a dial
                placed = found is not None and dials[m] is not None
                cfgs = grids[m]
                if placed:
                    A, a = found[1]
                    cfgs = centred_grid(grids[m], arch, spec.seq_len, A * budget**a, spec.grid,
                                        dials[m])  # fmt: skip
                kept: list[int] = []
                for cfg in cfgs:
                    label = _axes_label(m, spec, cfg, placed)
                    key = (ref, cfg)
                    if key not in costs:
                        try:
                            costs[key] = _sized(spec, arch, cfg, cap)
                        except ScalingError as e:
                            costs[key] = str(e)
                    if isinstance(costs[key], str):
                        dropped.append(Dropped(budget, ref, m, label, costs[key]))
                        continue
                    cost, fitted = costs[key]
                    cheapest = min(cheapest, cost.train_flops_per_token)
                    mults, note = _lr_multipliers(spec, budget, budgets[0], m, ref, fits)
                    if note and note not in warnings:
                        warnings.append(note)
                    made = _runs(spec, budget, ref, arch, hf_config, label, cost, fitted, cap,
                                 dials[m], mults)  # fmt: skip
                    if isinstance(made, str):
                        dropped.append(Dropped(budget, ref, m, label, made))
                    else:
                        kept.append(cost.trainable_params)
                        runs += made
                if kept:
                    on_ladder[m].append(sizes[ref])
                if len(backbones) == 1 or len(grids[m]) > 1 or placed:  # a dial grid per backbone
                    where = f"{budget_label(budget)} {ref} {m}"
                    centre = A * budget**a if placed else None
                    warnings += [f"{where}: {w}" for w in grid_warnings(kept, centre)]
        if len(backbones) > 1:  # the backbone ladder is the size axis
            for m, held in on_ladder.items():
                centre = ladder[m][0] * budget ** ladder[m][1] if m in ladder else None
                if centre is not None and not min(sizes.values()) <= centre <= max(sizes.values()):
                    centre = None  # already said: the family has no member near it
                warnings += [f"{budget_label(budget)} {m} across backbones: {w}"
                             for w in grid_warnings(held, centre)]  # fmt: skip
        if cheapest < math.inf and budget < cheapest * spec.batch_tokens / 2:
            raise ScalingError(
                f"budget {budget_label(budget)} FLOPs is too small for one optimizer step: the "
                f"cheapest point needs {budget_label(cheapest * spec.batch_tokens)} FLOPs per step "
                f"of {spec.batch_tokens} tokens"
            )
    return Plan(spec, budgets, runs, dropped, warnings, fit)


def _backbone_law(fits, method: str, sizes: dict[str, int],
                  warnings: list[str]) -> tuple[float, float] | None:  # fmt: skip
    """The method's N*(C) law when it counts backbone parameters (a fit across a backbone ladder)
    and this sweep has a ladder to pick from; None otherwise (the dial grid is centred instead)."""
    if method not in fits.laws or fits.n.get(method) not in BACKBONE_AXES:
        return None
    if len(sizes) < 2:
        warnings.append(
            f"{method}: the fit's N*(C) counts backbone parameters, but this sweep has one "
            'backbone: nothing to choose; name a family (backbones = ["family:…"]) to follow it'
        )
        return None
    return fits.laws[method]


def nearest_members(sizes: dict[str, int], target: float, grid) -> tuple[set[str], list[str]]:
    """The backbones nearest ``grid.points`` targets log-spaced over ±``grid.half_width`` decades
    around ``target`` (N*(C) in backbone parameters), and a note when the family has no member near
    it (too few members either side is :func:`scaling.sweep.grid.grid_warnings`'s to say).

    The same rule as :func:`scaling.sweep.grid.centred_grid`, with the family's members as the only
    values: a ladder is discrete, so a budget gets at most ``grid.points`` distinct members."""
    picks = {min(sizes, key=lambda r, t=t: abs(math.log(sizes[r] / t)))
             for t in grid_targets(target, grid)}  # fmt: skip
    lo, hi = min(sizes.values()), max(sizes.values())
    notes = []
    if not lo <= target <= hi:
        side = "larger" if target > hi else "smaller"
        notes.append(
            f"N*(C)={target:.3g} backbone parameters lies outside the family [{lo:.3g}, {hi:.3g}]: "
            f"no member near it, so no interior minimum; add {side} backbones"
        )
    return picks, notes


def _lr_multipliers(spec: SweepSpec, budget: float, smallest: float, method: str, ref: str,
                    fits) -> tuple[list[float | None], str | None]:  # fmt: skip
    """The learning-rate multipliers a point is planned at (``[None]``: no grid), and a note."""
    opt = spec.optimizer
    if not opt.lr_grid:
        return [None], None
    if opt.lr_protocol == "every_budget" or budget == smallest:
        return list(opt.lr_grid), None
    carried = fits.best_lr(method, ref) if fits is not None else None
    if carried is None:
        return [1.0], (f"{method}: no fitted best learning rate to carry up the budgets yet: they use "
                       "×1 (fit the smallest budget, then plan the rest with --from-fit)")  # fmt: skip
    return [carried], None


def _sized(spec: SweepSpec, arch, cfg, cap: float | None) -> tuple[flops.Cost, Fitted]:
    """The point's cost and memory; under a cap, with the memory levers it needs
    (:func:`scaling.sweep.levers.fit_to_memory`: they may change the config, hence the cost)."""
    if cap is None:
        mem = flops.memory(arch, cfg, spec.seq_len, spec.micro_batch_size)
        fitted = Fitted(cfg, spec.micro_batch_size, mem, [], True)
    else:
        fitted = fit_to_memory(arch, cfg, spec.seq_len, spec.micro_batch_size, cap,
                               spec.batch_tokens // spec.seq_len)  # fmt: skip
    return flops.cost(arch, fitted.config, spec.seq_len), fitted


def _runs(spec, budget, ref, arch, hf_config, label, cost, fitted, cap, dial_name,
          multipliers) -> list[RunSpec] | str:  # fmt: skip
    """One run per seed at this point, or the reasons it violates the constraints."""
    cfg, mem, micro = fitted.config, fitted.memory, fitted.micro_batch_size
    cons = spec.constraints
    fpt = cost.train_flops_per_token
    steps = round(budget / fpt / spec.batch_tokens)
    tokens = steps * spec.batch_tokens
    realised = tokens * fpt
    error = realised / budget - 1
    epochs = tokens / spec.dataset.tokens if spec.dataset.tokens else None
    reasons = []
    if steps < cons.min_steps:
        reasons.append(f"budget too small: {steps} steps < min_steps {cons.min_steps}")
    elif abs(error) > cons.tolerance:
        reasons.append(
            f"{steps} whole steps miss the budget by {error:+.2%} (> {cons.tolerance:.0%})"
        )
    if cons.max_epochs is not None and epochs > cons.max_epochs:
        reasons.append(f"{epochs:.3g} epochs > max_epochs {cons.max_epochs:g}")
    if cap is not None and not fitted.fits:
        tried = f" even with {', '.join(fitted.levers)}" if fitted.levers else ""
        reasons.append(
            f"peak memory {mem.total / flops.GiB:.1f} GiB > gpu_mem {cons.gpu_mem}{tried}"
        )
    if reasons:
        return "; ".join(reasons)
    counts = cost.to_dict()
    side = cfg.geometry(arch).hidden_size if cfg.kind == "ladder" else None
    runs = []
    for seed, mult in itertools.product(spec.seeds, multipliers):
        opt = spec.optimizer.for_method(cfg.name, steps, side_width=side, multiplier=mult)
        tag = "" if mult is None else f"lr{mult:g}"
        rid = run_id(
            backbone=ref, arch=arch, cfg=cfg, budget=budget, seed=seed, seq_len=spec.seq_len,
            batch_tokens=spec.batch_tokens, dataset=spec.dataset.to_dict(), optimizer=opt, tag=tag,
        )  # fmt: skip
        runs.append(
            RunSpec(
                run_id=rid, sweep=spec.name, backbone=ref, backbone_config=hf_config,
                method=cfg.name, method_config=cfg.to_dict(),
                dial=label if mult is None else f"{label}, lr×{mult:g}", dial_name=dial_name,
                budget=budget, seed=seed,
                seq_len=spec.seq_len, batch_tokens=spec.batch_tokens,
                micro_batch_size=micro, grad_accum_steps=spec.batch_tokens // (spec.seq_len * micro),
                steps=steps, tokens=tokens, flops_per_token=fpt,
                flops_per_token_causal=cost.train_flops_per_token_causal, realised_flops=realised,
                budget_error=error, epochs=epochs, trainable_params=cost.trainable_params,
                backbone_params=counts["backbone_params"],
                backbone_block_params=counts["backbone_block_params"],
                embedding_params=counts["embedding_params"], head_params=counts["head_params"],
                peak_memory_bytes=mem.total, fits_gpu=None if cap is None else True,
                dataset=spec.dataset.to_dict() | {"max_epochs": cons.max_epochs},
                optimizer=opt, train=spec.train.to_dict(), levers=list(fitted.levers),
                evaluations=spec.run_evaluations(),
            )
        )  # fmt: skip
    return runs


def plan(
    spec: SweepSpec | str | Path | None,
    budgets: list[float] | None = None,
    *,
    from_fit: str | Path | dict[str, Any] | None = None,
    gpu_mem: str | None = None,
) -> list[RunSpec]:
    """The runs of ``spec`` (a SweepSpec, a TOML path, or None for the default) at ``budgets``."""
    if not isinstance(spec, SweepSpec):
        spec = load_spec(spec)
    return build_plan(spec, budgets, from_fit=from_fit, gpu_mem=gpu_mem).runs
