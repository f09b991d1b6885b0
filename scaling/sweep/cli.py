"""``scaling sweep``: plan an isoFLOP sweep, show it, and write its run directory.

    scaling sweep --flops 1e18                                   # built-in default spec, offline
    scaling sweep sweeps/quickstart.toml --dry-run               # the spec's own budgets
    scaling sweep sweeps/qwen2.5-ladder-vs-qlora.toml --flops 1e17:1e19:5 --gpu-mem 80GB --json
    scaling sweep SPEC.toml --flops 1e19 --from-fit fits.json    # re-centre the grid on a fit
    scaling sweep SPEC.toml --submit --executor slurm ...        # then `scaling launch` the new runs

Everything is checked (spec, budgets, fit, output directory) before anything is written; see
:mod:`scaling.sweep.planner` for the planning rules.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scaling import flops
from scaling.config import check_override_keys, parse_overrides
from scaling.launch.cli import add_launch_options, launch_from_args
from scaling.runspec import RunSpec, budget_label
from scaling.sweep import dataprep
from scaling.sweep.inputs import parse_budgets
from scaling.sweep.planner import Plan, build_plan
from scaling.sweep.rundir import write
from scaling.sweep.spec import SweepSpec, load_spec

HELP = "plan an isoFLOP sweep: one run per budget, backbone, method, dial and seed"
EXAMPLE = "scaling sweep sweeps/qwen2.5-ladder-vs-qlora.toml --flops 1e17:1e19:5 --dry-run"


def run_sweep(
    spec_path: str | None = None,
    *,
    flops_args: list[str] | None = None,
    out: str | None = None,
    dry_run: bool = False,
    from_fit: str | None = None,
    gpu_mem: str | None = None,
    as_json: bool = False,
    overrides: list[str] | None = None,
) -> str:
    """Plan, write unless ``dry_run``, and return the text to print (a table, or JSON).
    ``overrides``: ``KEY=VALUE`` items (``--set``) over the spec file (:func:`resolved_spec`)."""
    spec = resolved_spec(spec_path, overrides)
    budgets = parse_budgets(flops_args) if flops_args else None
    dataprep.check(spec)  # a missing path, no documents, no such field: before planning
    p = build_plan(spec, budgets, from_fit=from_fit, gpu_mem=gpu_mem)
    target = output_dir(spec, out)
    # Tokenised once for the whole sweep, and every run's size checked, before anything is written.
    prepared = [] if dry_run or not p.runs else dataprep.prepare(p)
    new = None if dry_run else write(p, target)
    if as_json:
        extra = {
            "out": None if dry_run else str(target),
            "dry_run": dry_run,
            "new_runs": None if new is None else [r.run_id for r in new],
            "data": [d.to_dict() for d in prepared],
        }
        return json.dumps(p.to_dict() | extra, indent=2, default=str)
    where = "" if out or dry_run else f"no --out: writing to {target}/ (runs/<spec name>)\n"
    data_lines = "".join(d.line() + "\n" for d in prepared)
    return where + render(p) + "\n" + data_lines + _footer(p, target, new)


def resolved_spec(spec_path: str | None, overrides: list[str] | None = None) -> SweepSpec:
    """The spec file (or the defaults) with ``--set KEY=VALUE`` overrides applied: typed as TOML,
    checked by the spec's own classes, recorded in ``sweep.json`` as part of the spec."""
    over = parse_overrides(overrides)
    check_override_keys(SweepSpec, over)
    return load_spec(spec_path, **over)


def output_dir(spec: SweepSpec, out: str | None) -> Path:
    """Where a sweep is written: ``--out``, else ``runs/<spec name>``."""
    return Path(out) if out else Path("runs") / spec.name


def _footer(p: Plan, target: Path, new: list[RunSpec] | None) -> str:
    if new is None:
        return "dry run: nothing written"
    if not new:
        return f"{target} already holds all {len(p.runs)} runs of this sweep: 0 new runs, nothing written"
    return (
        f"wrote {len(new)} new run(s) to {target}/ "
        f"(manifest.parquet, sweep.json, runs/<run_id>/spec.json)"
    )


def _sci(x: float) -> str:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _pct(x: float) -> str:
    return f"{x if abs(x) >= 5e-5 else 0.0:+.2%}"  # no "-0.00%"


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"  # 299K, 1.2M, 35.2M
    return str(int(n))


def render(p: Plan) -> str:
    """The plan as a table, then dropped points with reasons, then grid warnings."""
    s = p.spec
    capped = s.constraints.gpu_mem is not None
    accum = s.batch_tokens // (s.seq_len * s.micro_batch_size)
    lines = [
        f"sweep {s.name}: {len(p.runs)} runs at {len(p.budgets)} budget(s) "
        f"({', '.join(map(budget_label, p.budgets))} FLOPs), {len(p.dropped)} point(s) dropped",
        f"seq_len {s.seq_len}, batch {s.batch_tokens} tokens ({s.batch_tokens // s.seq_len} seqs = "
        f"micro-batch {s.micro_batch_size} × {accum} accumulation), dataset {dataprep.describe(s)}, "
        f"min_steps {s.constraints.min_steps}"
        + (f", gpu_mem {s.constraints.gpu_mem}" if capped else ""),
        "",
    ]
    header = ("run id", "backbone", "method", "dial", "N train", "FLOPs/tok", "tokens D", "steps",
              "epochs", "peak GiB", "realised C", "levers")  # fmt: skip
    rows = [
        (
            r.run_id, r.backbone, r.method, r.dial, _count(r.trainable_params),
            _sci(r.flops_per_token), _sci(r.tokens), str(r.steps),
            "-" if r.epochs is None else f"{r.epochs:.3g}",
            f"{r.peak_memory_bytes / flops.GiB:.2f}" + (" fits" if capped else ""),
            f"{_sci(r.realised_flops)} ({_pct(r.budget_error)})",
            ", ".join(r.levers) or "-",
        )
        for r in p.runs
    ]  # fmt: skip
    numeric = {4, 5, 6, 7, 8, 9}
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def fmt(row):
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines += [fmt(header), *map(fmt, rows)]
    if p.dropped:
        lines += ["", f"dropped ({len(p.dropped)}):"]
        lines += [
            f"  {budget_label(d.budget)} {d.backbone} {d.method} {d.dial}: {d.reason}"
            for d in p.dropped
        ]
    if p.warnings:
        lines += ["", f"warnings ({len(p.warnings)}):", *(f"  {w}" for w in p.warnings)]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="sweep spec TOML (default: the built-in default spec)")
    p.add_argument("--flops", nargs="+", metavar="C",
                   help="budgets in FLOPs: values and/or geometric ranges START:STOP:N "
                        "(default: the spec's budgets)")  # fmt: skip
    p.add_argument("--out", help="run directory (default: runs/<spec name>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--from-fit", metavar="FITS.json", help="centre each budget's grid on a fit")
    p.add_argument("--gpu-mem", help="drop points whose peak memory exceeds this, e.g. 24GB")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec value, TOML-typed, e.g. --set optimizer.lr=1e-4 --set "
                        "seeds=[0,1] (repeatable; recorded in sweep.json)")  # fmt: skip
    p.add_argument("--submit", action="store_true",
                   help="then launch the new runs (as `scaling launch OUT`, with the options below)")  # fmt: skip
    add_launch_options(p)


def run(args: argparse.Namespace) -> None:
    print(
        run_sweep(args.spec, flops_args=args.flops, out=args.out, dry_run=args.dry_run,
                  from_fit=args.from_fit, gpu_mem=args.gpu_mem, as_json=args.json,
                  overrides=args.set)
    )  # fmt: skip
    if args.submit and not args.dry_run:
        print(launch_from_args(str(output_dir(resolved_spec(args.spec, args.set), args.out)), args))


COMMANDS = {"sweep": (HELP, EXAMPLE, add_arguments, run)}
