"""What ``scaling fit`` writes and prints: fits.json, frontier.parquet / .csv (N*, D*, L* on a grid
of C), minima.parquet / .csv (approach 2's per-budget minima), figures, the summary table.

    >>> from scaling.fit.report import summary, write_outputs
    >>> print(summary(report))
    >>> write_outputs(report, "runs/quickstart/fit")   # fits.json, frontier.parquet, *.png, *.pdf

The whole folder is written at once: built in a temporary sibling and swapped in by one rename
(:func:`scaling.io.atomic_dir`), so a full disk or a crash leaves the previous output as it was, never
a fits.json without its figures nor old figures beside a new fit. An existing folder is replaced only
when it is a previous fit's output (:func:`is_fit_output`); anything else is refused, never deleted.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scaling.errors import ScalingError, one_line
from scaling.fit.results import FitReport
from scaling.io import (
    atomic_dir,
    atomic_path,
    check_replaceable,
    check_writable,
    write_json,
    write_parquet,
    write_text,
)

FIT_FILES = ("fits.json", "frontier.parquet", "frontier.csv", "minima.parquet", "minima.csv",
             "summary.txt")  # fmt: skip
FIGURE_SUFFIXES = (".png", ".pdf")


def frontier_table(report: FitReport):
    """One row per method × approach × compute: C, N*, D*, L* and their bootstrap bands."""
    import polars as pl

    parts = []
    for m, mf in report.methods.items():
        cmax = mf.points.budgets.max() * 1.01
        for approach, cols in mf.frontier.items():
            n = len(cols["C"])
            parts.append(pl.DataFrame({
                "method": [m] * n, "approach": [approach] * n,
                **{k: np.asarray(v, dtype=float) for k, v in cols.items()},
                "extrapolated": np.asarray(cols["C"]) > cmax,
            }))  # fmt: skip
    if not parts:
        return pl.DataFrame()
    return pl.concat(parts, how="diagonal_relaxed")


def minima_table(report: FitReport):
    """Approach 2's per-budget minima, one row per method × budget: the window fitted, the lowest
    observed point, N*, D*, L* with their intervals, the status and its reason."""
    import polars as pl

    rows = []
    for m, mf in report.methods.items():
        if mf.approach2 is None:
            continue
        for p in mf.approach2.parabolas:
            ci = {f"{k}_{end}": v[i] for k, v in p.ci.items() for i, end in enumerate(("lo", "hi"))}
            rows.append({
                "method": m, "C": p.budget, "runs": p.n_points, "distinct_n": p.n_distinct,
                "runs_fitted": p.n_window, "window_n_lo": p.window and p.window[0],
                "window_n_hi": p.window and p.window[1], "lowest_n": p.lowest, "n_opt": p.n_opt,
                "d_opt": p.d_opt, "loss_opt": p.loss_opt, "status": p.status, "reason": p.reason,
                **{f"{k}_{e}": ci.get(f"{k}_{e}") for k in ("n_opt", "d_opt", "loss_opt")
                   for e in ("lo", "hi")},
            })  # fmt: skip
    schema = {"method": pl.String, "status": pl.String, "reason": pl.String}
    return pl.DataFrame(rows, schema_overrides=schema, infer_schema_length=None)


def _write_csv(frame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.write_csv(tmp)


def is_fit_output(path: Path) -> bool:
    """A folder a previous ``scaling fit`` wrote: its fits.json and nothing but what a fit writes
    (:data:`FIT_FILES` and its figures), so a folder where a user keeps anything else is refused."""
    if not (path / "fits.json").is_file():
        return False
    from scaling.fit.plots import FIGURES

    figures = {f"{name}{suffix}" for name in FIGURES for suffix in FIGURE_SUFFIXES}
    from scaling.fit.taskplots import is_task_figure

    return all(p.is_file() and (p.name in {*FIT_FILES, *figures} or is_task_figure(p.name))
               for p in path.iterdir())  # fmt: skip


def check_out(out: str | Path) -> None:
    """Raise a one-line ScalingError unless ``write_outputs`` could write ``out``: absent, empty or a
    previous fit's output, in a folder this process may create entries in. Checked before fitting,
    so a bad ``--out`` costs seconds, not a fit."""
    out = Path(out)
    check_replaceable(out, is_fit_output)
    check_writable(out)


def write_outputs(report: FitReport, out: str | Path, *, plots: bool = True) -> list[Path]:
    """fits.json, frontier.parquet, summary.txt and (unless ``plots`` is False) the figures, all or
    nothing: on any failure ``out`` is left as it was and the error is one line."""
    out = Path(out)
    try:
        with atomic_dir(out, owned=is_fit_output) as tmp:
            names = _write_files(report, tmp, plots=plots)
    except OSError as e:  # a full disk, a read-only parent: the previous output is still whole
        raise ScalingError(f"cannot write {out}: {e.strerror or one_line(e)} "
                           f"(nothing written; what was there is untouched)") from None  # fmt: skip
    return [out / name for name in names]


def _write_files(report: FitReport, folder: Path, *, plots: bool) -> list[str]:
    write_json(folder / "fits.json", clean_json(report.to_json()))
    frontier = frontier_table(report)
    write_parquet(frontier, folder / "frontier.parquet")
    _write_csv(frontier, folder / "frontier.csv")
    minima = minima_table(report)
    write_parquet(minima, folder / "minima.parquet")
    _write_csv(minima, folder / "minima.csv")
    write_text(folder / "summary.txt", summary(report) + "\n")
    names = list(FIT_FILES)
    if plots:
        from scaling.fit import plots as plots_mod

        names += [p.name for p in plots_mod.save_all(report, folder)]
        from scaling.fit import taskplots

        names += [p.name for p in taskplots.save_all(report, folder)]
    return names


def clean_json(obj):
    """JSON-safe: numpy scalars → Python, NaN/inf → null."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# --------------------------------------------------------------------------------------------------
# The printed summary


def _g(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}"


def _ratio(value: float, best: float) -> str:
    return f"{value / best:.3g}× best" if best > 1e-300 else f"{value:.2g}"


def _ci(ci: dict, key: str, digits: int = 3) -> str:
    if key not in ci:
        return ""
    lo, hi = ci[key]
    return f" [{_g(lo, digits)}, {_g(hi, digits)}]"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(header), *map(fmt, rows)]


def summary(report: FitReport) -> str:
    s = report.spec
    n_fit = sum(len(mf.points) for mf in report.methods.values())
    level = f"{s.bootstrap.level:.0%}"
    read = report.described or (f"N = {s.n} parameters, loss = {s.loss}"
                                + (f" (k={s.last_k})" if s.loss == "last_k_eval" else ""))  # fmt: skip
    lines = [
        f"scaling fit: {len(report.methods)} method(s), {n_fit} runs fitted, "
        f"{len(report.exclusions)} excluded; {read}"
        + f"; {s.bootstrap.resamples} bootstrap resamples ({level} intervals)",
    ]
    if report.exclusions:
        lines += ["", f"excluded ({len(report.exclusions)}):"]
        lines += [f"  {e}" for e in report.exclusions]
    rows = []
    for m, mf in report.methods.items():
        a3 = mf.approach3
        if a3 is None:
            rows.append((m, str(len(mf.points)), str(len(mf.points.budgets))) + ("-",) * 8)
            continue
        rows.append((
            m, str(len(mf.points)), str(len(mf.points.budgets)),
            _g(a3.E, 4) + _ci(a3.ci, "E"), _g(a3.A) + _ci(a3.ci, "A"), _g(a3.B) + _ci(a3.ci, "B"),
            _g(a3.alpha) + _ci(a3.ci, "alpha"), _g(a3.beta) + _ci(a3.ci, "beta"),
            f"{a3.at_optimum:.0%} of {a3.n_starts}; median start "
            f"{_ratio(a3.objective_spread['median'], a3.objective)}"
            + (f"; on a bound: {','.join(a3.bound_hits)}" if a3.bound_hits else ""),
            "converged" if a3.converged_polish
            else f"{a3.polish_message.split(':')[0]}, |g| {a3.grad_norm:.1g}",
            _residuals(a3), _identified(mf, "approach3"),
        ))  # fmt: skip
    lines += ["", "approach 3: L(N, D) = E + A/N^α + B/D^β"]
    lines += _table(("method", "runs", "budgets", "E", "A", "B", "α", "β",
                     "starts at the optimum; spread", "optimiser", "residuals", "law"), rows)  # fmt: skip
    lines += _minima(report)
    rows = []
    for m, mf in report.methods.items():
        for name in ("approach1", "approach2", "approach3"):
            fit = getattr(mf, name)
            if fit is None or getattr(fit, "n_opt", None) is None:
                continue
            n, d = fit.n_opt, fit.d_opt
            loss = getattr(fit, "loss", None)
            lexp = (loss.alpha, loss.ci) if loss is not None else (fit.loss_exponent, fit.ci)
            key = "alpha" if loss is not None else "loss_exponent"
            rows.append((m, name, _g(n.A) + _ci(n.ci, "A"), _g(n.a) + _ci(n.ci, "a"),
                         _g(d.A) + _ci(d.ci, "A"), _g(d.a) + _ci(d.ci, "a"),
                         _g(lexp[0]) + _ci(lexp[1], key), _identified(mf, name)))  # fmt: skip
    if rows:
        lines += ["", "compute-optimal allocation: N*(C) = A·C^a, D*(C) = B·C^b, L*(C) − E ∝ C^−γ"]
        lines += _table(("method", "approach", "A", "a", "B", "b", "γ", "law"), rows)
    unknown = [(m, name, r) for m, mf in report.methods.items()
               for name, rs in mf.identification.items() for r in rs]  # fmt: skip
    if unknown:
        lines += ["", "not identified (the data do not pin these laws down):"]
        lines += [f"  {m} {name}: {r}" for m, name, r in unknown]
    rows = []
    for m, mf in report.methods.items():
        if mf.optimal_params is not None:
            o = mf.optimal_params
            rows.append((m, f"N*(C) = {_g(o.A)}·C^{_g(o.a, 4)}", o.source))
    missing = [(m, mf.optimal_params_reason) for m, mf in report.methods.items()
               if mf.optimal_params is None and mf.optimal_params_reason]  # fmt: skip
    if rows or missing:
        lines += ["", "optimal_params (for `scaling sweep --from-fit fits.json`):"]
        if rows:
            lines += ["  " + r for r in _table(("method", "law", "source"), rows)]
        lines += [f"  {m}: none written — {why}" for m, why in missing]
    rows = []
    for m, mf in report.methods.items():
        h = mf.holdout
        if h is None:
            continue
        held = ", ".join(_g(c) for c in h.held_out) or "-"
        rows.append((m, held, f"{h.n_train}/{h.n_test}",
                     "-" if h.mape is None else f"{h.mape:.2%}",
                     "-" if h.bias is None else f"{h.bias:+.2%}",
                     "-" if h.approach3_loss_error is None else f"{h.approach3_loss_error:+.2%}",
                     "-" if h.approach2_loss_error is None else f"{h.approach2_loss_error:+.2%}",
                     "-" if h.approach2_n_ratio is None else f"{h.approach2_n_ratio:.3g}",
                     h.reason or ""))  # fmt: skip
    if rows:
        lines += [
            "",
            "held-out check (fit on the smaller budgets, predict the largest with an "
            "interior isoFLOP minimum; L* error: predicted / observed minimum − 1):",
        ]
        lines += _table(("method", "held out C", "train/test", "A3 MAPE", "A3 bias",
                         "A3 L* error", "A2 L* error", "A2 N* ratio", "note"), rows)  # fmt: skip
    lines += _rolling(report)
    lines += _joint(report)
    preds = [(m, q) for m, mf in report.methods.items() for q in mf.predictions]
    if preds:
        lines += ["", f"predictions: (L* with its bootstrap {level} interval; calibrated: widened for "
                      "the rolling held-out record)"]  # fmt: skip
        lines += _table(
            ("method", "C", "approach", "N*", "D*", "L*", "calibrated", ""),
            [(m, _g(q.C), q.approach, _g(q.n_opt) + _ci(q.ci, "n_opt"),
              _g(q.d_opt) + _ci(q.ci, "d_opt"), _g(q.loss, 4) + _ci(q.ci, "loss", 4),
              _ci(q.ci, "loss_calibrated", 4).strip() or "-",
              "extrapolated" if q.extrapolated else "") for m, q in preds],
        )  # fmt: skip
    trust = [(m, t) for m, mf in report.methods.items() if mf.calibration
             for t in mf.calibration.trust]  # fmt: skip
    if trust:
        lines += ["", "which approach to trust (the better held-out record where they disagree):"]
        lines += [f"  {m} at C={_g(t.C)}: "
                  + (f"{t.trusted} — " if t.disagree and t.trusted else "") + t.reason
                  for m, t in trust]  # fmt: skip
    if report.comparison:
        lines += ["", _comparison(report.comparison)]
    if report.advice:
        lines += ["", f"memory-aware advice ({report.spec.gpu_mem}):"]
        for a in report.advice:
            b, u = a["best_fitting"], a["unconstrained"]
            if b is None:
                lines.append(f"  {a['method']} at C={_g(a['C'])}: no configuration fits")
                continue
            extra = "" if b["config"] == u["config"] else (
                f"; unconstrained best {_dial(u)} L={_g(u['loss'], 4)} needs "
                f"{_bytes(u['peak_bytes'])}")  # fmt: skip
            if a.get("trusted_loss"):
                t = a["trusted_loss"]
                lines.append(f"  {a['method']} at C={_g(a['C'])}: approach 3 (which ranks these "
                             f"configurations) disagrees with {t['approach']}, which has the better "
                             f"held-out record: expect L* near {_g(t['loss'], 4)}"
                             + _ci({"l": t["ci"]} if t["ci"] else {}, "l", 4))  # fmt: skip
            lines.append(
                f"  {a['method']} at C={_g(a['C'])}: {_dial(b)} (N={_g(b['n'])}, D={_g(b['d'])}, "
                f"micro-batch {b['micro_batch_size']}) predicted L={_g(b['loss'], 4)}"
                f"{_ci({'l': b['loss_ci']} if b.get('loss_ci') else {}, 'l', 4)}, "
                f"peak {_bytes(b['peak_bytes'])}{' (extrapolated)' if b['extrapolated'] else ''}"
                + extra
            )
    if report.tasks is not None:
        from scaling.fit.taskfit import summary_lines

        lines += summary_lines(report.tasks)
    notes = [f"{m}: {n}" for m, mf in report.methods.items() for n in mf.notes]
    if notes or report.warnings:
        lines += ["", "notes:"] + [f"  {n}" for n in [*report.warnings, *notes]]
    return "\n".join(lines)


def _rolling(report: FitReport) -> list[str]:
    """The rolling held-out checks: every fold's prediction against the observed minimum, and per
    approach the bootstrap intervals' coverage, the discrepancy and the held-out record."""
    rows, recs = [], []
    for m, mf in report.methods.items():
        a = mf.calibration
        if a is None:
            continue
        if a.check.reason:
            recs.append(f"  {m}: no rolling check — {a.check.reason}")
        for f in a.check.folds:
            rows.append((m, _g(f.budget), str(f.n_train_budgets), f.approach,
                         _g(f.predicted, 4) + _ci({"l": f.interval} if f.interval else {}, "l", 4),
                         _g(f.observed, 4), "-" if f.error is None else f"{f.error:+.2%}",
                         {True: "yes", False: "NO", None: "-"}[f.covered]
                         if f.predicted is not None else (f.reason or "")))  # fmt: skip
        for name, c in a.check.calibrations.items():
            if not c.folds:
                continue
            n = sum(f.interval is not None for f in c.folds)
            cov = "-" if c.coverage is None else f"{round(c.coverage * n)}/{n}"
            loo = "" if c.calibrated_coverage is None else (
                f", calibrated {c.calibrated_coverage:.0%} (τ from the other folds)")  # fmt: skip
            recs.append(f"  {m} {name}: bootstrap intervals held {cov} observed minima{loo}; "
                        f"RMS error {c.rmse:.2%}, bias {c.bias:+.2%}; discrepancy τ = "
                        f"{c.tau:.2%} per decade from {c.dof} fold(s)"
                        + (f" ({c.tau_folds})" if c.tau_folds else ""))  # fmt: skip
    held_out = [{f.budget for f in mf.calibration.check.folds if f.predicted is not None}
                for mf in report.methods.values() if mf.calibration]  # fmt: skip
    few = any(0 < len(b) <= 2 for b in held_out)
    if few:  # docs/fitting.md, "Calibrated extrapolation": measured on the coverage suites
        pooled = ", even pooled over methods," if report.spec.holdout.pool else ""
        recs.append("  τ from two held-out budgets or fewer per method is a rough guide: where the "
                    f"law bends, such short folds often cannot see it{pooled} and the calibrated "
                    "intervals cover less than their level; each budget added is one more fold")  # fmt: skip
    if not rows and not recs:
        return []
    out = ["", "rolling held-out check (fit on the budgets below, predict the next one's L*; "
               "observed: its isoFLOP minimum):"]  # fmt: skip
    if rows:
        out += _table(("method", "held-out C", "budgets fitted", "approach", "predicted L*",
                       "observed", "error", "in interval"), rows)  # fmt: skip
    return out + recs


def _joint(report: FitReport) -> list[str]:
    """The joint laws per method, their held-out errors and the form the data prefer."""
    rows, verdicts = [], []
    for m, mf in report.methods.items():
        j = mf.joint
        if j is None:
            continue
        for f in j.fits:
            p = f.params
            rows.append((m, f.form, _g(p.get("E"), 4), _g(p.get("A")), _g(p.get("alpha")),
                         _g(p.get("B")), _g(p.get("beta")), _g(p.get("G")), _g(p.get("gamma")),
                         "-" if f.holdout_mape is None else f"{f.holdout_mape:.2%}",
                         "-" if f.holdout_bias is None else f"{f.holdout_bias:+.2%}",
                         ("preferred" if f.form == j.preferred else "")
                         + (f"; on a bound: {','.join(f.bound_hits)}" if f.bound_hits else "")
                         + (f"; {f.reason}" if f.reason else "")))  # fmt: skip
        pref = j.get(j.preferred) if j.preferred else None
        if pref is None:
            verdicts.append(f"  {m}: {j.reason}")
            continue
        text = f"  {m}: the data prefer {pref.form} ({j.reason})"
        if pref.isoflop_direction is not None:
            text += (f"; under it the isoFLOP loss is monotone in N (N^(β−α), β−α = "
                     f"{pref.params['beta'] - pref.params['alpha']:+.3g}): the compute-optimal "
                     f"size is the {pref.isoflop_direction} one, not an interior N*(C)")  # fmt: skip
        verdicts.append(text)
    if not rows:
        return []
    return (["", "joint laws (all budgets; held-out: refitted without the largest, predicting it):",
             "  additive L = E + A·N^−α + B·D^−β (+ G·P^−γ); multiplicative L = E + A·N^−α·D^−β "
             "(·P^−γ) (Zhang et al. 2024)"]
            + _table(("method", "form", "E", "A", "α", "B", "β", "G", "γ", "held-out MAPE",
                      "bias", ""), rows)
            + verdicts)  # fmt: skip


def _identified(mf, approach: str) -> str:
    return "NOT IDENTIFIED" if mf.identification.get(approach) else "identified"


def _dial(entry) -> str:
    parts = [f"{k}={v}" for k, v in (entry.get("dial") or {}).items()]
    if entry["config"].get("gradient_checkpointing"):
        parts.append("gradient_checkpointing")
    return ", ".join(parts) or "default config"


def _bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= 0.1 * scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _residuals(a3) -> str:
    rs = a3.residual_structure
    if not rs:
        return "-"
    return f"rms {rs['rms']:.2%}" + ("; STRUCTURED" if rs["structured"] else "")


def _minima(report: FitReport) -> list[str]:
    """Approach 2's per-budget minima: the window fitted, N*, L* and the status of each budget."""
    rows = []
    for m, mf in report.methods.items():
        if mf.approach2 is None:
            continue
        for p in mf.approach2.parabolas:
            win = "-" if p.window is None else f"{_g(p.window[0])}–{_g(p.window[1])}"
            rows.append((m, _g(p.budget), f"{p.n_window}/{p.n_points}", win,
                         _g(p.n_opt) + _ci(p.ci, "n_opt"), _g(p.loss_opt, 4), p.status))  # fmt: skip
    if not rows:
        return []
    w = report.spec.approach2.window
    how = f"±{w:g} decade(s) around each budget's lowest point" if w > 0 else "the whole grid"
    return (["", f"approach 2: isoFLOP minima (parabola in log N fitted on {how})"]
            + _table(("method", "C", "runs fitted", "N fitted", "N*", "L*", "status"), rows))  # fmt: skip


def _comparison(c: dict) -> str:
    ref = c.get("reference")
    head = f"method comparison ({c['source']} frontiers"
    head += f", {c['chosen_by']}" if c.get("chosen_by") else ""
    head += f"; each method against {ref}, {c['reference_how']}):" if ref else "):"
    lines = [head]
    for m in c["multipliers"]:
        v = m["multiplier"]
        mark = ""
        if m.get("extrapolated"):
            why = [w for w, on in (("C outside a fitted range", m.get("budget_outside")),
                                   (f"reached outside {m['method']}'s fitted budgets",
                                    m.get("reached_outside"))) if on]  # fmt: skip
            mark = " [EXTRAPOLATED" + (f": {'; '.join(why)}" if why else "") + "]"
        if v is None:
            text = "undefined" if m.get("reached") is None else "never reaches it"
            lines.append(f"  {m['method']} vs {m['versus']} at C={_g(m['C'])}: {text}{mark}")
            continue
        text = f"{v:.3g}×"
        ci = f" [{m['ci'][0]:.3g}, {m['ci'][1]:.3g}]" if m["ci"] else ""
        un = m.get("unreached_fraction")
        tail = f" ({un:.0%} of resamples never reach it)" if un else ""
        lines.append(
            f"  {m['method']} needs {text}{ci} the compute of {m['versus']} at C={_g(m['C'])} "
            f"for equal loss{tail}{mark}"
        )
    for x in c["crossovers"]:
        where = "inside" if x["observed"] else "outside"
        lines.append(
            f"  frontiers of {x['methods'][0]} and {x['methods'][1]} cross at C={_g(x['C'])} "
            f"({where} the fitted budgets); {x['better_above']} is better above it"
        )
    if not c["crossovers"]:
        lines.append("  the frontiers do not cross within 1e-3× to 1e4× the fitted budgets")
    for e in c["exponents"]:
        sig = {True: "significant", False: "not significant", None: ""}[e["significant"]]
        ci = f" [{e['ci'][0]:+.3g}, {e['ci'][1]:+.3g}]" if e["ci"] else ""
        lines.append(
            f"  {e['approach']} {e['exponent']}: {e['methods'][0]} {e['values'][0]:.3g} vs "
            f"{e['methods'][1]} {e['values'][1]:.3g}, difference {e['difference']:+.3g}{ci} {sig}"
        )
    lines += [f"  {n}" for n in c["notes"]]
    return "\n".join(lines)
