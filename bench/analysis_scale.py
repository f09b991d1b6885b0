"""Wall time of the analysis at scale: 10,000 runs × 1,000 log rows collected into one table, then fitted.

    python bench/analysis_scale.py                         # 10,000 runs × 1,000 rows (~0.5 GB in /tmp)
    python bench/analysis_scale.py --runs 500 --rows 100   # a quick look (under a minute)

Fabricates a trained-looking sweep directory in a temporary folder (``--dir`` to choose one, kept
with ``--keep``): the run ids, manifest, ``spec.json``, parameter counts and exact FLOPs per token are
those of a real sweep planned by :mod:`scaling.sweep` (:func:`scaling.fit.synth.tiny_spec`: Ladder by
side width, LoRA by rank, 4 budgets, as many seeds as ``--runs`` needs); losses follow
:mod:`scaling.fit.synth`'s laws times log-normal noise. Only the writers differ from
:func:`scaling.fit.synth.simulate` (which builds per-row dicts, far too slow for 10⁷ rows): each run's
``result.json`` is one ``json.dumps`` and its ``metrics.parquet`` (the columns :mod:`scaling.train`
logs: 90% train rows, 10% eval rows) one polars frame built from numpy slices. 1% of the runs are
``diverged`` (result, no metrics), as in a real sweep. The budgets are 20× fit_synth's so that every
run has at least ``--rows`` distinct logged steps.

Timed, each once, in this process:

- ``collect_cold_s``: :func:`scaling.fit.collect.collect` with no ``.collect/`` cache (it reads every
  file, builds both tables and writes the cache); the files were just written, so the OS page cache
  is warm — this is the cost of the parsing, not of the disk;
- ``collect_warm_s``: the same call again, answered from the cache (a stat of every file for the
  fingerprint, then two Parquet reads);
- ``fit_s``: :func:`scaling.fit.fit` on the collected table with its curves and the default spec
  (approaches 1, 2 and 3, 4500 starts, 1000 bootstrap resamples, the held-out check, the comparison).

Writes ``bench/results/analysis_scale.json`` (with the wall time of each stage of the fit) and, at the
default ``--out``, the block between ``<!-- generated:analysis_scale -->`` markers in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from scaling import fit, sweep
from scaling.fit import collect
from scaling.fit import synth as fit_synth
from scaling.fit.spec import FitSpec
from scaling.io import write_json

OUT = Path(__file__).resolve().parent / "results" / "analysis_scale.json"
BUDGETS = [20 * b for b in fit_synth.BUDGETS]  # ≥ 1,370 optimizer steps per run
NOISE = 0.003
DIVERGED_EVERY = 100


def plan(runs: int) -> tuple[sweep.Plan, dict[str, fit_synth.Law]]:
    """A real plan of ``runs`` runs: whole seeds of the synthetic sweep, the last seed partial."""
    one = sweep.build_plan(fit_synth.tiny_spec(seeds=[0]), BUDGETS)
    seeds = math.ceil(runs / len(one.runs))
    spec = fit_synth.tiny_spec(seeds=list(range(seeds)))
    p = sweep.build_plan(spec, BUDGETS)
    keep = sorted(p.runs, key=lambda r: r.seed)[:runs]  # stable: plan order within a seed
    laws = {m: fit_synth.choose_law(m, spec, BUDGETS, fit_synth.SHAPES[m]) for m in spec.methods}
    return sweep.Plan(p.spec, p.budgets, keep, p.dropped, p.warnings, p.fit), laws


def fabricate(root: Path, runs: int, rows: int, seed: int = 0) -> dict[str, float]:
    """Write the sweep directory; returns counts and the time each stage took."""
    t0 = time.perf_counter()
    p, laws = plan(runs)
    sweep.write(p, root)
    t1 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_eval = max(1, rows // 10)
    n_train = max(1, rows - n_eval)
    curve_rows = 0
    for i, r in enumerate(p.runs):
        d = root / "runs" / r.run_id
        law = laws[r.method]
        factor = math.exp(NOISE * rng.standard_normal())
        ok = (i + 1) % DIVERGED_EVERY != 0
        final = float(law.loss(r.trainable_params, r.tokens)) * factor
        result = {
            "format_version": 1, "run_id": r.run_id, "sweep": r.sweep,
            "status": "success" if ok else "diverged",
            "error": None if ok else "loss 4× its running minimum (fabricated)",
            "method": r.method, "dial": r.dial, "method_config": r.method_config,
            "backbone": r.backbone, "budget": r.budget, "seed": r.seed,
            "final_eval_loss": final if ok else None,
            "final_train_loss": final * 0.98 if ok else None, "planned_steps": r.steps,
            "steps": r.steps, "planned_tokens": r.tokens, "tokens": r.tokens,
            "planned_flops": r.realised_flops, "flops": r.realised_flops,
            "flops_per_token": r.flops_per_token, "trainable_params": r.trainable_params,
            "backbone_params": r.backbone_params, "wall_time_s": 1.0, "tokens_per_s": 1e4,
            "peak_memory_bytes": r.peak_memory_bytes, "provenance": {"fabricated": True},
        }  # fmt: skip
        (d / "result.json").write_text(json.dumps(result))
        if ok:
            curve_rows += _metrics(d / "metrics.parquet", r, law, factor, n_train, n_eval)
    t2 = time.perf_counter()
    return {"runs": len(p.runs), "curve_rows": curve_rows, "plan_and_specs_s": t1 - t0,
            "results_and_metrics_s": t2 - t1}  # fmt: skip


def _metrics(path: Path, r: sweep.RunSpec, law, factor: float, n_train: int, n_eval: int) -> int:
    train = np.unique(np.linspace(1, r.steps, n_train).round().astype(np.int64))
    ev = np.unique(np.linspace(r.steps / n_eval, r.steps, n_eval).round().astype(np.int64))
    steps = np.concatenate([train, ev])
    tokens = steps * r.batch_tokens
    scale = np.r_[np.full(len(train), 0.98), np.ones(len(ev))]
    is_train = np.r_[np.ones(len(train), bool), np.zeros(len(ev), bool)]
    train_only = lambda v: pl.Series(np.where(is_train, v, np.nan)).fill_nan(None)  # noqa: E731
    pl.DataFrame({
        "kind": pl.Series(np.where(is_train, "train", "eval")), "step": steps, "tokens": tokens,
        "flops": tokens * float(r.flops_per_token),
        "loss": law.loss(r.trainable_params, tokens) * factor * scale,
        "lr": train_only(1e-3), "grad_norm": train_only(1.0), "tokens_per_s": train_only(1e4),
        "peak_memory_bytes": train_only(float(r.peak_memory_bytes)),
        "wall_s": train_only(steps.astype(float)),
    }).write_parquet(path)  # fmt: skip
    return len(steps)


def _du(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=1_000, help="metrics rows per run")
    ap.add_argument("--dir", help="sweep directory to fabricate into (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the fabricated directory")
    ap.add_argument("--no-fit", action="store_true", help="time the collection only")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--readme", action="store_true",
                    help="only re-render bench/README.md's block from --out")  # fmt: skip
    args = ap.parse_args()
    if args.readme:
        render_readme(Path(args.out), README)
        return
    if args.dir and Path(args.dir).exists():
        sys.exit(f"{args.dir} exists: give a fresh directory (it is fabricated from scratch)")
    res: dict = {"bench": "analysis_scale", "cpus": os.cpu_count(),
                 "load_average_before": os.getloadavg()[0]}  # fmt: skip
    owned = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="scaling-analysis-scale-"))
    root = owned if args.dir else owned / "sweep"
    try:
        t = time.perf_counter()
        res["fabricated"] = fabricate(root, args.runs, args.rows)
        res["fabricate_s"] = time.perf_counter() - t
        res["disk_bytes"] = _du(root)
        print(f"fabricated {res['fabricated']['runs']:,} runs, "
              f"{res['fabricated']['curve_rows']:,} metrics rows, "
              f"{res['disk_bytes'] / 2**20:,.0f} MiB in {res['fabricate_s']:.1f} s → {root}")  # fmt: skip

        t = time.perf_counter()
        c = collect.collect([root])
        res["collect_cold_s"] = time.perf_counter() - t
        res["rss_after_collect_gib"] = _rss_gib()
        cold = (c.runs.height, c.curves.height)
        del c  # a user's process holds one table: each peak below is measured with one alive
        t = time.perf_counter()
        c = collect.collect([root])
        res["collect_warm_s"] = time.perf_counter() - t
        assert (c.runs.height, c.curves.height) == cold
        res["table"] = {"runs": c.runs.height, "curve_rows": c.curves.height,
                        "curves_mib": c.curves.estimated_size() / 2**20,
                        "cache_bytes": _du(root / collect.CACHE_DIR),
                        "statuses": dict(c.runs["status"].value_counts().iter_rows())}  # fmt: skip
        print(f"collect: cold {res['collect_cold_s']:.1f} s, warm (cache) "
              f"{res['collect_warm_s']:.2f} s")  # fmt: skip

        if not args.no_fit:
            spec = FitSpec()
            stages: list[list] = []

            def progress(stage):  # the wall time of each stage of the fit, as `scaling fit` shows
                now = time.perf_counter()
                if stages:
                    stages[-1][1] = now - stages[-1][1]
                if stage is not None:
                    stages.append([stage, now])
                    print(f"  fit: {stage}", flush=True)

            t = time.perf_counter()
            report = fit.fit(c.table(spec), spec, curves=c.curves, progress=progress)
            res["fit_s"] = time.perf_counter() - t
            res["fit_stages_s"] = [[name, float(dt)] for name, dt in stages]  # in order
            res["rss_after_fit_gib"] = _rss_gib()
            _, laws = plan(1)
            res["fit"] = {
                m: {"points": len(mf.points), "budgets": len(mf.points.budgets),
                    "approaches": [a for a in ("approach1", "approach2", "approach3")
                                   if getattr(mf, a) is not None],
                    "alpha": mf.approach3 and mf.approach3.alpha, "true_alpha": laws[m].alpha,
                    "beta": mf.approach3 and mf.approach3.beta, "true_beta": laws[m].beta,
                    "bootstrap": mf.bootstrap}
                for m, mf in report.methods.items()
            }  # fmt: skip
            res["fit_exclusions"] = len(report.exclusions)
            res["fit_spec"] = "FitSpec() (the defaults), curves from the collected metrics"
            print(f"fit: {res['fit_s']:.1f} s (" + ", ".join(
                f"{m} {v['points']:,} points, {'+'.join(a[-1] for a in v['approaches'])}"
                for m, v in res["fit"].items()) + ")")  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(owned, ignore_errors=True)
    res |= {
        "runs_asked": args.runs, "rows_asked": args.rows,
        "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
        "polars": pl.__version__, "numpy": np.__version__,
        "load_average_after": os.getloadavg()[0],
        "command": "python bench/analysis_scale.py" + "".join(
            f" --{k} {v}" for k, v in (("runs", args.runs), ("rows", args.rows))
            if v != ap.get_default(k)) + (" --no-fit" if args.no_fit else ""),
    }  # fmt: skip
    write_json(args.out, res)
    print(json.dumps({"written": args.out}))
    if Path(args.out).resolve() == OUT:
        render_readme(OUT, README)


README = Path(__file__).resolve().parent / "README.md"


def table(res: dict) -> str:
    """bench/README.md's block for ``res`` (an analysis_scale.json)."""
    f = res.get("fabricated", {})
    t = res.get("table", {})
    lines = [
        f"Machine: {res['cpus']} CPUs, load average {res['load_average_before']:.2f} before and "
        f"{res['load_average_after']:.2f} after. Command: `{res['command']}`. "
        f"{f.get('runs', 0):,} runs, {f.get('curve_rows', 0):,} metrics rows, "
        f"{res['disk_bytes'] / 2**20:,.0f} MiB on disk; the fabricated sweep is not part of the "
        f"timing ({res['fabricate_s']:.0f} s).",
        "",
        "| stage | wall time | goal | what |",
        "|---|---:|---:|---|",
        f"| `collect.collect`, cold (no `.collect/` cache; OS page cache warm) | "
        f"**{res['collect_cold_s']:.1f} s** | ≤ 5 s | {t.get('runs', 0):,} runs, "
        f"{t.get('curve_rows', 0):,} curve rows ({t.get('curves_mib', 0):,.0f} MiB in memory) |",
        f"| `collect.collect`, warm (from the cache) | **{res['collect_warm_s']:.2f} s** | | a stat "
        "of every file, two Parquet reads |",
    ]
    if "fit_s" in res:
        lines.append(f"| `fit.fit`, default spec, with the curves | **{res['fit_s']:.0f} s** | ≤ 60 s | "
                     "approaches 1, 2, 3, 4500 starts, 1000 resamples, held-out check, joint laws, "
                     "comparison |")  # fmt: skip
        for name, dt in res.get("fit_stages_s", []):
            lines.append(f"| &nbsp;&nbsp;{name} | {dt:.1f} s | | |")
        lines += ["", f"Peak RSS: {res['rss_after_collect_gib']:.2f} GiB after collecting, "
                      f"{res['rss_after_fit_gib']:.2f} GiB after fitting (goal ≤ 2 GiB)."]  # fmt: skip
    else:
        lines += ["", f"Peak RSS after collecting: {res['rss_after_collect_gib']:.2f} GiB."]
    return "\n".join(lines)


def render_readme(results: Path, readme: Path) -> None:
    """Rewrite the block between ``<!-- generated:analysis_scale -->`` markers from ``results``."""
    import re

    res = json.loads(Path(results).read_text())
    text = readme.read_text()
    pattern = re.compile(r"(<!-- generated:analysis_scale -->\n)(?:.*?\n)?(<!-- /generated:analysis_scale -->)",
                         re.S)  # fmt: skip
    if pattern.search(text):
        readme.write_text(pattern.sub(lambda m: m[1] + table(res) + "\n" + m[2], text))


if __name__ == "__main__":
    main()
