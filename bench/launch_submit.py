"""Wall time of submitting a sweep of 100 tiny runs as one SLURM job array (submission only).

    eval "$(ci/slurm/up.sh)"            # or any reachable SLURM cluster
    python bench/launch_submit.py [--runs 100] [--repeats 3] [--partition P]

Plans a sweep of ``--runs`` tiny LoRA runs (5 ranks × seeds, the quickstart's tiny Llama as an inline
config: nothing trains), then times, per repeat in a fresh run directory:

- ``launch_s``: :func:`scaling.launch.launch` end to end (probe of the controller, run states, the
  submitit pickles, one ``sbatch --array``, the per-run records);
- ``submit_s``: the part after the run states are known (what ``Launched.wall_s`` reports);
- ``cli_s``: ``scaling launch`` as a fresh process (imports included) on another fresh directory;
- ``status_s`` and ``cancel_s``: ``scaling status`` / ``scaling cancel`` of the 100 queued runs.

The array is submitted with ``--begin=now+1hour`` so nothing runs; it is cancelled right after.
Writes ``bench/results/launch_submit.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scaling import io, launch, sweep
from scaling.launch import scheduler, status


def plan(root: Path, runs: int) -> Path:
    ranks = [2, 4, 8, 16, 32]
    spec = sweep.load_spec(
        Path(__file__).parents[1] / "sweeps" / "quickstart.toml", name="bench-submit",
        methods=["lora"], method={"lora": {"rank": ranks}},
        seeds=list(range(-(-runs // len(ranks)))), budgets=[1e11],
    )  # fmt: skip
    p = sweep.build_plan(spec)
    p = sweep.Plan(p.spec, p.budgets, p.runs[:runs], p.dropped, p.warnings, p.fit)
    sweep.write(p, root)
    assert len(p.runs) == runs
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--partition", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "launch_submit.json"))
    args = ap.parse_args()
    if (problem := scheduler.slurm_problem()) is not None:
        sys.exit(f'no SLURM cluster: {problem} (start one: eval "$(ci/slurm/up.sh)")')
    opts = {"executor": "slurm", "time": "00:10:00", "partition": args.partition,
            "slurm_extra": {"begin": "now+1hour"}}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            rd = plan(Path(tmp) / f"api-{i}", args.runs)
            start = time.perf_counter()
            out = launch.launch(rd, opts)
            launch_s = time.perf_counter() - start
            tasks = subprocess.run(["squeue", "-h", "-r", "-j", out.job_ids[0].split("_")[0]],
                                   capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
            assert len(tasks) == args.runs, f"{len(tasks)} array tasks queued, want {args.runs}"
            start = time.perf_counter()
            s = status.collect(rd)
            status_s = time.perf_counter() - start
            assert s.counts == {"queued": args.runs}, s.counts
            start = time.perf_counter()
            cancelled = launch.cancel(rd)
            cancel_s = time.perf_counter() - start
            assert len(cancelled) == args.runs

            rd = plan(Path(tmp) / f"cli-{i}", args.runs)
            cmd = [sys.executable, "-m", "scaling.cli", "launch", str(rd), "--executor",
                   "slurm", "--time", "00:10:00", "--slurm-extra", "begin=now+1hour"]  # fmt: skip
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            cli_s = time.perf_counter() - start
            launch.cancel(rd)
            rows.append({"launch_s": launch_s, "submit_s": out.wall_s, "cli_s": cli_s,
                         "status_s": status_s, "cancel_s": cancel_s, "array": out.job_ids[0].split("_")[0]})  # fmt: skip
            print(f"repeat {i}: launch {launch_s:.3f} s (submission {out.wall_s:.3f} s), "
                  f"CLI {cli_s:.2f} s, status {status_s:.3f} s, cancel {cancel_s:.3f} s")  # fmt: skip
    version = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "array"}
    result = {"runs": args.runs, "repeats": rows, "median": med, "slurm": version,
              "machine": platform.node(), "python": platform.python_version(),
              "note": "one sbatch --array per launch; held with --begin=now+1hour, then cancelled"}  # fmt: skip
    io.write_json(args.out, result)
    print(f"median over {args.repeats}: launch {med['launch_s']:.3f} s (submission "
          f"{med['submit_s']:.3f} s), CLI {med['cli_s']:.2f} s for {args.runs} runs → {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
