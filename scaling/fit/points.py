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
from scaling.fit.frontier import curve_grid, interpolate_curves
from scaling.fit.spec import FitSpec


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which table columns hold what (None: absent)."""

    params: str | None
    """Parameters N (None: derived as C/(k·D) from a table's FLOPs and tokens)."""
    loss: str
    tokens: str | None = None
    flops: str | None = None
    method: str | None = None
    budget: str | None = None
    run_id: str | None = None
    status: str | None = None
    error: str | None = None
    backbone: str | None = None
    """With several backbones in the table and N in trainable (or total) parameters, each method is
    fitted per backbone (``method@backbone``): a law in trainable parameters does not carry over from
    one backbone to another. With ``params = "auto"`` the backbones are the size axis instead."""
    backbone_params: str | None = None
    """Backbone parameters (the size axis when a method's runs span several backbones, ``auto``)."""
    lr: str | None = None
    """Learning rate: runs that differ only in it are one point, the best of them (see prepare)."""
    lr_multiplier: str | None = None
    seed: str | None = None

    @classmethod
    def for_runs(cls, spec: FitSpec) -> Columns:
        """The columns of a table collected from sweep run directories (:mod:`scaling.fit.collect`)."""
        return cls(
            params="auto" if spec.n == "auto" else f"{spec.n}_params",
            backbone_params="backbone_params", lr="lr", lr_multiplier="lr_multiplier", seed="seed",
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
    size_axis: str = "trainable"
    """What N counts: ``trainable`` parameters, or ``backbone`` parameters when the method's runs
    span a ladder of backbones (``n = "auto"``)."""
    P: np.ndarray | None = None
    """Trainable (PEFT) parameters of each point when N counts the backbone's (else None)."""

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
            self.budgets[groups], self.size_axis, None if self.P is None else self.P[keep],
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Prepared:
    points: dict[str, Points]
    exclusions: list[Exclusion]
    warnings: list[str]
    best_lr: dict[str, float] = dataclasses.field(default_factory=dict)
    """Per method, the median best learning-rate multiplier at its smallest budget."""


def flops_warning(k: float) -> str:
    """The warning for a table without FLOPs (C = k·N·D assumed)."""
    return (f"no FLOPs column: C = {k:g}·N·D assumed (k in the fit spec, --k). For fine-tuning that "
            "is not the real cost (the frozen backbone's forward and backward are paid per token "
            "whatever N is): give the runs' FLOPs with --flops-col")  # fmt: skip


def prepare(table, spec: FitSpec, cols: Columns, *, source: str = "the table") -> Prepared:
    """Validate ``table`` (polars DataFrame) and split it into per-method fit points.

    Every row left out becomes an :class:`Exclusion` with its reason; raises ScalingError when the
    table is empty, lacks a needed column, or nothing is left to fit.
    """
    if table.height == 0:
        raise ScalingError(f"{source} is empty: nothing to fit")
    auto = cols.params == "auto"
    if auto:
        cols = dataclasses.replace(cols, params="trainable_params")
    optional = [c for c in (cols.lr, cols.lr_multiplier, cols.seed, cols.backbone_params)
                if c and c not in table.columns]  # fmt: skip
    if optional:  # tables collected before these columns existed, or a user's own
        cols = dataclasses.replace(cols, **{f.name: None for f in dataclasses.fields(cols)
                                            if getattr(cols, f.name) in optional})  # fmt: skip
    need = [c for c in (cols.params, cols.loss, cols.tokens, cols.flops, cols.method,
                        cols.budget, cols.run_id, cols.status, cols.error, cols.backbone) if c]  # fmt: skip
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ScalingError(
            f"column '{missing[0]}' not in {source}; columns: {', '.join(table.columns)}"
        )
    if sum(c is None for c in (cols.params, cols.tokens, cols.flops)) > 1:
        raise ScalingError("need two of parameters, tokens and FLOPs per run (--params-col, "
                           "--tokens-col, --flops-col)")  # fmt: skip
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
    size_axis = {m: "trainable" for m in set(method)}
    if cols.backbone:
        backbone = np.array([str(v) for v in col(cols.backbone)], dtype=object)
        several = {m: len(set(backbone[method == m])) > 1 for m in set(method)}
        if auto:  # the backbone ladder is the size axis of every method that spans it
            size_axis = {m: "backbone" if several[m] else "trainable" for m in set(method)}
            several = dict.fromkeys(several, False)
            if "backbone" in size_axis.values() and not cols.backbone_params:
                raise ScalingError(f"{source} has several backbones but no backbone_params column")
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
    trainable = N.copy()
    if "backbone" in size_axis.values():
        by_backbone = np.array([size_axis[m] == "backbone" for m in method])
        N = np.where(by_backbone, numeric(cols.backbone_params), N)
    D, C = numeric(cols.tokens), numeric(cols.flops)
    budget = numeric(cols.budget)
    if cols.flops is None:
        C = spec.k * N * D
        warnings.append(flops_warning(spec.k))
    if cols.tokens is None:
        D = C / (spec.k * N)
        warnings.append(f"no tokens column: D = C / ({spec.k:g}·N) (k in the fit spec, --k)")
    if cols.params is None:
        N = C / (spec.k * D)
        trainable = N.copy()
        warnings.append(f"no parameters column: N = C / ({spec.k:g}·D) (k in the fit spec, --k)")
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
            for label, v in ((cols.params or "derived parameters", N[i]), (cols.loss, L[i]),
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
    best_lr: dict[str, float] = {}
    if cols.lr:
        lr, mult, seed = numeric(cols.lr), numeric(cols.lr_multiplier), col(cols.seed, 0)
        drop, notes, best_lr = _best_learning_rates(method, run_id, N, C, budget, L, lr, mult, seed,
                                                    keep, spec.budget_tol)  # fmt: skip
        for i, best in drop:
            keep[i] = False
            exclusions.append(Exclusion(run_id[i], method[i],
                                        f"learning rate {lr[i]:.3g}: not the best at this point "
                                        f"({best:.3g} is)", "not the best learning rate"))  # fmt: skip
        warnings += notes
    points = {}
    for m in sorted(set(method[keep])):
        sel = keep & (method == m)
        group, budgets = _budgets(C[sel], budget[sel], spec.budget_tol)
        axis = size_axis.get(m, "trainable")
        points[m] = Points(m, run_id[sel], N[sel], D[sel], C[sel], L[sel], group, budgets,
                           axis, trainable[sel] if axis == "backbone" else None)  # fmt: skip
    return Prepared(points, exclusions, warnings, best_lr)


def _best_learning_rates(method, run_id, N, C, budget, L, lr, mult, seed, keep, tol):
    """Runs that differ only in their learning rate are one isoFLOP point: its best (lowest loss).
    Returns (runs to drop with the best rate, notes on bests at the edge of their grid, per method the
    median best multiplier at its smallest budget — what ``sweep --from-fit`` carries up)."""
    groups: dict[tuple, list[int]] = {}
    for m in set(method[keep]):
        sel = np.flatnonzero(keep & (method == m))
        g, _ = _budgets(C[sel], budget[sel], tol)
        for j, i in enumerate(sel):
            groups.setdefault((m, int(g[j]), float(N[i]), str(seed[i])), []).append(int(i))
    drop, edge, best_mult = [], {}, {}
    for (m, g, _, _), idx in groups.items():
        rates = sorted({float(lr[i]) for i in idx})
        if len(rates) < 2:
            continue
        best = min(idx, key=lambda i: L[i])
        drop += [(i, float(lr[best])) for i in idx if i != best]
        if lr[best] in (rates[0], rates[-1]):
            edge.setdefault(m, []).append(f"{run_id[best]} ({lr[best]:.3g} in [{rates[0]:.3g}, "
                                          f"{rates[-1]:.3g}])")  # fmt: skip
        if g == 0 and np.isfinite(mult[best]):
            best_mult.setdefault(m, []).append(float(mult[best]))
    notes = [f"{m}: {len(v)} point(s) have their best learning rate at the edge of the grid, e.g. "
             f"{v[0]}: widen the learning-rate grid" for m, v in sorted(edge.items())]  # fmt: skip
    return drop, notes, {m: float(np.median(v)) for m, v in best_mult.items()}


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


def run_curves(points: Points, curves, spec: FitSpec):
    """Approach 1's input: (row indices into ``points``, compute grid, L matrix, D matrix) of the
    runs' ``approach1.curve`` curves from a per-step metrics table, each interpolated onto the grid
    (:func:`scaling.fit.frontier.interpolate_curves`).

    One polars query over the whole table (only the five columns used, the kind and runs wanted,
    each run's first ``skip_fraction`` of steps dropped against its own last step) and one sort,
    then each run's arrays are slices of three numpy columns, with no filtered copy of every column
    and no frame per run (timed at 10⁷ rows by ``bench/analysis_scale.py``)."""
    import polars as pl

    s = spec.approach1
    need = {"run_id", "kind", "step", "flops", "tokens", "loss"}
    missing = need - set(curves.columns)
    if missing:
        raise ScalingError(f"metrics table lacks column(s) {', '.join(sorted(missing))}")
    ids = [str(r) for r in points.run_id]
    index = pl.DataFrame({"run_id": ids, "__row": np.arange(len(ids), dtype=np.int64)})
    rid = pl.col("run_id")
    if curves.schema["run_id"] in (pl.String, pl.Categorical):  # joined as they are (4 bytes a row)
        index = index.with_columns(rid.cast(curves.schema["run_id"]))
    else:  # run ids of another type (a user's table): compared as text, as the points hold them
        rid = rid.cast(pl.String)
    df = (
        curves.lazy()
        .select(rid, "kind", "step", "flops", "loss", "tokens")
        .filter(pl.col("kind") == s.curve)
        .join(index.lazy(), on="run_id", how="inner")
        .filter(
            (pl.col("step") > s.skip_fraction * pl.col("step").max().over("__row"))
            & (pl.col("flops") > 0) & (pl.col("loss") > 0) & (pl.col("tokens") > 0)
            & pl.col("loss").is_finite()
        )
        .select("__row", "step", *(pl.col(c).cast(pl.Float64) for c in ("flops", "loss", "tokens")))
        .sort("__row", "step")
        .collect()
    )  # fmt: skip
    row = df["__row"].to_numpy()
    cols = [df[c].to_numpy() for c in ("flops", "loss", "tokens")]
    rows, first, counts = np.unique(row, return_index=True, return_counts=True)
    keep = counts >= 2
    rows, first, counts = rows[keep], first[keep], counts[keep]
    data = [tuple(c[a : a + n] for c in cols) for a, n in zip(first, counts, strict=True)]
    if len(rows) < 2:
        return list(rows), None, None, None
    grid = curve_grid(data, s.points)
    Lm, Dm = interpolate_curves(data, grid)
    return rows, grid, Lm, Dm
