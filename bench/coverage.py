"""Coverage of the L* intervals at the next budget: bootstrap vs calibrated (issue 21).

    python bench/coverage.py                          # synthetic suites, 40 seeds, 5 and 7 budgets
    python bench/coverage.py --seeds 10 --budgets 5   # a quick look
    python bench/coverage.py --data DIR               # also a public sweep (see below)
    python bench/coverage.py --readme                 # re-render the tables (README, docs)

**Synthetic suites** (:mod:`scaling.fit.coverage`): each seed a sweep of ``--methods`` methods
(Hoffmann et al.'s law, the form approach 3 assumes, and two neighbours), well specified, with an
extra curvature in log C, or with under-trained runs; ``--budgets`` log-spaced budgets half a decade
apart, 7 sizes each (±0.8 decade around the optimum), 0.5% log-normal noise. Each method's last
budget is held out; every approach is fitted on the others (bootstrap included) and predicts its L*;
the earlier rolling-origin folds calibrate the widening: pooled over the methods (``holdout.pool``,
as ``scaling fit`` does) and, for comparison, each method's own alone. The coverage is the share of
trials (seeds × methods) whose interval holds the last budget's observed isoFLOP minimum.

**Public sweep**: Hoffmann et al.'s (2022) isoFLOP points as digitised by Epoch AI
(``svg_extracted_data.csv``: model size, training FLOPs, loss; D = C/6N), not shipped (no licence to
redistribute): given with ``--data`` (a directory holding it) or ``$SCALING_REFERENCE_DATA``, else
that part is skipped and says so. Every rolling-origin fold is fitted with the default spec (the
4500-start grid, 1000 resamples), as ``scaling fit`` would; each fold's widened interval uses only
the folds before it.

Writes bench/results/coverage.json; ``--readme`` renders its table between
``<!-- generated:coverage -->`` markers of bench/README.md, and a summary between
``<!-- generated:coverage-summary -->`` markers of docs/fitting.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import scipy

from scaling.fit import coverage
from scaling.fit.folds import APPROACHES, rolling_folds
from scaling.fit.lbfgs import single_threaded_blas
from scaling.fit.spec import FitSpec
from scaling.io import write_json

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "coverage.json"
CSV = "svg_extracted_data.csv"
CHINCHILLA_BUDGETS = (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21)
"""Hoffmann et al.'s (2022) isoFLOP budgets (their Figure 3)."""
NEAR = 0.1
"""Decades (log10 C) a digitised point may lie from its nominal budget."""
FOUR_STARTS = {"alpha": [0.5], "e": [0.5], "a": [0.0, 10.0], "polish": 1}
"""Approach-3 starts for the synthetic suites: these sweeps have one basin, and 4 starts reach the
same optimum as a 32-start grid (tests/fit/test_calibration.py uses the same)."""


def synthetic(seeds: int, budgets: list[int], resamples: int, methods: int) -> list[dict]:
    spec = FitSpec.from_dict({"approach3": FOUR_STARTS,
                              "bootstrap": {"resamples": resamples, "starts": 1}})  # fmt: skip
    rows = []
    for nb in budgets:
        grid = tuple(np.logspace(18, 18 + 0.5 * (nb - 1), nb))
        for suite, kw in (("well_specified", {}),
                          ("curvature", {"curvature": coverage.CURVATURE}),
                          ("undertrained", {"undertrained": coverage.UNDERTRAINED})):  # fmt: skip
            t = time.perf_counter()
            r = coverage.measure(lambda s, m, kw=kw, grid=grid: coverage.sweep(
                                     s, method=m, budgets=grid, **kw),
                                 seeds=range(seeds), spec=spec, name=suite, methods=methods)  # fmt: skip
            for a in r.n:
                print(f"{nb} budgets: {r.line(a)}", flush=True)
            rows.append(r.to_json() | {"budgets": nb, "seeds": seeds, "methods": methods,
                                       "wall_s": time.perf_counter() - t})  # fmt: skip
    return rows


def public(directory: str | None) -> dict:
    """Rolling-origin folds on Hoffmann et al.'s isoFLOP points, each widened by its earlier folds."""
    import polars as pl

    from scaling.fit.points import Columns, prepare

    path = Path(directory or os.environ.get("SCALING_REFERENCE_DATA") or ".") / CSV
    if not path.is_file():
        return {"skipped": f"{CSV} not found (give --data DIR or $SCALING_REFERENCE_DATA)"}
    spec = FitSpec()
    table = pl.read_csv(path).select(
        pl.col("Model Size").alias("N"),
        pl.col("Training FLOP").alias("C"),
        pl.col("loss").alias("L"),
    )
    table = table.filter(
        pl.col("L") < table["L"].sort()[-5]
    )  # Epoch's analysis drops the 5 highest
    # The digitised FLOPs scatter around Hoffmann et al.'s nine isoFLOP budgets: each point goes to
    # the nearest one, and points further than NEAR decades from every one are left out.
    lc = np.log10(table["C"].to_numpy())
    nominal = np.log10(CHINCHILLA_BUDGETS)
    near = np.abs(lc[:, None] - nominal[None, :])
    table = table.with_columns(pl.Series("budget", 10 ** nominal[near.argmin(axis=1)]))
    keep = near.min(axis=1) <= NEAR
    table = table.filter(pl.Series(keep))
    cols = Columns(params="N", loss="L", flops="C", budget="budget")
    points = prepare(table, spec, cols).points["all"]
    t = time.perf_counter()
    folds = rolling_folds(points, spec, seed=0,
                          progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))  # fmt: skip
    out: dict = {"data": CSV, "points": len(points), "left_out_off_budget": int((~keep).sum()),
                 "budgets": points.budgets.tolist(),
                 "spec": "default (4500 starts, 1000 resamples, level 0.95)",
                 "wall_s": time.perf_counter() - t, "approaches": {}}  # fmt: skip
    for a in APPROACHES:
        seq = coverage.sequential(folds, a, spec.bootstrap.level)
        rows = []
        for f, cal in seq:
            widened = cal.interval(f.predicted, f.interval, f.distance)
            rows.append({"budget": f.budget, "observed": f.observed, "predicted": f.predicted,
                         "form": f.form, "interval": f.interval, "calibrated": widened,
                         "tau": cal.tau, "folds_before": cal.dof, "covered": f.covered,
                         "covered_calibrated": None if widened is None
                         else widened[0] <= f.observed <= widened[1]})  # fmt: skip
        scored = [r for r in rows if r["interval"] and r["calibrated"]]
        all_folds = [f for f in folds if f.approach == a and f.interval is not None]
        out["approaches"][a] = {
            "folds": [f.to_json() for f in folds if f.approach == a],
            "bootstrap_coverage_all_folds": (float(np.mean([f.covered for f in all_folds]))
                                             if all_folds else None),
            "sequential": rows,
            "n": len(scored),
            "coverage": float(np.mean([r["covered"] for r in scored])) if scored else None,
            "calibrated": (float(np.mean([r["covered_calibrated"] for r in scored]))
                           if scored else None),
        }  # fmt: skip
    return out


def table(out: dict) -> str:
    lines = [f"Command: `{out['synthetic_command']}` (synthetic), `{out['command']}` (last run, "
             f"{out['wall_s']:.0f} s) on {out['cpus']} CPUs (load average "
             f"{out['load_average_before']:.1f} before, {out['load_average_after']:.1f} after). "
             f"Nominal level {out['level']:.0%}.", "",
             "Trials: each seed is a sweep of three methods (different laws, one misspecification), "
             "each method's last budget held out. Calibrated: the interval of the observed optimum "
             "(its own bootstrap spread added), τ the larger of the method's own folds' and the "
             "sweep's (`holdout.pool`); own folds: τ from the method's folds alone. Width columns: "
             "median width over the bootstrap interval with only the observation's spread added.",
             "",
             "| budgets (calibration folds) | suite | approach | trials | bootstrap coverage | "
             "calibrated coverage | own folds alone | median width calibrated / bootstrap | "
             "… / bootstrap ⊕ observed spread | own folds alone |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in out["synthetic"]:
        for a in APPROACHES:
            if a in r["n"]:
                lines.append(f"| {r['budgets']} ({r['budgets'] - 3}) | {r['suite']} | {a} | "
                             f"{r['n'][a]} | {r['coverage'][a]:.0%} | {r['calibrated'][a]:.0%} | "
                             f"{r['own'][a]:.0%} | ×{r['width_ratio'][a]:.2f} | "
                             f"{_ratio(r['tau_ratio'][a])} | {_ratio(r['own_ratio'][a])} |")  # fmt: skip
    p = out["public"]
    lines.append("")
    if "skipped" in p:
        lines.append(f"Public sweep: not measured ({p['skipped']}).")
        return "\n".join(lines)
    lines += [f"Public sweep: {p['data']} (Hoffmann et al. 2022's points digitised by Epoch AI, "
              "the 5 highest losses dropped as in Epoch's analysis), each point assigned to the "
              f"nearest of Hoffmann et al.'s isoFLOP budgets ({p['left_out_off_budget']} further "
              f"than {NEAR} decade left out): {p['points']} points in {len(p['budgets'])} budgets, "
              f"{p['spec']}. Each held-out budget's interval is widened by the folds before it "
              "only.", "",
              "| approach | held-out budget | observed L* | predicted | bootstrap 95% | covered | "
              "calibrated 95% | covered |", "|---|---:|---:|---:|---|---|---|---|"]  # fmt: skip
    for a, d in p["approaches"].items():
        for r in d["sequential"]:
            iv = r["interval"] and f"[{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"
            cal = r["calibrated"] and f"[{r['calibrated'][0]:.3f}, {r['calibrated'][1]:.3f}]"
            lines.append(f"| {a} | {r['budget']:.2g} | {r['observed']:.3f} | "
                         f"{r['predicted']:.3f} | {iv} | {r['covered']} | {cal} | "
                         f"{r['covered_calibrated']} |")  # fmt: skip
        if d["n"]:
            lines.append(f"| {a} | **all** | | | | **{d['coverage']:.0%}** of {d['n']} | | "
                         f"**{d['calibrated']:.0%}** of {d['n']} |")  # fmt: skip
    return "\n".join(lines)


def command(argv: list[str]) -> str:
    """The command line as recorded: without ``--out``, where the results went on the machine that
    ran it (not part of what was measured)."""
    kept, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            kept.append(a)
    return " ".join(["python bench/coverage.py", *kept])


def _ratio(x) -> str:
    return "-" if x is None else f"×{x:.2f}"


def summary_table(out: dict) -> str:
    """docs/fitting.md's table: per budgets, suite and approach, bootstrap → calibrated coverage."""
    lines = [f"Command: `{out['synthetic_command']}`.", "",
             "| budgets (folds per method) | suite | trials | approach 3: coverage | width | "
             "approach 2: coverage | width |", "|---|---|---:|---|---:|---|---:|"]  # fmt: skip
    for r in out["synthetic"]:
        cells = []
        for a in APPROACHES:
            cells += [f"{r['coverage'][a]:.0%} → **{r['calibrated'][a]:.0%}** ({r['own'][a]:.0%})",
                      _ratio(r["tau_ratio"][a])]  # fmt: skip
        lines.append(f"| {r['budgets']} ({r['budgets'] - 3}) | {r['suite']} | "
                     f"{r['n']['approach3']} | " + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def render(path: Path, marker: str, block: str) -> None:
    """Replace what lies between ``<!-- generated:MARKER -->`` lines of ``path`` with ``block``."""
    text = path.read_text()
    pattern = re.compile(rf"(<!-- generated:{marker} -->\n)(?:.*?\n)?(<!-- /generated:{marker} -->)",
                         re.S)  # fmt: skip
    if pattern.search(text):
        path.write_text(pattern.sub(lambda m: m[1] + block + "\n" + m[2], text))


def render_readme(results: Path, readme: Path) -> None:
    out = json.loads(results.read_text())
    render(readme, "coverage", table(out))
    render(HERE.parent / "docs" / "fitting.md", "coverage-summary", summary_table(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 7],
                    help="budgets per synthetic sweep (≥ 4: two folds calibrate, one is tested)")  # fmt: skip
    ap.add_argument("--resamples", type=int, default=200, help="bootstrap resamples (synthetic)")
    ap.add_argument("--methods", type=int, default=3, choices=range(1, len(coverage.LAWS) + 1),
                    help="methods per synthetic sweep (their folds pooled for τ)")  # fmt: skip
    ap.add_argument("--data", help=f"directory holding {CSV} (the public sweep)")
    ap.add_argument("--no-public", action="store_true", help="skip the public sweep")
    ap.add_argument("--public-only", action="store_true",
                    help="only the public sweep (the synthetic results kept from --out)")  # fmt: skip
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--readme",
        action="store_true",
        help="only re-render bench/README.md's and docs/fitting.md's tables",
    )
    args = ap.parse_args()
    if args.readme:
        render_readme(Path(args.out), HERE / "README.md")
        return
    if min(args.budgets) < 4:
        ap.error("--budgets: at least 4 (two calibration folds and a held-out budget)")
    out: dict = {"command": command(sys.argv[1:]),
                 "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0],
                 "level": 0.95, "resamples": args.resamples}  # fmt: skip
    t = time.perf_counter()
    with single_threaded_blas():
        if args.public_only:
            before = json.loads(Path(args.out).read_text())
            out["synthetic"] = before["synthetic"]
            out["synthetic_command"] = before.get("synthetic_command", before["command"])
        else:
            out["synthetic"] = synthetic(args.seeds, args.budgets, args.resamples, args.methods)
            out["synthetic_command"] = out["command"]
        out["public"] = {"skipped": "--no-public"} if args.no_public else public(args.data)
    out |= {"wall_s": time.perf_counter() - t, "load_average_after": os.getloadavg()[0],
            "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__}  # fmt: skip
    write_json(args.out, out)
    print(table(out))


if __name__ == "__main__":
    main()
