"""``scaling fit``: fit scaling laws and compute frontiers to a sweep's runs (or any table of runs).

    scaling fit runs/quickstart                                   # → runs/quickstart/fit/
    scaling fit runs/a runs/b --out fits/ab --predict 1e18 --gpu-mem 12GB
    scaling fit analysis/default.toml runs/quickstart --json     # a fit spec, then the inputs
    scaling fit table.csv --params-col N --tokens-col D --loss-col loss --flops-col C --method-col method

Everything is checked before anything is written; bad input is a one-line error (exit code 2).
:mod:`scaling.fit.pipeline` has the methodology; :mod:`scaling.fit.report` what is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scaling.config import parse_overrides
from scaling.errors import ScalingError

HELP = "fit scaling laws, compute frontiers and method comparisons to a sweep's runs"
EXAMPLE = "scaling fit runs/quickstart --predict 1e13 --gpu-mem 12GB"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="sweep run directories, or one CSV/Parquet table of runs; a leading "
                             ".toml is a fit spec (see analysis/)")  # fmt: skip
    parser.add_argument("--spec", help="fit spec TOML (default: built-in defaults)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a fit spec value, TOML-typed, e.g. --set bootstrap.resamples=200 "
                             "(repeatable; recorded in fits.json's settings)")  # fmt: skip
    parser.add_argument("--out", help="output directory (default: RUN_DIR/fit or TABLE-fit); "
                                      "replaced whole, and only if empty or a previous fit's")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the fit summary as JSON")
    parser.add_argument("--predict", nargs="+", type=float, metavar="C",
                        help="compute budgets (FLOPs) to print the optimal allocation and loss at")  # fmt: skip
    parser.add_argument("--gpu-mem", help="advise the best configuration that fits this card, "
                                          "e.g. 12GB (needs --predict)")  # fmt: skip
    parser.add_argument("--n", choices=("trainable", "backbone", "total"),
                        help="N convention (default trainable: adapter / side-net parameters)")  # fmt: skip
    parser.add_argument("--loss", choices=("final_eval", "last_k_eval", "final_train"))
    parser.add_argument("--last-k", type=int, help="evals averaged by --loss last_k_eval")
    parser.add_argument("--methods", nargs="+", help="fit only these methods")
    parser.add_argument("--exclude", nargs="+", metavar="RUN_ID", help="leave these runs out")
    parser.add_argument("--bootstrap", type=int, metavar="R", help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, help="bootstrap seed")
    parser.add_argument("--grid", choices=("chinchilla", "small"),
                        help="approach-3 starts: Chinchilla's 4500 (default) or a 243-start grid")  # fmt: skip
    parser.add_argument("--task", nargs="+", metavar="NAME",
                        help="fit task laws (compute → task loss → accuracy) for these task "
                             "evaluations only (default: every one the runs logged)")  # fmt: skip
    parser.add_argument("--no-tasks", action="store_true",
                        help="fit no task laws, even when the runs logged task evaluations")  # fmt: skip
    parser.add_argument("--no-plots", action="store_true", help="write no figures")
    parser.add_argument("--no-cache", action="store_true", help="re-read every run directory")
    t = parser.add_argument_group("CSV/Parquet tables (column names)")
    t.add_argument("--params-col", help="parameters N")
    t.add_argument("--tokens-col", help="training tokens D")
    t.add_argument("--loss-col", help="final loss")
    t.add_argument("--flops-col", help="training FLOPs C (else C = k·N·D)")
    t.add_argument("--method-col", help="method (else one method, 'all')")
    t.add_argument("--budget-col", help="nominal isoFLOP budget (else budgets are FLOPs clusters)")
    t.add_argument("--run-id-col", help="run id (else row numbers)")
    t.add_argument("--k", type=float, help="FLOPs per parameter per token for a derived C or D")


SMALL_GRID = {"alpha": [0.25, 0.75, 1.5], "e": [-1.0, 0.0, 1.0], "a": [0.0, 10.0, 20.0]}


def _spec(args: argparse.Namespace, spec_path: str | None):
    from scaling.fit.spec import load_spec

    spec = load_spec(spec_path)
    if args.set:  # the spec file's values, then --set, then the dedicated flags below
        spec = spec.with_overrides(parse_overrides(args.set))
    over = {}
    for key in ("n", "loss", "last_k", "methods", "exclude", "k", "gpu_mem"):
        v = getattr(args, key, None)
        if v is not None:
            over[key] = v
    if args.predict:
        over["predict"] = [float(c) for c in args.predict]
    boot = {}
    if args.bootstrap is not None:
        boot["resamples"] = args.bootstrap
    if args.seed is not None:
        boot["seed"] = args.seed
    if boot:
        over["bootstrap"] = spec.bootstrap.replace(**boot)
    if getattr(args, "task", None) or getattr(args, "no_tasks", False):
        over["tasks"] = spec.tasks.replace(
            **({"names": list(args.task)} if args.task else {}),
            **({"enabled": False} if args.no_tasks else {}),
        )
    if args.grid == "small":
        over["approach3"] = spec.approach3.replace(**SMALL_GRID)
    elif args.grid == "chinchilla":
        over["approach3"] = spec.approach3.replace(
            **{k: getattr(type(spec.approach3)(), k) for k in SMALL_GRID}
        )
    return spec.replace(**over) if over else spec


def run(args: argparse.Namespace) -> None:
    from scaling.fit.inputs import TABLE_COLUMNS, load_inputs
    from scaling.fit.pipeline import fit
    from scaling.fit.report import check_out, clean_json, summary, write_outputs

    inputs = list(args.inputs)
    spec_path = args.spec
    if inputs and inputs[0].endswith(".toml"):
        if spec_path:
            raise ScalingError("two fit specs: a leading .toml input and --spec")
        spec_path = inputs.pop(0)
    spec = _spec(args, spec_path)
    if spec.gpu_mem and not spec.predict:
        raise ScalingError("--gpu-mem needs --predict C: the budget to advise for")
    paths = [Path(p) for p in inputs]
    columns = {role: getattr(args, f"{role}_col") for role in TABLE_COLUMNS}
    data = load_inputs(paths, spec, table_columns=columns, cache=not args.no_cache)
    out = Path(args.out) if args.out else data.default_out
    check_out(out)  # before the fit: a bad --out costs seconds, not a fit
    if spec.gpu_mem:
        from scaling.fit.advice import check_inputs

        check_inputs(data.table, spec)
    for w in data.warnings:
        print(f"warning: {w}", file=sys.stderr)
    report = fit(data.table, spec, data.cols, curves=data.curves, source=data.source,
                 inputs=[str(p) for p in paths], described=data.described,
                 progress=Progress(sys.stderr))  # fmt: skip
    written = write_outputs(report, out, plots=not args.no_plots)
    if args.json:
        print(json.dumps(clean_json(_json_summary(report, out)), indent=2))
        return
    print(summary(report))
    figures = sorted({p.stem for p in written if p.suffix in (".png", ".pdf")})
    print(f"\nwrote {out}/: fits.json, frontier.parquet/.csv, minima.parquet/.csv, summary.txt"
          + (f", figures ({', '.join(figures)}; PNG and PDF)" if figures else ""))  # fmt: skip


class Progress:
    """Where ``scaling fit`` is: on a terminal a tqdm bar over the stages (each method's approaches,
    its bootstrap, held-out check and joint laws, then the comparison) with the current stage and
    the elapsed time; otherwise (a log, a pipe) one line per stage with the time it started at."""

    def __init__(self, stream) -> None:
        import time

        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.bar = None

    def __call__(self, stage: str | None) -> None:
        import time

        if not self.tty:
            if stage is not None:
                print(f"fit [{time.perf_counter() - self.start:6.1f} s] {stage}", file=self.stream,
                      flush=True)  # fmt: skip
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(file=self.stream, desc="fit", leave=False,
                            bar_format="{desc} [{n} stages, {elapsed}]")  # fmt: skip
        if stage is None:
            self.bar.close()
            return
        self.bar.update(1)
        self.bar.set_description_str(f"fit: {stage}")  # redrawn now, whatever tqdm's rate limit


def _json_summary(report, out: Path) -> dict:
    data = report.to_json()
    for m in data["methods"].values():  # the envelope's points are in fits.json, not the summary
        if m.get("approach1"):
            m["approach1"].pop("points", None)
    if data.get("comparison"):
        data["comparison"].pop("grid", None)
    return data | {"out": str(out)}


COMMANDS = {"fit": (HELP, EXAMPLE, add_arguments, run)}
