"""Figures of a fit (matplotlib, Agg backend). Plots never fit: they draw a :class:`scaling.fit.results.FitReport`.

    >>> from scaling.fit import plots
    >>> fig = plots.isoflop(report)                  # one matplotlib Figure per function
    >>> plots.save_all(report, "runs/quickstart/fit")   # every figure as PNG and PDF

Figures: ``isoflop`` (loss vs N per budget, fitted parabolas and their minima), ``frontier`` (L*(C) per
method and approach with bootstrap bands, and every run), ``optimal`` (N*(C) and D*(C) with intervals),
``residuals`` (approach 3 log residuals vs N, D and C), ``isoloss`` (approach 3 contours of L(N, D)
with isoFLOP lines and the compute-optimal path), ``holdout`` (predicted vs observed loss at the
held-out budget), ``calibration`` (each rolling held-out budget's predicted L* interval, bootstrap
and calibrated, against its observed minimum) and, with per-step logs, ``envelope`` (approach 1). Laws of C are drawn in their
approach's style over the fitted budgets (shaded) and dashed beyond them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scaling.fit.approach3 import residuals as resid  # noqa: E402
from scaling.fit.results import FitReport  # noqa: E402
from scaling.io import atomic_path  # noqa: E402

STYLE = {"approach3": "-", "approach2": "-.", "approach1": ":"}
EXTRAPOLATED = {"ls": (0, (4, 3)), "lw": 0.9, "alpha": 0.6}
"""How a law is drawn beyond the budgets it was fitted on: dashed, thinner, fainter."""
LABEL = {"approach3": "approach 3 (L(N,D))", "approach2": "approach 2 (isoFLOP minima)",
         "approach1": "approach 1 (envelope)"}  # fmt: skip


def _size_axis(report: FitReport) -> str:
    """What N counts in these figures (one convention, or several with ``n = "auto"``)."""
    axes = sorted({mf.points.size_axis for mf in report.methods.values()})
    return report.spec.n if report.spec.n != "auto" else " or ".join(axes)


def _log(ax, *, x: bool = True, y: bool = False) -> None:
    """Log axes without minor tick labels (they collide when a range spans less than a decade)."""
    from matplotlib.ticker import NullFormatter

    for on, axis, set_scale in ((x, ax.xaxis, ax.set_xscale), (y, ax.yaxis, ax.set_yscale)):
        if on:
            set_scale("log")
            axis.set_minor_formatter(NullFormatter())


def _colors(names) -> dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(names)}


def _grid(n: int, width: float = 5.0, height: float = 4.0):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def _law(ax, C, Y, approach: str, color, label: str, fitted: tuple[float, float]) -> None:
    """A law of C: its approach's line style inside the fitted budgets, dashed outside them."""
    C, Y = np.asarray(C), np.asarray(Y)
    inside = (C >= fitted[0] / 1.01) & (C <= fitted[1] * 1.01)
    ax.plot(np.where(inside, C, np.nan), Y, STYLE[approach], color=color, label=label)
    out = ~inside
    out = out | np.r_[out[1:], False] | np.r_[False, out[:-1]]  # joined to the fitted part
    ax.plot(np.where(out, C, np.nan), Y, color=color, **EXTRAPOLATED)


def _fitted_range(ax, lo: float, hi: float, color) -> None:
    ax.axvspan(lo, hi, color=color, alpha=0.06, lw=0)


def isoflop(report: FitReport):
    """Loss vs N at each budget, the fitted parabola, and its minimum (hollow: not interior)."""
    fig, axes = _grid(len(report.methods))
    cmap = plt.get_cmap("viridis")
    for ax, (m, mf) in zip(axes, report.methods.items(), strict=True):
        p = mf.points
        nb = len(p.budgets)
        for g, budget in enumerate(p.budgets):
            color = cmap(g / max(nb - 1, 1))
            sel = p.group == g
            ax.scatter(p.N[sel], p.L[sel], s=14, color=color, label=f"C={budget:.2g}")
            if mf.approach2 is None:
                continue
            par = mf.approach2.parabolas[g]
            if all(np.isfinite(par.coef)):
                lo, hi = par.window or (
                    p.N[sel].min(),
                    p.N[sel].max(),
                )  # the window it was fitted on
                ns = np.geomspace(lo / 1.3, hi * 1.3, 100)
                ax.plot(ns, par.curve(ns), color=color, lw=1)
            if par.n_opt is not None and par.loss_opt is not None:
                ok = par.status == "ok"
                ax.plot(par.n_opt, par.loss_opt, marker="*" if ok else "o", ms=12 if ok else 8,
                        mfc=color if ok else "none", mec="k", ls="none")  # fmt: skip
                if "n_opt" in par.ci:
                    lo, hi = par.ci["n_opt"]
                    ax.plot([lo, hi], [par.loss_opt] * 2, color="k", lw=1)
        _log(ax)
        ax.set_xlabel(f"N ({_size_axis(report)} parameters)")
        ax.set_ylabel("loss")
        ax.set_title(f"{m}: isoFLOP curves (★ interior minimum, ○ edge)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def frontier(report: FitReport):
    """L*(C) per method and approach, with bootstrap bands, over every run's (C, L)."""
    fig, axes = _grid(1, 7, 5)
    ax = axes[0]
    colors = _colors(report.methods)
    for m, mf in report.methods.items():
        c = colors[m]
        ax.scatter(mf.points.C, mf.points.L, s=8, color=c, alpha=0.35)
        fitted = (float(mf.points.budgets.min()), float(mf.points.budgets.max()))
        _fitted_range(ax, *fitted, c)
        for approach, cols in mf.frontier.items():
            _law(ax, cols["C"], cols["L"], approach, c, f"{m}: {LABEL[approach]}", fitted)
            if np.isfinite(cols["L_lo"]).any():
                ax.fill_between(cols["C"], cols["L_lo"], cols["L_hi"], color=c, alpha=0.15, lw=0)
        if mf.approach2 is not None:
            ok = [p for p in mf.approach2.parabolas if p.status == "ok"]
            ax.plot([p.budget for p in ok], [p.loss_opt for p in ok], "*", color=c, mec="k", ms=10)
    _log(ax)
    # The loss axis spans the runs (a band that widens far outside the data would flatten them).
    losses = np.concatenate([mf.points.L for mf in report.methods.values()])
    lows = [np.nanmin(cols["L"]) for mf in report.methods.values() for cols in mf.frontier.values()
            if np.isfinite(cols["L"]).any()]  # fmt: skip
    lo, hi = min([losses.min(), *lows]), losses.max()
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("loss")
    ax.set_title("compute frontier L*(C) (shaded: fitted budgets; dashed: extrapolated; bands: "
                 "bootstrap interval)", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def optimal(report: FitReport):
    """N*(C) and D*(C): isoFLOP minima with intervals, and each approach's law with its band."""
    fig, axes = _grid(2)
    colors = _colors(report.methods)
    for ax, key, label in ((axes[0], "N", f"N* ({_size_axis(report)} parameters)"),
                           (axes[1], "D", "D* (tokens)")):  # fmt: skip
        for m, mf in report.methods.items():
            c = colors[m]
            fitted = (float(mf.points.budgets.min()), float(mf.points.budgets.max()))
            _fitted_range(ax, *fitted, c)
            for approach, cols in mf.frontier.items():
                _law(ax, cols["C"], cols[key], approach, c, f"{m}: {LABEL[approach]}", fitted)
                if np.isfinite(cols[f"{key}_lo"]).any():
                    ax.fill_between(cols["C"], cols[f"{key}_lo"], cols[f"{key}_hi"], color=c,
                                    alpha=0.15, lw=0)  # fmt: skip
            if mf.approach2 is None:
                continue
            attr = "n_opt" if key == "N" else "d_opt"
            for p in mf.approach2.parabolas:
                v = getattr(p, attr)
                if v is None or p.status != "ok":
                    continue
                yerr = None
                if attr in p.ci:
                    lo, hi = p.ci[attr]
                    yerr = [[max(v - lo, 0)], [max(hi - v, 0)]]
                ax.errorbar([p.budget], [v], yerr=yerr, fmt="o", color=c, mec="k", capsize=3)
        _log(ax, x=True, y=True)
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    axes[0].set_title("compute-optimal size N*(C) (dashed: extrapolated)")
    axes[1].set_title("compute-optimal tokens D*(C) (dashed: extrapolated)")
    fig.tight_layout()
    return fig


def residuals(report: FitReport):
    """Approach-3 residuals log L − log L̂ against N, D and C."""
    fig, axes = _grid(3, 4.5, 3.8)
    colors = _colors(report.methods)
    for m, mf in report.methods.items():
        if mf.approach3 is None:
            continue
        r = resid(mf.approach3, mf.points)
        for ax, x in zip(axes, (mf.points.N, mf.points.D, mf.points.C), strict=True):
            ax.scatter(x, r, s=10, color=colors[m], label=m)
    for ax, name in zip(axes, ("N", "D (tokens)", "C (FLOPs)"), strict=True):
        ax.axhline(0, color="k", lw=0.8)
        _log(ax)
        ax.set_xlabel(name)
        ax.set_ylabel("log L − log L̂ (approach 3)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def isoloss(report: FitReport):
    """Contours of the approach-3 L(N, D), isoFLOP lines C = D·F(N), and the optimal path N*(C)."""
    fits = {m: mf for m, mf in report.methods.items() if mf.approach3 is not None}
    fig, axes = _grid(max(len(fits), 1), 5.5, 4.5)
    for ax, (m, mf) in zip(axes, fits.items(), strict=False):
        a3, p = mf.approach3, mf.points
        ns = np.geomspace(p.N.min() / 3, p.N.max() * 3, 120)
        ds = np.geomspace(p.D.min() / 3, p.D.max() * 3, 120)
        NN, DD = np.meshgrid(ns, ds)
        LL = a3.predict(NN, DD)
        levels = np.quantile(LL, np.linspace(0.02, 0.9, 12))
        cs = ax.contour(NN, DD, LL, levels=np.unique(levels), cmap="viridis", linewidths=0.8)
        ax.clabel(cs, fontsize=6, fmt="%.3g")
        for budget in p.budgets:
            ax.plot(ns, budget / a3.flops(ns), color="0.6", lw=0.6)
        cs_ = np.geomspace(p.budgets.min() / 3, p.budgets.max() * 3, 40)
        n_opt, d_opt, _ = a3.optimal(cs_)
        ax.plot(n_opt, d_opt, "r-", lw=1.5, label="compute-optimal N*(C), D*(C)")
        ax.scatter(p.N, p.D, c=p.L, s=12, cmap="viridis", edgecolors="k", linewidths=0.3)
        _log(ax, x=True, y=True)
        ax.set_xlim(ns[0], ns[-1])
        ax.set_ylim(ds[0], ds[-1])
        ax.set_xlabel(f"N ({_size_axis(report)} parameters)")
        ax.set_ylabel("D (tokens)")
        ax.set_title(f"{m}: isoloss contours of L(N, D) (grey: isoFLOP lines)")
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def envelope(report: FitReport):
    """Approach 1: the envelope points and its laws."""
    fits = {m: mf for m, mf in report.methods.items() if mf.approach1 is not None}
    if not fits:
        return None
    fig, axes = _grid(1, 7, 5)
    ax = axes[0]
    colors = _colors(report.methods)
    for m, mf in fits.items():
        e = mf.approach1.envelope
        ax.scatter(e.C, e.L, s=14, color=colors[m], label=f"{m}: envelope ({e.curve} loss)")
        if mf.approach1.loss is not None:
            cs = np.geomspace(e.C.min(), e.C.max(), 100)
            ax.plot(cs, mf.approach1.loss(cs), color=colors[m], lw=1)
    _log(ax)
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("lowest logged loss")
    ax.set_title("approach 1: envelope of training curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def holdout(report: FitReport):
    """The held-out check: approach 3's predicted vs observed loss of every held-out run (fitted on
    the smaller budgets), with its MAPE and bias, and each approach's L* against the observed minimum."""
    fits = {m: mf for m, mf in report.methods.items() if mf.holdout is not None
            and (mf.holdout.observed or mf.holdout.observed_loss_opt is not None)}  # fmt: skip
    if not fits:
        return None
    fig, axes = _grid(1, 6, 5)
    ax = axes[0]
    colors = _colors(report.methods)
    values = []
    for m, mf in fits.items():
        h, c = mf.holdout, colors[m]
        held = ", ".join(f"{b:.3g}" for b in h.held_out)
        if h.observed:
            ax.scatter(h.observed, h.predicted, s=16, color=c,
                       label=f"{m} at C={held}: approach 3, MAPE {h.mape:.2%}, bias {h.bias:+.2%}")  # fmt: skip
            values += [*h.observed, *h.predicted]
        if h.observed_loss_opt is not None:
            for approach, marker in (("approach3", "*"), ("approach2", "D")):
                err = h.loss_error(approach)
                if err is None:
                    continue
                pred = h.observed_loss_opt * (1 + err)
                ax.plot([h.observed_loss_opt], [pred], marker, color=c, mec="k", ms=11 - 3 * (marker == "D"),
                        ls="none", label=f"{m}: {approach} L* {err:+.2%}")  # fmt: skip
                values += [h.observed_loss_opt, pred]
    lo, hi = min(values), max(values)
    pad = 0.03 * (hi - lo or hi)
    ax.plot(
        [lo - pad, hi + pad], [lo - pad, hi + pad], color="k", lw=0.8, label="predicted = observed"
    )
    ax.set_xlabel("observed loss (held-out budget)")
    ax.set_ylabel("predicted from the smaller budgets")
    ax.set_title("held-out check: predicted vs observed loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def calibration(report: FitReport):
    """The rolling held-out checks: per method and held-out budget, each approach's predicted L*
    (from the budgets below) with its bootstrap interval (thick) and the interval widened by the
    approach's discrepancy (thin), against the observed isoFLOP minimum (black); the predictions at
    ``--predict`` budgets the same way, without an observation."""
    fits = {m: mf.calibration for m, mf in report.methods.items()
            if mf.calibration is not None and (mf.calibration.check.folds
                                               or mf.calibration.predictions)}  # fmt: skip
    if not fits:
        return None
    fig, axes = _grid(len(fits))
    styles = {"approach3": ("tab:blue", "*", 0.97), "approach2": ("tab:orange", "D", 1.03)}
    for ax, (m, a) in zip(axes, fits.items(), strict=False):
        seen = set()
        for f in a.check.folds:
            if f.predicted is None:
                continue
            color, marker, shift = styles[f.approach]
            x = f.budget * shift
            cal = a.check.calibrations.get(f.approach)
            wide = cal.interval(f.predicted, f.interval, f.distance) if cal else None
            if wide is not None:
                ax.plot([x, x], wide, color=color, lw=0.8)
            if f.interval is not None:
                ax.plot([x, x], f.interval, color=color, lw=3, alpha=0.6)
            ax.plot([x], [f.predicted], marker, color=color, mec="k", ms=7,
                    label=None if f.approach in seen else f"{f.approach} (held out)")  # fmt: skip
            seen.add(f.approach)
            ax.plot([f.budget], [f.observed], "o", color="k", ms=5,
                    label=None if "obs" in seen else "observed minimum")  # fmt: skip
            seen.add("obs")
        for p in a.predictions:
            color, marker, shift = styles[p.approach]
            x = p.C * shift
            if p.calibrated is not None:
                ax.plot([x, x], p.calibrated, color=color, lw=0.8, ls="--")
            if p.interval is not None:
                ax.plot([x, x], p.interval, color=color, lw=3, alpha=0.3)
            ax.plot([x], [p.loss], marker, color=color, mfc="none", ms=7,
                    label=None if ("p", p.approach) in seen else f"{p.approach} (--predict)")  # fmt: skip
            seen.add(("p", p.approach))
        _log(ax)
        ax.set_xlabel("compute C (FLOPs)")
        ax.set_ylabel("L* (loss at the compute-optimal allocation)")
        ax.set_title(
            f"{m}: predicted L* (bootstrap thick, calibrated thin) vs observed", fontsize=9
        )
        ax.legend(fontsize=7)
    for ax in axes[len(fits) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


FIGURES = {"isoflop": isoflop, "frontier": frontier, "optimal": optimal, "residuals": residuals,
           "isoloss": isoloss, "envelope": envelope, "holdout": holdout,
           "calibration": calibration}  # fmt: skip


def save_all(report: FitReport, out: str | Path) -> list[Path]:
    """Every figure as ``<name>.png`` and ``<name>.pdf`` in ``out`` (each written atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(report)
        if fig is None:
            continue
        try:
            for ext in ("png", "pdf"):
                path = out / f"{name}.{ext}"
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, dpi=110, format=ext)
                written.append(path)
        finally:
            plt.close(fig)
    return written
