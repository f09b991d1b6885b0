"""isoFLOP sweep planning: budgets and dial grids in, one fully specified run per point out.

    >>> from scaling import sweep
    >>> spec = sweep.load_spec()                      # the built-in default (= sweeps/default.toml)
    >>> runs = sweep.plan(spec, [1e17, 1e18])         # list[RunSpec], one per (budget, backbone,
    >>> runs[0].run_id                                #   method, dial value, seed)
    'ladder-r2-1e17-s0-…'
    >>> p = sweep.build_plan(sweep.load_spec("sweeps/quickstart.toml"), from_fit="fits.json")
    >>> p.dropped, p.warnings                         # what was left out and why; grid warnings

    scaling sweep sweeps/qwen2.5-ladder-vs-qlora.toml --flops 1e17:1e19:5 --dry-run

Tokens come from the exact training FLOPs per token of each configuration (:func:`scaling.flops.cost`),
never 6·N·D: D = C / F(config, seq_len). Steps are derived, never typed: steps = round(D / B) for a
batch of B tokens; the run trains on D' = steps·B tokens and spends C' = D'·F, which must lie within
``constraints.tolerance`` (1%) of C — guaranteed once steps ≥ 50, since |C'/C − 1| ≤ 1 / (2·steps).
A point that breaks a constraint (too few steps, too many epochs, too much memory, a budget it cannot
hit) is dropped and listed with its reason, never silently.

Specs are TOML files stating only their differences from the defaults (the field defaults below, also
written out in ``sweeps/default.toml``); ``extends = "other.toml"`` layers a spec over another one.
Tables merge key by key, lists replace. In ``[method.<name>]`` a scalar fixes a dial, a list is a grid
axis, and ``{min, max, num}`` is a log-spaced grid (rounded to integers when both ends are integers);
several axes form their product.

Backbones are architecture presets (:data:`scaling.arch.PRESETS`), model directories, ``config.json``
files, or hub names (read from the local Hugging Face cache only, else matched to a preset by name:
``Qwen/Qwen2.5-7B`` → ``qwen2.5-7b``). ``[backbone_config."<ref>"]`` gives an inline ``config.json`` for
a backbone that does not exist yet (``sweeps/quickstart.toml``: the tiny model a later step saves);
the file wins once it exists.

Re-centring from a fit (``from_fit``): a JSON file (written by ``scaling fit``) of the form ::

    {"methods": {"ladder": {"optimal_params": {"A": 2.1e-3, "a": 0.52}}, "qlora": {...}}}

meaning N*(C) = A·C^a trainable parameters at budget C (other keys are ignored). For each budget the
planner aims ``grid.points`` trainable-parameter counts log-spaced over ±``grid.half_width`` decades
around N*(C) and picks the nearest valid value of the method's dial (``MethodConfig.dial``: Ladder's
reduction, xLadder's δ, (Q)LoRA's rank), so every new budget is centred on the running fit. A grid
whose optimum is not interior (< 2 points on a side) or that spans more than ±1 decade around its
centre draws a warning: wide grids bias the fitted N*(C) coefficient (+4% at ±1 decade, +8.5% at ±1.5;
shared/notes/fitting.md).

Run ids are ``<method>-<dial>-<budget>-s<seed>-<sha1[:8]>`` of everything that defines the run, so the
same spec gives the same ids in any process. :func:`write` fills a run directory (``sweep.json``,
``manifest.parquet``, ``runs/<id>/spec.json``): re-planning the same sweep only adds runs it lacks
(new budgets, a re-centred grid) and never touches existing ones; a directory holding a different
sweep (any spec change other than budgets) is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from scaling import flops, methods
from scaling.arch import Arch
from scaling.errors import ScalingError
from scaling.io import atomic_dir, write_json, write_parquet
from scaling.sweep_spec import (  # noqa: F401 (parse_budgets, dial_grid: re-exported API)
    WIDE_GRID_DECADES,
    GridSpec,
    SweepSpec,
    _sha1,
    check_budgets,
    dial_grid,
    load_fit,
    load_spec,
    parse_budgets,
    resolve_backbone,
)

# --------------------------------------------------------------------------------------------------
# Dial grids


def dial_values(dial: str, arch: Arch) -> list[int]:
    """Valid values of a method's dial (to centre a grid on a fit, or to search for advice)."""
    if dial == "side_width":  # four per octave from the backbone width down
        d = arch.hidden_size
        return sorted({max(1, round(d * 2 ** (-k / 4))) for k in range(4 * d.bit_length() + 1)})
    if dial == "rank":
        return sorted({round(2 ** (k / 4)) for k in range(49)})  # 1 … 4096, four per octave
    if dial == "reduction":
        return [r for r in range(1, arch.hidden_size + 1) if arch.hidden_size % r == 0]
    if dial in ("delta", "side_layers"):
        return list(range(1, arch.num_layers + 1))
    return []


def centred_grid(
    base: list[methods.MethodConfig], arch: Arch, seq_len: int, target: float, grid: GridSpec
) -> list[methods.MethodConfig]:
    """Configs whose trainable-parameter counts lie nearest to ``grid.points`` log-spaced targets
    within ±``grid.half_width`` decades of ``target``, for each combination of the other axes."""
    dial = type(base[0]).dial
    values = dial_values(dial, arch)
    if not values:
        raise ScalingError(f"cannot centre dial {dial!r} on a fit")
    n, h = grid.points, grid.half_width
    targets = [target * 10 ** (h * (2 * i / (n - 1) - 1)) if n > 1 else target for i in range(n)]
    out: list[methods.MethodConfig] = []
    for cfg in dict.fromkeys(b.replace(**{dial: getattr(type(b)(), dial)}) for b in base):
        sized = []
        for value in values:
            try:
                c = cfg.replace(**{dial: value})
                sized.append((flops.cost(arch, c, seq_len).trainable_params, c))
            except ScalingError:
                continue
        picks = [min(sized, key=lambda s, t=t: abs(math.log(s[0] / t)))[1] for t in targets]
        out += sorted(dict.fromkeys(picks), key=lambda c: getattr(c, dial))
    return out


# --------------------------------------------------------------------------------------------------
# Planning

SPEC_FORMAT_VERSION = 1
"""Version of ``runs/<run_id>/spec.json``; ``scaling train`` refuses any other."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one training job needs; ``runs/<run_id>/spec.json`` holds exactly this."""

    run_id: str
    sweep: str
    backbone: str
    backbone_config: dict[str, Any]
    method: str
    method_config: dict[str, Any]
    dial: str
    """Readable dial values, e.g. ``reduction=8``."""
    budget: float
    seed: int
    seq_len: int
    batch_tokens: int
    micro_batch_size: int
    grad_accum_steps: int
    steps: int
    tokens: int
    """Realised training tokens: steps × batch_tokens (≈ budget / flops_per_token)."""
    flops_per_token: float
    """Executed training FLOPs per token (full-square attention; scaling.flops.cost)."""
    flops_per_token_causal: float
    realised_flops: float
    budget_error: float
    """realised_flops / budget − 1."""
    epochs: float | None
    trainable_params: int
    backbone_params: int
    backbone_block_params: int
    embedding_params: int
    head_params: int
    peak_memory_bytes: float
    fits_gpu: bool | None
    dataset: dict[str, Any]
    """The spec's ``[dataset]`` plus ``max_epochs`` (how often the job may repeat the data)."""
    optimizer: dict[str, Any]
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """How the job runs (``[train]``: logging, evaluation, checkpoints); never changes the result."""
    status: str = "planned"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> dict[str, Any]:
        """What ``runs/<run_id>/spec.json`` holds: the run plus the file's format version."""
        return {"format_version": SPEC_FORMAT_VERSION, **self.to_dict()}

    def manifest_row(self) -> dict[str, Any]:
        """One flat manifest row: nested tables become ``dial_*``, ``dataset_*``, ``optimizer_*``."""
        row = self.to_dict()
        del row["backbone_config"]
        del row["train"]
        for prefix in ("method_config", "dataset", "optimizer"):
            short = "dial" if prefix == "method_config" else prefix
            row |= {f"{short}_{k}": _scalar(v) for k, v in row.pop(prefix).items()}
        return row


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


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


def budget_label(budget: float) -> str:
    """1e18 → '1e18', 3.16e17 → '3.16e17' (three significant digits)."""
    text = f"{budget:.3g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent)}"
    return text


def dial_label(cfg: methods.MethodConfig) -> str:
    """Short, config-only tag for run ids: ``r8``, ``w112``, ``r8-d2``, ``r64``."""
    parts = []
    if cfg.kind == "ladder":
        parts.append(f"w{cfg.side_width}" if cfg.side_width else f"r{cfg.reduction}")
        if cfg.name == "xladder":
            parts.append(f"d{cfg.delta}")
        if cfg.side_layers:
            parts.append(f"l{cfg.side_layers}")
    elif cfg.kind == "lora":
        parts.append(f"r{cfg.rank}")
    return "-".join(parts)


def run_id(
    *, backbone: str, arch: Arch, cfg: methods.MethodConfig, budget: float, seed: int,
    spec: SweepSpec, optimizer: dict[str, Any],
) -> str:  # fmt: skip
    """Readable prefix + sha1 of everything that defines the run's result (not the micro-batch split,
    which only trades memory for time, nor the constraints, which only choose which runs exist)."""
    arch_fields = {k: v for k, v in dataclasses.asdict(arch).items() if k != "source"}
    digest = _sha1(
        dict(backbone=backbone, arch=arch_fields, method=cfg.name, config=cfg.to_dict(),
             budget=budget, seed=seed, seq_len=spec.seq_len, batch_tokens=spec.batch_tokens,
             dataset=spec.dataset.to_dict(), optimizer={**optimizer, "warmup_steps": None})
    )  # fmt: skip
    label = dial_label(cfg)
    return f"{cfg.name}-{label + '-' if label else ''}{budget_label(budget)}-s{seed}-{digest[:8]}"


def _axes_label(method: str, spec: SweepSpec, cfg: methods.MethodConfig, placed: bool) -> str:
    """``reduction=8``: the values of the method's grid axes (its default dial when none)."""
    table = spec.method.get(method, {})
    keys = [k for k, v in table.items() if isinstance(v, (list, dict))]
    dial = type(cfg).dial
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
    fit = load_fit(from_fit) if from_fit is not None else None
    gpu_mem = spec.constraints.gpu_mem
    cap = flops.parse_bytes(gpu_mem) if gpu_mem else None
    grids = {m: dial_grid(spec, m) for m in spec.methods}
    backbones = {
        b: resolve_backbone(b, spec.backbone_config.get(b)) for b in dict.fromkeys(spec.backbones)
    }
    costs: dict[tuple, Any] = {}
    runs: list[RunSpec] = []
    dropped: list[Dropped] = []
    warnings: list[str] = []
    if fit is not None:
        for m in spec.methods:
            if m not in fit:
                warnings.append(f"{m}: the fit has no entry for it; its grid is not re-centred")
    for budget in budgets:
        cheapest = math.inf
        for ref, (arch, hf_config) in backbones.items():
            for m in spec.methods:
                placed = fit is not None and m in fit and type(grids[m][0]).dial is not None
                cfgs = grids[m]
                if placed:
                    A, a = fit[m]
                    cfgs = centred_grid(grids[m], arch, spec.seq_len, A * budget**a, spec.grid)
                kept: list[int] = []
                for cfg in cfgs:
                    label = _axes_label(m, spec, cfg, placed)
                    key = (ref, cfg)
                    if key not in costs:
                        try:
                            costs[key] = (
                                flops.cost(arch, cfg, spec.seq_len),
                                flops.memory(arch, cfg, spec.seq_len, spec.micro_batch_size),
                            )
                        except ScalingError as e:
                            costs[key] = str(e)
                    if isinstance(costs[key], str):
                        dropped.append(Dropped(budget, ref, m, label, costs[key]))
                        continue
                    cost, mem = costs[key]
                    cheapest = min(cheapest, cost.train_flops_per_token)
                    made = _runs(spec, budget, ref, arch, hf_config, cfg, label, cost, mem, cap)
                    if isinstance(made, str):
                        dropped.append(Dropped(budget, ref, m, label, made))
                    else:
                        kept.append(cost.trainable_params)
                        runs += made
                where = f"{budget_label(budget)} {ref} {m}"
                centre = A * budget**a if placed else None
                warnings += [f"{where}: {w}" for w in grid_warnings(kept, centre)]
        if cheapest < math.inf and budget < cheapest * spec.batch_tokens / 2:
            raise ScalingError(
                f"budget {budget_label(budget)} FLOPs is too small for one optimizer step: the "
                f"cheapest point needs {budget_label(cheapest * spec.batch_tokens)} FLOPs per step "
                f"of {spec.batch_tokens} tokens"
            )
    return Plan(spec, budgets, runs, dropped, warnings, fit)


def _runs(spec, budget, ref, arch, hf_config, cfg, label, cost, mem, cap) -> list[RunSpec] | str:
    """One run per seed at this point, or the reasons it violates the constraints."""
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
    if cap is not None and not mem.fits(cap):
        reasons.append(f"peak memory {mem.total / flops.GiB:.1f} GiB > gpu_mem {cons.gpu_mem}")
    if reasons:
        return "; ".join(reasons)
    counts = cost.to_dict()
    runs = []
    for seed in spec.seeds:
        opt = spec.optimizer.for_method(cfg.name, steps)
        rid = run_id(
            backbone=ref, arch=arch, cfg=cfg, budget=budget, seed=seed, spec=spec, optimizer=opt
        )
        runs.append(
            RunSpec(
                run_id=rid, sweep=spec.name, backbone=ref, backbone_config=hf_config,
                method=cfg.name, method_config=cfg.to_dict(), dial=label, budget=budget, seed=seed,
                seq_len=spec.seq_len, batch_tokens=spec.batch_tokens,
                micro_batch_size=spec.micro_batch_size,
                grad_accum_steps=spec.batch_tokens // (spec.seq_len * spec.micro_batch_size),
                steps=steps, tokens=tokens, flops_per_token=fpt,
                flops_per_token_causal=cost.train_flops_per_token_causal, realised_flops=realised,
                budget_error=error, epochs=epochs, trainable_params=cost.trainable_params,
                backbone_params=counts["backbone_params"],
                backbone_block_params=counts["backbone_block_params"],
                embedding_params=counts["embedding_params"], head_params=counts["head_params"],
                peak_memory_bytes=mem.total, fits_gpu=None if cap is None else True,
                dataset=spec.dataset.to_dict() | {"max_epochs": cons.max_epochs},
                optimizer=opt, train=spec.train.to_dict(),
            )
        )  # fmt: skip
    return runs


def grid_warnings(params: list[int], centre: float | None) -> list[str]:
    """Why an isoFLOP minimum from these trainable-parameter counts may be unreliable."""
    ns = sorted(set(params))
    if not ns:
        return ["no grid point survives the constraints"]
    out = []
    if len(ns) < 3:
        out.append(
            f"only {len(ns)} grid point(s): a parabola needs ≥ 3 (≥ 2 each side of its minimum)"
        )
    if centre is None:
        half, what = math.log10(ns[-1] / ns[0]) / 2, "its centre"
    else:
        below, above = sum(n < centre for n in ns), sum(n > centre for n in ns)
        what = f"the predicted optimum N*={centre:.3g}"
        if not ns[0] <= centre <= ns[-1]:
            out.append(
                f"{what} lies outside the grid [{ns[0]:.3g}, {ns[-1]:.3g}]: no interior minimum"
            )
        elif below < 2 or above < 2:
            out.append(f"{below} point(s) below and {above} above {what}: want ≥ 2 on each side")
        half = max(math.log10(ns[-1] / centre), math.log10(centre / ns[0]))
    if half > WIDE_GRID_DECADES + 1e-9:
        out.append(
            f"grid spans ±{half:.3g} decades around {what} (> ±1): wide grids bias the fitted "
            "N*(C) coefficient (+4% at ±1 decade, +8.5% at ±1.5)"
        )
    return out


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


# --------------------------------------------------------------------------------------------------
# Run directory


def write(p: Plan, out: str | Path) -> list[RunSpec]:
    """Write the plan's runs to ``out``; return the runs that were new (none: nothing is touched).

    A fresh directory is filled in a temporary sibling and renamed into place. A directory that
    already holds this sweep (same :meth:`SweepSpec.identity`) gets only the runs it lacks: each new
    run directory appears in one rename, then the manifest and ``sweep.json`` are replaced atomically.
    Anything else there is refused before a byte is written.
    """
    import polars as pl

    out = Path(out)
    if not p.runs:
        reason = p.dropped[0].reason if p.dropped else "no points"
        raise ScalingError(f"every point was dropped ({reason}; see --dry-run): nothing to write")
    old_meta = _existing_sweep(out, p)
    if old_meta is None:
        with atomic_dir(out) as tmp:
            for r in p.runs:
                write_json(tmp / "runs" / r.run_id / "spec.json", r.to_json())
            pl.DataFrame(
                [r.manifest_row() for r in p.runs], infer_schema_length=None
            ).write_parquet(tmp / "manifest.parquet")
            write_json(tmp / "sweep.json", _sweep_meta(p, None))
        return list(p.runs)
    manifest = pl.read_parquet(out / "manifest.parquet")
    have = set(manifest["run_id"].to_list())
    new = [r for r in p.runs if r.run_id not in have]
    if not new:
        return []
    for r in new:
        with atomic_dir(out / "runs" / r.run_id) as tmp:
            write_json(tmp / "spec.json", r.to_json())
    rows = pl.DataFrame([r.manifest_row() for r in new], infer_schema_length=None)
    merged = pl.concat([manifest, rows], how="diagonal_relaxed")
    write_parquet(merged, out / "manifest.parquet")
    write_json(out / "sweep.json", _sweep_meta(p, old_meta))
    return new


def _existing_sweep(out: Path, p: Plan) -> dict[str, Any] | None:
    """The ``sweep.json`` of a directory holding this sweep; None for a missing or empty one."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ScalingError(f"output path {out} is a file, not a directory")
    meta_path = out / "sweep.json"
    if not meta_path.is_file():
        if any(out.iterdir()):
            raise ScalingError(f"output directory {out} is not empty and holds no sweep")
        return None
    try:
        meta = json.loads(meta_path.read_text())
        ident = meta["spec_hash"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ScalingError(f"output directory {out} has an unreadable sweep.json") from None
    if ident != p.identity or not (out / "manifest.parquet").is_file():
        raise ScalingError(
            f"output directory {out} holds a different sweep ({meta.get('sweep')} {ident}, "
            f"this one is {p.spec.name} {p.identity}); choose another --out"
        )
    return meta


def _sweep_meta(p: Plan, old: dict[str, Any] | None) -> dict[str, Any]:
    entry = {
        "budgets": p.budgets,
        "fit": p.to_dict()["fit"],
        "runs": len(p.runs),
        "dropped": [dataclasses.asdict(d) for d in p.dropped],
        "warnings": p.warnings,
    }
    budgets = sorted({*p.budgets, *(old or {}).get("budgets", [])})
    history = [*(old or {}).get("history", []), entry]
    return {"sweep": p.spec.name, "spec_hash": p.identity, "spec": p.spec.to_dict(),
            "budgets": budgets, "history": history}  # fmt: skip
