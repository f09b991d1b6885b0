"""Figures of the task laws (matplotlib, Agg backend): they draw a fit's
:class:`scaling.fit.taskfit.TaskReport`, never fit.

    >>> from scaling.fit import taskplots
    >>> fig = taskplots.task_figure(report.tasks, "arith")    # one Figure per task evaluation
    >>> taskplots.save_all(report, "runs/quickstart/fit")      # task-<name>.png and .pdf

Each figure has two panels: accuracy vs training compute per method (every run's final accuracy, the
chained law Acc(L*(C)) with its bootstrap band, solid over the fitted budgets and dashed beyond), and
accuracy vs task loss (every run's final evaluation, and the fitted sigmoid). A fit that is not
identified is marked so, without a chained curve (and with a dotted sigmoid if step 2 is the cause).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scaling.io import atomic_path  # noqa: E402

PREFIX = "task-"
SUFFIXES = (".png", ".pdf")


def figure_name(task: str) -> str:
    """``task-<name>`` with any character unsafe in a file name replaced by ``_``."""
    return PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", task)


def is_task_figure(filename: str) -> bool:
    """Whether ``filename`` is one of the figures :func:`save_all` writes."""
    return filename.startswith(PREFIX) and filename.endswith(SUFFIXES)


def task_figure(tasks, task: str):
    """Accuracy vs compute (left) and accuracy vs task loss (right) for every method fitted.

    A method whose fit is not identified (:attr:`scaling.fit.taskfit.TaskFit.identification`) keeps its
    runs but is marked NOT IDENTIFIED in both legends: no chained accuracy curve or band is drawn for
    it (the accuracy vs compute needs both steps), and its sigmoid is drawn dotted when step 2 is the
    step not identified, so that no curve the data do not pin down looks like a result."""
    fits = tasks.fits.get(task, {})
    if not fits:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    unknown = []
    for i, (m, f) in enumerate(fits.items()):
        c = colors[i % len(colors)]
        ident = f.identification
        bad = [k[-1] for k in ("step1", "step2") if ident.get(k)]
        tag = f" — NOT IDENTIFIED (step {', '.join(bad)})" if bad else ""
        if bad:
            unknown.append(m)
            ax.scatter(f.C, f.accuracy, s=14, color=c, alpha=0.6,
                       label=f"{m}: runs; no Acc(L*(C)){tag}")  # fmt: skip
        else:
            ax.scatter(f.C, f.accuracy, s=14, color=c, alpha=0.6)
            C, acc = np.asarray(f.curve["C"]), np.asarray(f.curve["acc"])
            inside = C <= f.C.max() * 1.01
            ax.plot(C[inside], acc[inside], color=c, label=f"{m}: Acc(L*(C))")
            beyond = max(int(inside.sum()) - 1, 0)  # joined to the solid part
            ax.plot(C[beyond:], acc[beyond:], color=c, ls="--")
            if "acc_lo" in f.curve:
                ax.fill_between(C, f.curve["acc_lo"], f.curve["acc_hi"], color=c, alpha=0.15, lw=0)
        bx.scatter(f.loss, f.accuracy, s=14, color=c, alpha=0.6)
        grid = np.linspace(min(f.loss.min(), np.nanmin(f.curve["L"])), f.loss.max(), 100)
        s = f.step2
        step2_bad = bool(ident.get("step2"))
        bx.plot(grid, f.step2.predict(grid), color=c, ls=":" if step2_bad else "-",
                label=f"{m}: a={s.a:.2g}, k={s.k:.2g}, L0={s.L0:.3g}, b={s.b:.2g}"
                + (" — NOT IDENTIFIED" if step2_bad else ""))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"{task} accuracy")
    ax.set_title("accuracy vs compute (dashed: extrapolated)"
                 + (f"\nnot identified, no law drawn: {', '.join(unknown)}" if unknown else ""),
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=7)
    bx.set_xlabel(f"{task} task loss")
    bx.set_ylabel(f"{task} accuracy")
    bx.set_title("Acc(L) = a / (1 + e^(−k(L − L0))) + b (dotted: not identified)", fontsize=10)
    bx.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_all(report, out: str | Path) -> list[Path]:
    """Every task's figure as ``task-<name>.png`` and ``.pdf`` in ``out`` (each written atomically);
    nothing when the fit has no task laws."""
    tasks = getattr(report, "tasks", None)
    if tasks is None:
        return []
    out = Path(out)
    written = []
    for task in sorted(tasks.fits):
        fig = task_figure(tasks, task)
        if fig is None:
            continue
        try:
            for ext in SUFFIXES:
                path = out / f"{figure_name(task)}{ext}"
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, dpi=110, format=ext[1:])
                written.append(path)
        finally:
            plt.close(fig)
    return written
