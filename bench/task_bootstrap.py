"""Task-law bootstrap: batched refits vs the former one-by-one scipy refits (issue 18).

    python bench/task_bootstrap.py                # 60 runs × 5 evaluations, 200 resamples, two tasks
    python bench/task_bootstrap.py --resamples 40 # a quick look
    python bench/task_bootstrap.py --readme       # re-render bench/README.md's block

Synthetic tasks on an isoFLOP grid (12 sizes from 1e5 to 1e7 × 5 budgets from 1e13 to 1e15, C = 6ND),
each run with 5 task evaluations at fractions of its tokens: task loss L = 1 + 50/N^0.3 + 100/D^0.3
(0.5% log-normal noise per run), accuracy either a sigmoid through the runs' losses (a = 0.7, k = −4,
L0 = 2.5, b = 0.2, ±0.01 noise: *well-identified*) or 64 examples drawn from a sigmoid whose rise lies
far below every loss (accuracy ≈ 0: *on its floor*). Both bootstraps see the same resamples and starts
(the same seed): :func:`scaling.fit.taskfit._bootstrap` (every resample at once, batched L-BFGS) and the
former loop, kept here as the reference — per resample, the runs repeated by their counts, step 1 by
``least_squares`` from the point estimate and ``bootstrap.starts`` screened grid starts, step 2 by
``curve_fit`` from the point estimate and its default starts. Reported: seconds each, and how far apart
their per-resample estimates and 95% intervals are.

Writes bench/results/task_bootstrap.json; ``--readme`` renders its table between
``<!-- generated:task_bootstrap -->`` markers of bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from scaling.fit import taskfit, tasklaw
from scaling.fit.bootstrap import resample_weights
from scaling.fit.frontier import fit_flops_model
from scaling.fit.points import Points
from scaling.fit.spec import FitSpec
from scaling.io import write_json

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "task_bootstrap.json"
BUDGETS = (1e13, 3e13, 1e14, 3e14, 1e15)
THETA = ("log A", "log B", "alpha", "beta", "log E")


def synthetic(case: str, sizes: int, evals: int, seed: int = 0) -> tuple[Points, pl.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, run_id, N, D, C, group = [], [], [], [], [], []
    for g, c in enumerate(BUDGETS):
        for n in np.geomspace(1e5, 1e7, sizes):
            rid, d = f"r{len(run_id)}", c / (6 * n)
            run_id.append(rid), N.append(n), D.append(d), C.append(c), group.append(g)
            offset = np.exp(rng.normal(0, 0.005))
            for j in range(1, evals + 1):
                loss = (1.0 + 50.0 * n**-0.3 + 100.0 * (d * j / evals) ** -0.3) * offset
                if case == "well-identified":
                    acc = tasklaw.sigmoid(loss, 0.7, -4.0, 2.5, 0.2) + rng.normal(0, 0.01)
                else:
                    acc = rng.binomial(64, tasklaw.sigmoid(loss, 0.7, -4.0, 0.5, 0.0)) / 64
                rows.append({"run_id": rid, "kind": "task/arith", "step": j,
                             "loss": float(loss), "accuracy": float(acc)})  # fmt: skip
    points = Points("ladder", np.array(run_id), np.array(N), np.array(D), np.array(C),
                    np.full(len(N), 3.0), np.array(group), np.array(BUDGETS))  # fmt: skip
    return points, pl.DataFrame(rows)


def one_by_one(data, step1, step2, spec, seed):
    """The former bootstrap: the same draws as :func:`taskfit._bootstrap`, refitted one by one."""
    R = min(spec.bootstrap.resamples, spec.tasks.resamples)
    rng = np.random.default_rng(seed)
    W = resample_weights(data.points, R, rng)
    screened = tasklaw.screen_starts(data.points.N, data.points.D, data.loss, spec.tasks.delta)
    k = min(spec.bootstrap.starts, len(screened))
    p0 = np.array([step2.a, step2.k, step2.L0, step2.b])
    thetas, sigs = [], []
    for w in W:
        d = taskfit._resample(data, w)
        extra = screened[rng.choice(len(screened), k, replace=False)]
        s1 = tasklaw.solve_step1(d.points.N, d.points.D, d.loss, np.vstack([step1.theta, extra]),
                                 spec.tasks.delta)  # fmt: skip
        s2 = tasklaw.solve_step2(d.pair_loss, d.pair_acc, p0) if np.ptp(d.pair_acc) > 0 else None
        ok = s1 is not None and s2 is not None
        thetas.append(s1[0] if ok else np.full(5, np.nan))
        sigs.append(s2[0] if ok else np.full(4, np.nan))
    return np.array(thetas), np.array(sigs)


def measure(case: str, args) -> dict:
    points, curves = synthetic(case, args.sizes, args.evals)
    spec = FitSpec.from_dict({"bootstrap": {"resamples": args.resamples, "starts": args.starts},
                              "tasks": {"resamples": args.resamples}})  # fmt: skip
    data = tasklaw.task_data(points, curves, "arith", intermediate=True)
    s1 = tasklaw.fit_task_loss(data.points.N, data.points.D, data.loss)
    s2 = tasklaw.fit_sigmoid(data.pair_loss, data.pair_acc)
    fm = fit_flops_model(points.N, points.fpt)
    grid = np.geomspace(points.C.min(), points.C.max() * 3, tasklaw.CURVE_POINTS)
    t = time.perf_counter()
    boot = taskfit._bootstrap(data, s1, s2, fm, grid, spec, args.seed)
    batched = time.perf_counter() - t
    t = time.perf_counter()
    th_old, sg_old = one_by_one(data, s1, s2, spec, args.seed)
    loop = time.perf_counter() - t
    ok = np.isfinite(th_old).all(axis=1) & np.isfinite(sg_old).all(axis=1)
    out = {"case": case, "runs": len(data.loss), "evaluations": len(data.pair_loss),
           "resamples": args.resamples, "failed": {"batched": boot["failed"],
                                                   "one_by_one": int((~ok).sum())},
           "seconds": {"batched": round(batched, 2), "one_by_one": round(loop, 2)},
           "speedup": round(loop / batched, 1), "intervals": {}}  # fmt: skip
    if boot["thetas"] is None:
        return out
    old = {"theta": th_old[ok], "sig": sg_old[ok]}
    new = {"theta": boot["thetas"], "sig": boot["sig"]}
    if boot["failed"] == 0:  # every batched resample kept: compare on those the loop did not fail
        pair = {k: (new[k][ok], old[k]) for k in new}
        out["max_abs_diff_per_resample"] = {
            name: float(np.max(np.abs(pair[key][0][:, i] - pair[key][1][:, i])))
            for key, names in (("theta", THETA), ("sig", tasklaw.STEP2_NAMES))
            for i, name in enumerate(names)
        }  # fmt: skip
        # Step 2's objective at each end point (a flat direction, e.g. the slope of a sigmoid that
        # is a step, lets the two solvers stop at different parameters with equally good fits).
        W = resample_weights(data.points, args.resamples, np.random.default_rng(args.seed))
        Wp = W[ok][:, data.pair_run]
        sse = {k: np.array([np.sum(w * (tasklaw.sigmoid(data.pair_loss, *p) - data.pair_acc) ** 2)
                            for w, p in zip(Wp, v, strict=True)])
               for k, v in (("batched", pair["sig"][0]), ("one_by_one", pair["sig"][1]))}  # fmt: skip
        excess = sse["batched"] / sse["one_by_one"] - 1
        out["step2_sse"] = {"batched_at_most_one_by_one": int(np.sum(excess <= 1e-9)),
                            "of": len(excess), "largest_relative_excess": float(excess.max())}  # fmt: skip
    for key, names in (("theta", THETA), ("sig", tasklaw.STEP2_NAMES)):
        for i, name in enumerate(names):
            out["intervals"][name] = {
                "batched": np.quantile(new[key][:, i], [0.025, 0.975]).tolist(),
                "one_by_one": np.quantile(old[key][:, i], [0.025, 0.975]).tolist(),
            }
    return out


def table(out: dict) -> str:
    lines = [f"Command: `{out['command']}` on {out['cpus']} CPUs (load average "
             f"{out['load_average_before']:.1f} before, {out['load_average_after']:.1f} after); "
             "the loop runs as the former code did, the batched refits on one BLAS thread (their "
             "own setting).", "",
             "| task | runs × evaluations | resamples (failed: one by one, batched) | one by one (s) "
             "| batched (s) | speed-up | largest per-resample difference, step 1 θ; step 2 | step-2 fits where the "
             "batched sum of squares is ≤ (largest excess) | 95% intervals, one by one → batched |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for r in out["cases"]:
        diff = r.get("max_abs_diff_per_resample")
        diffs = (
            "-"
            if diff is None
            else "; ".join(
                f"{max(diff[n] for n in names):.1g}" for names in (THETA, tasklaw.STEP2_NAMES)
            )
        )
        iv = "; ".join(f"{n} [{v['one_by_one'][0]:.3g}, {v['one_by_one'][1]:.3g}] → "
                       f"[{v['batched'][0]:.3g}, {v['batched'][1]:.3g}]"
                       for n, v in r["intervals"].items() if n in ("alpha", "k", "L0"))  # fmt: skip
        sse = r.get("step2_sse")
        sse = "-" if sse is None else (f"{sse['batched_at_most_one_by_one']} of {sse['of']} "
                                       f"({sse['largest_relative_excess']:.1g})")  # fmt: skip
        lines.append(f"| {r['case']} | {r['runs']} × {r['evaluations'] // r['runs']} | "
                     f"{r['resamples']} ({r['failed']['one_by_one']}, {r['failed']['batched']}) | "
                     f"{r['seconds']['one_by_one']:.1f} | {r['seconds']['batched']:.2f} | "
                     f"×{r['speedup']:.0f} | {diffs} "
                     f"| {sse} | {iv} |")  # fmt: skip
    return "\n".join(lines)


def render_readme(results: Path, readme: Path) -> None:
    out = json.loads(results.read_text())
    text = readme.read_text()
    pattern = re.compile(r"(<!-- generated:task_bootstrap -->\n)(?:.*?\n)?"
                         r"(<!-- /generated:task_bootstrap -->)", re.S)  # fmt: skip
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda m: m[1] + table(out) + "\n" + m[2], text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resamples", type=int, default=200)
    ap.add_argument("--starts", type=int, default=4, help="bootstrap.starts (step 1)")
    ap.add_argument("--sizes", type=int, default=12, help="sizes per budget (5 budgets)")
    ap.add_argument("--evals", type=int, default=5, help="task evaluations per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--readme", action="store_true", help="only re-render bench/README.md's block")
    args = ap.parse_args()
    if args.readme:
        render_readme(Path(args.out), HERE / "README.md")
        return
    out: dict = {"command": " ".join(["python bench/task_bootstrap.py", *sys.argv[1:]]),
                 "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0]}  # fmt: skip
    out["cases"] = [measure(case, args) for case in ("well-identified", "on its floor")]
    out["load_average_after"] = os.getloadavg()[0]
    write_json(args.out, out)
    print(table(out))
    if Path(args.out).resolve() == OUT:  # a trial run elsewhere leaves the README alone
        render_readme(OUT, HERE / "README.md")


if __name__ == "__main__":
    main()
