"""``scaling launch | status | cancel``: thin handlers over :mod:`scaling.launch`.

    scaling launch runs/quickstart --executor slurm --partition gpu --gpus-per-node 1 --mem 32GB
    scaling launch runs/quickstart --time auto --throughput 2e14 --dry-run   # the sbatch script
    scaling status runs/quickstart [--json]
    scaling cancel runs/quickstart [--only RUN_ID ...]

``COMMANDS`` maps each name to (help, example, add_arguments, run) for ``scaling.cli``;
:func:`add_launch_options` and :func:`launch_from_args` serve ``scaling sweep --submit``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scaling.config import positive_int
from scaling.errors import ScalingError
from scaling.launch.control import cancel, wait
from scaling.launch.records import check_only
from scaling.launch.spec import EXECUTORS
from scaling.launch.status import collect, fmt_minutes, render
from scaling.launch.submit import Launched, launch


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """The submission options (defaults: the sweep spec's ``[launch]``, then LaunchSpec's)."""
    g = parser.add_argument_group("launch options (defaults: the sweep spec's [launch] table)")
    g.add_argument("--executor", choices=EXECUTORS,
                   help="default: slurm when a controller answers, else local")  # fmt: skip
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--account", help="SLURM account")
    g.add_argument("--qos", help="SLURM quality of service")
    g.add_argument("--constraint", help="SLURM node features, e.g. a100")
    g.add_argument("--gpus-per-node", type=positive_int, metavar="N")
    g.add_argument("--cpus-per-task", type=positive_int, metavar="N")
    g.add_argument("--mem", help="memory per node, e.g. 32GB (SLURM units: 1G = 1024M)")
    g.add_argument("--time", metavar="auto|HH:MM:SS",
                   help="time limit per job; auto: planned FLOPs / throughput × margin (default)")  # fmt: skip
    g.add_argument("--throughput", type=_positive_float, metavar="FLOP/s",
                   help="training FLOP/s of one job, for --time auto (default: measured on "
                        "finished runs of the sweep)")  # fmt: skip
    g.add_argument("--array-parallelism", type=positive_int, metavar="N",
                   help="SLURM: array tasks running at once; local: worker processes (default 1)")  # fmt: skip
    g.add_argument("--max-requeues", type=int, metavar="N",
                   help="time-outs after which a job stops requeuing itself (default 3)")  # fmt: skip
    g.add_argument("--slurm-extra", nargs="+", default=[], metavar="KEY=VALUE",
                   help="any other sbatch option, e.g. mail-type=END")  # fmt: skip
    g.add_argument("--allow-cpu", action="store_true", default=None,
                   help="submit a sweep planned for a GPU to jobs that ask for no GPU")  # fmt: skip
    g.add_argument("--force", action="store_true",
                   help="also re-run finished runs (their outputs move to runs/<id>/archive/)")  # fmt: skip
    g.add_argument("--wait", action="store_true", help="block until the submitted runs end")


def _only(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--only", nargs="+", metavar="RUN_ID", help=f"{what} only these runs")


def _extra(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScalingError(f"--slurm-extra: expected KEY=VALUE, got {item!r}")
        out[key.strip().removeprefix("--")] = value
    return out


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("executor", "partition", "account", "qos", "constraint", "gpus_per_node",
            "cpus_per_task", "mem", "time", "throughput", "array_parallelism", "max_requeues",
            "allow_cpu")  # fmt: skip
    out = {k: getattr(args, k, None) for k in keys}
    if args.max_requeues is not None and args.max_requeues < 0:
        raise ScalingError("--max-requeues must be ≥ 0")
    out["slurm_extra"] = _extra(args.slurm_extra)
    return out


def launch_from_args(run_dir: str, args: argparse.Namespace) -> str:
    """Launch with the options of :func:`add_launch_options`; return the text to print."""
    dry_run = getattr(args, "dry_run", False)
    out = launch(run_dir, options_from_args(args), only=getattr(args, "only", None),
                        force=args.force, dry_run=dry_run)  # fmt: skip
    if getattr(args, "json", False):
        return json.dumps(out.__dict__, indent=2, default=str)
    text = render_launch(out)
    if out.run_ids and not dry_run and (args.wait or out.executor == "debug"):
        print(text + "\n", flush=True)  # what was submitted, before the wait
        return render(wait(run_dir, out.run_ids, progress=args.wait))
    return text


def render_launch(out: Launched) -> str:
    skipped = ", ".join(f"{n} {s}" for s, n in sorted(out.skipped.items()))
    if not out.run_ids:
        hint = " (--force re-runs finished runs)" if any(
            s in out.skipped for s in ("success", "diverged")
        ) else ""  # fmt: skip
        return f"nothing to launch in {out.run_dir}: {skipped or 'no runs'}{hint}"
    limit = fmt_minutes(out.time_limit_min)
    lines = [f"warning: {w}" for w in out.warnings]
    several = out.executor == "slurm" and len(out.arrays) > 1
    if out.dry_run:
        arrays = f" in {len(out.arrays)} arrays" if several else ""
        lines += [f"dry run: would submit {len(out.run_ids)} run(s) to {out.executor}{arrays}", ""]
        width = max(map(len, out.run_ids))
        for k, a in enumerate(out.arrays):
            if several:
                lines.append(f"array {k + 1}: {len(a['run_ids'])} run(s), time limit "
                             f"{fmt_minutes(a['time_limit_min'])}")  # fmt: skip
            for rid in a["run_ids"]:
                est = out.estimates_s.get(rid)
                lines.append(
                    f"  {rid:<{width}}  {'' if est is None else f'est. {est / 60:.1f} min'}"
                )
        for k, a in enumerate(out.arrays):
            if a.get("script"):
                which = f" (array {k + 1})" if several else ""
                lines += ["", f"sbatch script{which}:", a["script"].rstrip()]
    else:
        jobs = out.job_ids if out.executor != "local" else []
        where = f" as {_describe_jobs(jobs)}" if jobs else ""
        lines.append(f"submitted {len(out.run_ids)} run(s) to {out.executor}{where} in "
                     f"{out.wall_s:.2f} s (submission {out.submission})")  # fmt: skip
    if several:
        limits = ", ".join(fmt_minutes(a["time_limit_min"]) for a in out.arrays)
        lines.append(
            f"time limits {limits} by array, each its runs' longest need ({out.time_source})"
        )
    elif out.executor == "slurm":
        lines.append(f"time limit {limit} per job ({out.time_source})")
    if skipped:
        lines.append(f"skipped: {skipped}")
    if not out.dry_run:
        lines.append(f"records: runs/<id>/launch.json, launch/{out.submission}/ in {out.run_dir}")
        lines.append(f"progress: scaling status {out.run_dir}")
    return "\n".join(lines)


def _describe_jobs(ids: list[str]) -> str:
    if len(ids) > 1 and all("_" in j for j in ids):
        arrays = list(dict.fromkeys(j.split("_")[0] for j in ids))
        if len(arrays) > 1:
            return f"arrays {', '.join(arrays)}"
        return f"array {arrays[0]} (tasks {ids[0]} … {ids[-1]})"
    return "job " + ", ".join(ids) if len(ids) <= 3 else f"jobs {ids[0]} … {ids[-1]}"


# --------------------------------------------------------------------------------------------------
# Commands


def add_launch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (from `scaling sweep`)")
    add_launch_options(parser)
    _only(parser, "launch")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would be submitted (and the sbatch script); submit nothing")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_launch(args: argparse.Namespace) -> None:
    print(launch_from_args(args.run_dir, args))


def add_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR")
    _only(parser, "show")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_status(args: argparse.Namespace) -> None:
    check_only(Path(args.run_dir), args.only)
    s = collect(args.run_dir, args.only)
    print(json.dumps(s.to_dict(), indent=2) if args.json else render(s))


def add_cancel(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR")
    _only(parser, "cancel")


def run_cancel(args: argparse.Namespace) -> None:
    done = cancel(args.run_dir, args.only)
    if not done:
        print(f"nothing to cancel in {args.run_dir}: no queued or running jobs")
        return
    print(f"cancelled {len(done)} run(s): {', '.join(done)}")


COMMANDS = {
    "launch": (
        "submit a sweep's runs (SLURM arrays grouped by time need, or local workers): only those not finished, queued or running",
        "scaling launch runs/quickstart --executor slurm --partition gpu --mem 32GB --time auto",
        add_launch,
        run_launch,
    ),
    "status": (
        "where every run of a sweep stands: state, progress, last loss; compute done / planned",
        "scaling status runs/quickstart",
        add_status,
        run_status,
    ),
    "cancel": (
        "cancel the queued and running jobs of a sweep (the next launch resubmits them)",
        "scaling cancel runs/quickstart --only lora-r8-1e11-s0-1a2b3c4d",
        add_cancel,
        run_cancel,
    ),
}
