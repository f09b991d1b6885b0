"""Fit specs (``analysis/*.toml``) and the table → fit points step, with every exclusion and its reason.

    >>> from scaling.fit_spec import load_spec, Columns, prepare
    >>> spec = load_spec("analysis/default.toml")          # or load_spec() for the defaults
    >>> prep = prepare(table, spec, Columns.for_runs(spec))  # table: scaling.collect.collect(...).runs
    >>> prep.points["ladder"].N, prep.exclusions

A spec states only its differences from the defaults below; unknown keys are errors that list the valid
ones (:class:`scaling.config.Config`). Sections: ``[approach1]``, ``[approach2]``, ``[approach3]``,
``[bootstrap]``, ``[holdout]``, ``[compare]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from scaling.config import Config, check, check_choice, check_positive_int
from scaling.errors import ScalingError
from scaling.fit_laws import CHINCHILLA_A, CHINCHILLA_ALPHA, CHINCHILLA_E, HUBER_DELTA

N_CONVENTIONS = ("trainable", "backbone", "total")
LOSSES = ("final_eval", "last_k_eval", "final_train")
SOURCES = ("approach3", "approach2", "approach1")


def _number(name: str, value: Any, *, positive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    check(ok and (value > 0 or not positive), f"{name} must be a {'positive ' * positive}number")


def _numbers(name: str, values: Any) -> None:
    check(isinstance(values, list) and values != [], f"{name} must be a non-empty list of numbers")
    for v in values:
        _number(name, v, positive=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Approach1Spec(Config):
    """Envelope of per-step loss-vs-FLOPs curves (needs the runs' ``metrics.parquet``)."""

    enabled: bool = True
    curve: str = "eval"
    """Which logged loss forms the curves: ``eval`` (held-out rows) or ``train``."""
    skip_fraction: float = 0.1
    """Leading fraction of each run's steps left out (warmup and early training are noise)."""
    points: int = 30
    """Log-spaced compute values the envelope is taken at."""

    def __post_init__(self) -> None:
        check_choice("approach1.curve", self.curve, ("eval", "train"))
        check(0 <= self.skip_fraction < 1, "approach1.skip_fraction must lie in [0, 1)")
        check_positive_int("approach1.points", self.points)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Approach2Spec(Config):
    """Per-budget robust parabola of loss vs log N, then N*(C), D*(C), L*(C)."""

    enabled: bool = True
    min_side: int = 2
    """Points required on each side of a budget's fitted minimum (else the budget is flagged and left
    out of the power laws: an edge minimum is an extrapolation, not a measurement)."""
    huber: float = 0.01
    """Huber threshold of the parabola fit, relative to the budget's median loss."""

    def __post_init__(self) -> None:
        check_positive_int("approach2.min_side", self.min_side)
        _number("approach2.huber", self.huber)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Approach3Spec(Config):
    """L(N, D) = E + A/N^α + B/D^β over all points, from a grid of starts."""

    enabled: bool = True
    delta: float = HUBER_DELTA
    """Huber δ on log-loss residuals (Chinchilla: 1e-3)."""
    alpha: list[float] = dataclasses.field(default_factory=lambda: list(CHINCHILLA_ALPHA))
    """Start values of α and of β (Chinchilla: 0, 0.5, …, 2)."""
    e: list[float] = dataclasses.field(default_factory=lambda: list(CHINCHILLA_E))
    """Start values of e = log E (Chinchilla: −1, −0.5, …, 1)."""
    a: list[float] = dataclasses.field(default_factory=lambda: list(CHINCHILLA_A))
    """Start values of a = log A and of b = log B, N and D in their own units (Chinchilla: 0, 5, …, 25).
    The default grid has 5·5·5·6·6 = 4500 starts."""
    polish: int = 3
    """Best distinct end points refined by scipy's L-BFGS-B (ftol = 0, tight gtol)."""
    min_points: int = 8
    """Fewest points per method for a five-parameter fit."""

    def __post_init__(self) -> None:
        _number("approach3.delta", self.delta)
        for key in ("alpha", "e", "a"):
            _numbers(f"approach3.{key}", getattr(self, key))
        check_positive_int("approach3.polish", self.polish)
        check_positive_int("approach3.min_points", self.min_points)
        check(self.min_points >= 6, "approach3.min_points must be ≥ 6 (five parameters)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BootstrapSpec(Config):
    """Confidence intervals by resampling runs (within each budget) and refitting."""

    resamples: int = 1000
    """Resamples (0: no intervals)."""
    level: float = 0.95
    """Coverage of the percentile intervals."""
    seed: int = 0
    starts: int = 4
    """Grid starts tried per resample besides the point estimate (approach 3)."""

    def __post_init__(self) -> None:
        check(isinstance(self.resamples, int) and self.resamples >= 0, "bootstrap.resamples ≥ 0")
        check(0 < self.level < 1, "bootstrap.level must lie in (0, 1)")
        check(isinstance(self.seed, int), "bootstrap.seed must be an integer")
        check(isinstance(self.starts, int) and self.starts >= 0, "bootstrap.starts ≥ 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HoldoutSpec(Config):
    """Fit on the smaller budgets, predict the largest ones."""

    budgets: int = 1
    """Largest budgets held out (0: no held-out check)."""

    def __post_init__(self) -> None:
        check(isinstance(self.budgets, int) and self.budgets >= 0, "holdout.budgets ≥ 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareSpec(Config):
    """Method comparison: frontiers, compute multipliers, crossovers."""

    source: str = "approach3"
    """Frontier L*(C) the comparison reads: ``approach3`` (min over N of L(N, C/F(N))), ``approach2``
    (E + A·C^−α through the isoFLOP minima) or ``approach1`` (the same through the envelope)."""
    baseline: str | None = None
    """Method every other one is compared with (default: every ordered pair)."""

    def __post_init__(self) -> None:
        check_choice("compare.source", self.source, SOURCES)


SECTIONS: dict[str, type[Config]] = {
    "approach1": Approach1Spec,
    "approach2": Approach2Spec,
    "approach3": Approach3Spec,
    "bootstrap": BootstrapSpec,
    "holdout": HoldoutSpec,
    "compare": CompareSpec,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitSpec(Config):
    n: str = "trainable"
    """N convention: ``trainable`` (adapter / side-net parameters), ``backbone`` or ``total``."""
    loss: str = "final_eval"
    """Loss of a run: ``final_eval``, ``last_k_eval`` (mean of the last ``last_k`` evals) or
    ``final_train``."""
    last_k: int = 3
    methods: list[str] = dataclasses.field(default_factory=list)
    """Methods to fit (default: all in the table)."""
    exclude: list[str] = dataclasses.field(default_factory=list)
    """Run ids left out (each is listed as excluded by the spec)."""
    budget_tol: float = 0.1
    """Without a budget column, points whose log10 C lie within this many decades of their neighbour
    form one isoFLOP budget."""
    k: float = 6.0
    """FLOPs per parameter per token, only to derive C = k·N·D (or D = C/(k·N)) for a table that lacks
    FLOPs (or tokens); sweep runs carry their exact FLOPs per token."""
    outlier_sigma: float = 0.0
    """Leave out points whose approach-3 log residual exceeds this many robust standard deviations
    (1.4826·MAD) and refit (0: off). Each is listed with its residual."""
    predict: list[float] = dataclasses.field(default_factory=list)
    """Compute budgets to report the optimal allocation and predicted loss at."""
    gpu_mem: str | None = None
    """Card capacity for memory-aware advice at the ``predict`` budgets, e.g. ``12GB``."""
    approach1: Approach1Spec = dataclasses.field(default_factory=Approach1Spec)
    approach2: Approach2Spec = dataclasses.field(default_factory=Approach2Spec)
    approach3: Approach3Spec = dataclasses.field(default_factory=Approach3Spec)
    bootstrap: BootstrapSpec = dataclasses.field(default_factory=BootstrapSpec)
    holdout: HoldoutSpec = dataclasses.field(default_factory=HoldoutSpec)
    compare: CompareSpec = dataclasses.field(default_factory=CompareSpec)

    def __post_init__(self) -> None:
        check_choice("n", self.n, N_CONVENTIONS)
        check_choice("loss", self.loss, LOSSES)
        check_positive_int("last_k", self.last_k)
        for key, section in SECTIONS.items():
            check(isinstance(getattr(self, key), section), f"[{key}] must be a table")
        for key in ("methods", "exclude"):
            v = getattr(self, key)
            check(isinstance(v, list) and all(isinstance(s, str) for s in v), f"{key}: strings")
        _number("budget_tol", self.budget_tol)
        _number("k", self.k)
        _number("outlier_sigma", self.outlier_sigma, positive=False)
        check(self.outlier_sigma >= 0, "outlier_sigma must be ≥ 0")
        check(isinstance(self.predict, list), "predict must be a list of FLOPs")
        for c in self.predict:
            _number("predict", c)
        if self.gpu_mem is not None:
            from scaling.flops import parse_bytes

            try:
                parse_bytes(self.gpu_mem)
            except ValueError as e:
                raise ScalingError(f"gpu_mem: {e}") from None


def load_spec(path: str | None = None) -> FitSpec:
    """The defaults, or a TOML spec stating its differences from them."""
    if path is None:
        return FitSpec()
    return FitSpec.from_toml(path, what="fit spec")


# --------------------------------------------------------------------------------------------------
# Table → points


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which table columns hold what (None: absent)."""

    params: str
    loss: str
    tokens: str | None = None
    flops: str | None = None
    method: str | None = None
    budget: str | None = None
    run_id: str | None = None
    status: str | None = None
    error: str | None = None
    backbone: str | None = None
    """With several backbones in the table, each method is fitted per backbone (``method@backbone``):
    a law in trainable parameters does not carry over from one backbone to another."""

    @classmethod
    def for_runs(cls, spec: FitSpec) -> Columns:
        """The columns of a table collected from sweep run directories (:mod:`scaling.collect`)."""
        return cls(
            params=f"{spec.n}_params",
            loss={"final_eval": "final_eval_loss", "last_k_eval": "last_k_eval_loss",
                  "final_train": "final_train_loss"}[spec.loss],
            tokens="tokens", flops="flops", method="method", budget="budget", run_id="run_id",
            status="status", error="error", backbone="backbone",
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Exclusion:
    run_id: str
    method: str
    reason: str
    kind: str = "excluded"
    """What kind of exclusion: a run status (``diverged``, ``not finished``...), ``invalid value``,
    ``excluded by spec`` or ``outlier``."""

    def __str__(self) -> str:
        return f"{self.method} {self.run_id}: {self.reason}"


@dataclasses.dataclass(frozen=True, eq=False)
class Points:
    """One method's fit points (arrays aligned by run)."""

    method: str
    run_id: np.ndarray
    N: np.ndarray
    D: np.ndarray
    C: np.ndarray
    L: np.ndarray
    group: np.ndarray
    """Index of the point's isoFLOP budget in ``budgets``."""
    budgets: np.ndarray
    """Representative compute of each budget (geometric mean of its points' C), ascending."""

    @property
    def fpt(self) -> np.ndarray:
        """Training FLOPs per token of each point."""
        return self.C / self.D

    def __len__(self) -> int:
        return len(self.L)

    def subset(self, keep: np.ndarray) -> Points:
        """The points where ``keep`` holds, budgets renumbered."""
        groups = np.unique(self.group[keep])
        remap = {g: i for i, g in enumerate(groups)}
        return Points(
            self.method, self.run_id[keep], self.N[keep], self.D[keep], self.C[keep],
            self.L[keep], np.array([remap[g] for g in self.group[keep]], dtype=int),
            self.budgets[groups],
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Prepared:
    points: dict[str, Points]
    exclusions: list[Exclusion]
    warnings: list[str]


def prepare(table, spec: FitSpec, cols: Columns, *, source: str = "the table") -> Prepared:
    """Validate ``table`` (polars DataFrame) and split it into per-method fit points.

    Every row left out becomes an :class:`Exclusion` with its reason; raises ScalingError when the
    table is empty, lacks a needed column, or nothing is left to fit.
    """
    if table.height == 0:
        raise ScalingError(f"{source} is empty: nothing to fit")
    need = [c for c in (cols.params, cols.loss, cols.tokens, cols.flops, cols.method,
                        cols.budget, cols.run_id, cols.status, cols.error, cols.backbone) if c]  # fmt: skip
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ScalingError(
            f"column '{missing[0]}' not in {source}; columns: {', '.join(table.columns)}"
        )
    if cols.tokens is None and cols.flops is None:
        raise ScalingError("need tokens or FLOPs per run (--tokens-col or --flops-col)")
    warnings: list[str] = []
    n = table.height

    def col(name: str | None, default=None) -> np.ndarray:
        if name is None:
            return np.full(n, default, dtype=object)
        return table[name].to_numpy()

    run_id = np.array([str(v) for v in (col(cols.run_id) if cols.run_id else
                                        [f"row{i}" for i in range(n)])], dtype=object)  # fmt: skip
    method = np.array(
        [str(v) for v in col(cols.method, "all")] if cols.method else ["all"] * n, dtype=object
    )
    base = method.copy()  # the method itself, for spec.methods
    if cols.backbone:
        backbone = np.array([str(v) for v in col(cols.backbone)], dtype=object)
        several = {m: len(set(backbone[method == m])) > 1 for m in set(method)}
        if any(several.values()):
            method = np.array([f"{m}@{b}" if several[m] else m
                               for m, b in zip(method, backbone, strict=True)], dtype=object)  # fmt: skip
            warnings.append(
                "several backbones: methods are fitted per backbone (method@backbone); "
                "`scaling sweep --from-fit` reads plain method names only"
            )
    status = col(cols.status, "success") if cols.status else np.full(n, "success", dtype=object)
    error = col(cols.error) if cols.error else np.full(n, None, dtype=object)

    def numeric(name: str | None) -> np.ndarray:
        if name is None:
            return np.full(n, np.nan)
        try:
            return np.asarray(table[name].cast(float, strict=False).to_numpy(), dtype=float)
        except Exception as e:  # polars raises its own types for unconvertible columns
            raise ScalingError(f"column '{name}' of {source} is not numeric: {e}") from None

    N, L = numeric(cols.params), numeric(cols.loss)
    D, C = numeric(cols.tokens), numeric(cols.flops)
    budget = numeric(cols.budget)
    if cols.flops is None:
        C = spec.k * N * D
        warnings.append(f"no FLOPs column: C = {spec.k:g}·N·D (set k in the fit spec)")
    if cols.tokens is None:
        D = C / (spec.k * N)
        warnings.append(f"no tokens column: D = C / ({spec.k:g}·N) (set k in the fit spec)")
    exclusions: list[Exclusion] = []
    keep = np.ones(n, dtype=bool)
    wanted = set(spec.methods)
    excluded_ids = set(spec.exclude)
    for i in range(n):
        rid, m = run_id[i], method[i]
        reason = kind = None
        if wanted and base[i] not in wanted:
            keep[i] = False  # not asked for: not an exclusion
            continue
        if rid in excluded_ids:
            reason = kind = "excluded by the fit spec"
        elif status[i] != "success":
            kind = str(status[i])
            reason = kind + (f": {error[i]}" if error[i] else "")
        else:
            for label, v in ((cols.params, N[i]), (cols.loss, L[i]),
                             (cols.tokens or "derived tokens", D[i]),
                             (cols.flops or "derived FLOPs", C[i])):  # fmt: skip
                if not (np.isfinite(v) and v > 0):
                    kind = "invalid value"
                    reason = (
                        f"{label} is missing" if np.isnan(v) else f"{label} = {v:g} is not positive"
                    )
                    break
        if reason:
            keep[i] = False
            exclusions.append(Exclusion(rid, m, reason, kind))
    if wanted:
        absent = sorted(wanted - set(base))
        if absent:
            raise ScalingError(
                f"method {absent[0]!r} not in {source}; methods: {', '.join(sorted(set(base)))}"
            )
    if not keep.any():
        counts: dict[str, int] = {}
        for e in exclusions:
            counts[e.kind] = counts.get(e.kind, 0) + 1
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        raise ScalingError(
            f"nothing to fit: all {n} rows of {source} were excluded ({summary}; first: "
            f"{exclusions[0].run_id}: {exclusions[0].reason})"
        )
    points = {}
    for m in sorted(set(method[keep])):
        sel = keep & (method == m)
        group, budgets = _budgets(C[sel], budget[sel], spec.budget_tol)
        points[m] = Points(m, run_id[sel], N[sel], D[sel], C[sel], L[sel], group, budgets)
    return Prepared(points, exclusions, warnings)


def _budgets(C: np.ndarray, nominal: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Group points into isoFLOP budgets: by the nominal budget where given, else by gaps of more than
    ``tol`` decades in sorted log10 C. A budget's compute is the geometric mean of its points' C."""
    if np.isfinite(nominal).all():
        keys = np.round(np.log10(nominal), 6)
    else:
        lc = np.log10(C)
        order = np.argsort(lc)
        keys = np.empty(len(C))
        cluster = 0
        for j, i in enumerate(order):
            if j and lc[i] - lc[order[j - 1]] > tol:
                cluster += 1
            keys[i] = cluster
    uniq = np.unique(keys)
    group = np.searchsorted(uniq, keys)
    budgets = np.array([np.exp(np.log(C[group == g]).mean()) for g in range(len(uniq))])
    order = np.argsort(budgets)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[group], budgets[order]
