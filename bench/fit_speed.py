"""Wall time of the approach-3 multi-start fit: batched vs a per-start scipy loop, and the bootstrap.

    python bench/fit_speed.py                 # Chinchilla's 240 points, the 4500-start grid
    python bench/fit_speed.py --quick         # every 10th start in the loop (its time scaled ×10)

On the same data (Hoffmann et al.'s points as digitised by Epoch, ``svg_extracted_data.csv``, which is not
shipped: see ``CSV`` below; D = C / 6N, the 5 highest losses dropped; or a synthetic Chinchilla-like set
when the file is absent):

- ``batched``: :func:`scaling.fit.laws.fit_lse` on Chinchilla's 4500 starts — all starts advanced
  together by :func:`scaling.fit.lbfgs.lbfgs_batched`, the 3 best distinct end points polished by scipy;
- ``loop``: the straightforward way — ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` once per
  start on the same objective, gradient, bounds and centring, with the batch stage's tolerances
  (ftol 1e-12, gtol 1e-6, 500 iterations), then the same polish of its 3 best distinct end points;
- ``bootstrap``: 1000 resamples of the runs refitted at once from the point estimate + 4 grid starts
  (:func:`scaling.fit.laws.refit_lse`, what ``scaling fit`` does per method);
- ``pipeline``: :func:`scaling.fit.fit` with the default spec (4500 starts, 1000 resamples, held-out
  refit, approaches 1-2, comparison) on a simulated two-method sweep (scaling.fit.synth).

Both fits run with single-threaded BLAS (what ``scaling fit`` does; OpenBLAS threads only spin on
work this small, and slow the scipy loop far more than the batch). Writes bench/results/fit_speed.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy
import scipy.optimize

from scaling import fit
from scaling.fit import collect, synth
from scaling.fit import laws as fit_laws
from scaling.fit.lbfgs import polish_one, single_threaded_blas
from scaling.fit.spec import FitSpec
from scaling.io import write_json

# Epoch AI's digitisation of Hoffmann et al.'s points is not shipped (no licence to redistribute):
# looked for beside the repository or in $SCALING_REFERENCE_DATA, else a synthetic stand-in is used.
CSV = (
    Path(
        os.environ.get("SCALING_REFERENCE_DATA")
        or Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    / "svg_extracted_data.csv"
)
OUT = Path(__file__).resolve().parent / "results" / "fit_speed.json"


def data() -> tuple[np.ndarray, np.ndarray, str]:
    if CSV.is_file():
        import polars as pl

        df = pl.read_csv(CSV)
        N, C, L = (df[c].to_numpy() for c in ("Model Size", "Training FLOP", "loss"))
        keep = L < np.sort(L)[-5]
        N, C, L = N[keep], C[keep], L[keep]
        return np.log(np.c_[N, C / (6 * N)]), np.log(L), f"{CSV.name} ({keep.sum()} points)"
    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(math.log(7e7), math.log(1.6e10), 240))
    D = np.exp(rng.uniform(math.log(5e9), math.log(5e11), 240))
    L = (1.82 + 482 / N**0.348 + 2085 / D**0.366) * np.exp(rng.normal(0, 0.01, 240))
    return np.log(np.c_[N, D]), np.log(L), "synthetic Chinchilla-like (240 points)"


def loop_fit(X, y, starts, stride: int) -> tuple[float, np.ndarray]:
    """Per-start scipy, then the same polish as the batched fit. Returns (best objective, ends)."""
    x0 = X.mean(axis=0)
    Xc = X - x0
    lo, hi = fit_laws.bounds(2)

    def f1(th):
        f, g = fit_laws.objective(th[None], Xc, y)
        return float(f[0]), g[0]

    ends, fs = [], []
    for s in np.clip(fit_laws.to_centred(starts[::stride], x0), lo, hi):
        r = scipy.optimize.minimize(f1, s, jac=True, method="L-BFGS-B",
                                    bounds=list(zip(lo, hi, strict=True)),
                                    options=dict(ftol=1e-12, gtol=1e-6, maxiter=500, maxcor=6))  # fmt: skip
        ends.append(r.x)
        fs.append(r.fun)
    fs = np.array(fs)
    picks: list[np.ndarray] = []
    for i in np.argsort(fs):
        if len(picks) == 3:
            break
        if all(np.abs(ends[i] - p).max() > 1e-3 for p in picks):
            picks.append(ends[i])
    best = min(polish_one(lambda th, rows: fit_laws.objective(th, Xc, y), p, lo, hi).fun
               for p in picks)  # fmt: skip
    return best * fit_laws.HUBER_DELTA**2, fs * fit_laws.HUBER_DELTA**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="loop over every 10th start, time ×10")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    X, y, source = data()
    starts = fit_laws.chinchilla_grid()
    stride = 10 if args.quick else 1
    results: dict = {"data": source, "starts": len(starts), "cpus": os.cpu_count(),
                     "load_average_before": os.getloadavg()[0]}  # fmt: skip
    with single_threaded_blas():
        fit_laws.fit_lse(X, y, starts[::50])  # warm-up: imports, caches
        t = time.perf_counter()
        batched = fit_laws.fit_lse(X, y, starts)
        results["batched_s"] = time.perf_counter() - t
        t = time.perf_counter()
        loop_best, loop_ends = loop_fit(X, y, starts, stride)
        results["loop_s"] = (time.perf_counter() - t) * stride
    results["loop_starts_run"] = len(starts[::stride])
    results["ratio_loop_over_batched"] = results["loop_s"] / results["batched_s"]
    results["batched_best_objective"] = batched.objective
    results["loop_best_objective"] = loop_best
    results["batched_at_optimum"] = batched.at_optimum
    results["loop_at_optimum"] = float(np.mean(loop_ends <= batched.objective * (1 + 1e-4)))
    results["fit"] = dict(zip(("E", "A", "B", "alpha", "beta"),
                              (batched.E, *batched.coef, *batched.exponents), strict=True))  # fmt: skip

    # 1000-resample bootstrap of approach 3 on the same data.
    rng = np.random.default_rng(0)
    W = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=1000).astype(float)
    boot_starts = np.vstack([np.array(batched.theta)[None], starts[rng.choice(len(starts), 4)]])
    t = time.perf_counter()
    th, _ = fit_laws.refit_lse(X, y, W, boot_starts)
    results["bootstrap_1000_s"] = time.perf_counter() - t
    q = np.quantile(th[:, 2:4], [0.025, 0.975], axis=0)
    results["bootstrap_alpha_ci"], results["bootstrap_beta_ci"] = q[:, 0].tolist(), q[:, 1].tolist()

    # The whole `scaling fit` pipeline with the default spec on a simulated two-method sweep.
    with tempfile.TemporaryDirectory() as tmp:
        synth.simulate(Path(tmp) / "sweep", noise=0.005, seed=0)
        c = collect.collect(Path(tmp) / "sweep")
        spec = FitSpec(predict=[1e14])
        t = time.perf_counter()
        report = fit.fit(c.table(spec), spec, curves=c.curves)
        results["pipeline_s"] = time.perf_counter() - t
        results["pipeline_points"] = {m: len(mf.points) for m, mf in report.methods.items()}
    results |= {"python": platform.python_version(), "numpy": np.__version__,
                "scipy": scipy.__version__, "machine": platform.machine(),
                "load_average_after": os.getloadavg()[0]}  # fmt: skip
    write_json(args.out, results)
    print(json.dumps(results, indent=2))
    print(f"\nbatched {results['batched_s']:.1f} s vs per-start loop {results['loop_s']:.1f} s: "
          f"{results['ratio_loop_over_batched']:.0f}× faster; bootstrap (1000 resamples) "
          f"{results['bootstrap_1000_s']:.1f} s; whole pipeline {results['pipeline_s']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
