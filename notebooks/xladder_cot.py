"""Export the xLadder chain-of-thought study's task evaluations into the table its notebook reads.

    scaling sweep sweeps/xladder-cot.toml && scaling launch runs/xladder-cot --executor local --wait
    python notebooks/xladder_cot.py runs/xladder-cot      # → notebooks/data/xladder-cot.parquet

One row per task evaluation of every successful run (``task/<name>`` rows of its metrics.parquet):
the run's method, budget and trainable parameters, the step, training tokens and FLOPs so far, the
task loss, accuracy, generated chain-of-thought tokens and the evaluation's own FLOPs, and whether it
is the run's last evaluation. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from scaling import io
from scaling.train.records import TASK_KIND

OUT = Path(__file__).resolve().parent / "data" / "xladder-cot.parquet"


def export(run_dir: Path) -> pl.DataFrame:
    frames = []
    for result_path in sorted(run_dir.glob("runs/*/result.json")):
        result = json.loads(result_path.read_text())
        if result.get("status") != "success":
            continue
        m = pl.read_parquet(result_path.parent / "metrics.parquet")
        rows = m.filter(pl.col("kind").str.starts_with(TASK_KIND)).sort("step")
        frames.append(rows.select(
            pl.lit(result["run_id"]).alias("run_id"), pl.lit(result["method"]).alias("method"),
            pl.lit(result["budget"]).alias("budget"),
            pl.lit(result["trainable_params"]).alias("trainable_params"),
            pl.col("kind").str.strip_prefix(TASK_KIND).alias("evaluation"),
            "step", "tokens", "flops", pl.col("loss").alias("task_loss"), "accuracy",
            "gen_tokens", "examples", "eval_flops",
            (pl.col("step") == result["steps"]).alias("final"),
        ))  # fmt: skip
    if not frames:
        raise SystemExit(f"{run_dir}: no successful run with task evaluations")
    return pl.concat(frames).sort("method", "budget", "step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    table = export(args.run_dir)
    io.write_parquet(table, args.out)
    print(table)


if __name__ == "__main__":
    main()
