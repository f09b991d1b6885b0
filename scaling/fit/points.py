"""The table → fit points step: which runs are fitted, with every exclusion and its reason.

    >>> from scaling.fit.points import Columns, prepare
    >>> prep = prepare(table, spec, Columns.for_runs(spec))   # table: collect.collect(...).runs
    >>> prep.points["ladder"].N, prep.exclusions

A run is left out (and listed, never silently) when it did not succeed, when a needed value is missing
or not positive, or when the spec excludes it. Budgets are the runs' nominal isoFLOP budgets or, for a
table without them, clusters of their FLOPs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scaling.errors import ScalingError
from scaling.fit.spec import FitSpec


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
        """The columns of a table collected from sweep run directories (:mod:`scaling.fit.collect`)."""
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
