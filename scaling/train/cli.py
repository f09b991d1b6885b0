"""``scaling train | eval | backbone | demo``: thin handlers over :mod:`scaling.train`.

    scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d    # what every job runs; resumable
    scaling eval RUN_DIR --tasks arc_easy --limit 100                # lm-eval tasks on a trained run
    scaling backbone tiny --out runs/backbones                       # the quickstart's tiny backbones
    scaling demo --steps 3                                           # a short tour of the methods

``COMMANDS`` maps each name to (help, example, add_arguments, run) for ``scaling.cli``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from scaling.config import merge_tables, parse_overrides, positive_int
from scaling.errors import ScalingError


def run_train(args: argparse.Namespace) -> int:
    from scaling.train import train
    from scaling.train.records import failure_reason, set_train_options

    overrides = parse_overrides(args.set)
    if args.report_to is not None:
        chosen = [t.strip() for t in args.report_to.split(",") if t.strip()]
        overrides = merge_tables(
            overrides, {"train": {"report_to": [] if chosen == ["none"] else chosen}}
        )
    if overrides:
        set_train_options(args.run_dir, overrides)
    try:
        result = train(args.run_dir, force=args.force)
    except OSError as e:  # not even result.json could be written: one line, no traceback
        print(f"scaling train: {args.run_dir}: nothing recorded: {failure_reason(e)}",
              file=sys.stderr)  # fmt: skip
        return 1
    status, run = result["status"], result["run_id"]
    if status == "success":
        print(f"{run}: success, eval loss {_loss(result.get('final_eval_loss'))} after "
              f"{result['steps']} steps ({result['tokens']:,} tokens, {result['flops']:.3g} FLOPs)")  # fmt: skip
        return 0
    print(f"scaling train: {run} {status}: {result['error']}", file=sys.stderr)
    if status == "cancelled" and result.get("signal"):
        return 128 + signal.Signals[result["signal"]].value  # the shell's code for that signal
    return 0 if status == "diverged" else 1  # diverging is a result; failing is not


def _loss(value: float | None) -> str:
    """A loss from result.json, where a non-finite one is null."""
    return "n/a (not finite)" if value is None else f"{value:.4f}"


def run_backbone(args: argparse.Namespace) -> None:
    from scaling.train.backbones import build_family

    if args.steps < 1:
        raise ScalingError(f"--steps must be ≥ 1; got {args.steps}")
    print(f"tiny backbones in {args.out} ({args.steps} pre-training steps each; cached)")
    for name, r in build_family(args.out, steps=args.steps, force=args.force).items():
        print(f"  {name}: {r['params']:,} parameters, eval loss {r['eval_loss']:.3f} "
              f"(pre-trained in {r['seconds']:.0f} s)")  # fmt: skip


def run_demo(args: argparse.Namespace) -> None:
    from scaling.train.demo import run_demo as tour

    tour(steps=args.steps, out=args.out)


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory: RUN_DIR/runs/<run_id> (holds spec.json)")
    p.add_argument("--force", action="store_true", help="retrain a finished run from scratch")
    p.add_argument("--set", action="append", metavar="train.KEY=VALUE",
                   help="change how the job runs ([train]: log_every, eval_every, report_to, ...), "
                        "TOML-typed; recorded in the run's spec.json (repeatable)")  # fmt: skip
    p.add_argument("--report-to", metavar="TRACKERS",
                   help="experiment trackers, comma-separated: tensorboard, wandb, trackio, or "
                        "none (same as --set train.report_to=[...])")  # fmt: skip


def add_backbone(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "family", choices=["tiny"], help="which family (tiny: 4-layer Llamas, widths 32-192)"
    )
    p.add_argument(
        "--out", default="runs/backbones", help="where to save them (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=150, help="pre-training steps per backbone")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")


def add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per method")
    p.add_argument("--out", default=None, help="where to keep the tiny model (default: a temp dir)")


def run_eval(args: argparse.Namespace) -> None:
    from scaling.train.harness import evaluate_run

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    out = evaluate_run(args.run_dir, tasks, include_path=args.include_path, limit=args.limit,
                       num_fewshot=args.num_fewshot, batch_size=args.batch_size, out=args.out)  # fmt: skip
    for task, metrics in out["results"].items():
        shown = ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and "stderr" not in k)  # fmt: skip
        print(f"{task}: {shown}")


def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a trained run directory: RUN_DIR/runs/<run_id>")
    p.add_argument("--tasks", required=True, help="lm-eval task names, comma-separated")
    p.add_argument("--include-path", help="a folder of task YAMLs (local tasks over local files)")
    p.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward pass")
    p.add_argument("--out", help="results JSON (default: RUN_DIR/lm_eval/<tasks>.json)")


COMMANDS = {
    "demo": (
        "train every method a few steps on a tiny model and check the FLOP count",
        "scaling demo --steps 3",
        add_demo,
        run_demo,
    ),
    "train": (
        "train one planned run (resumes from its checkpoint; what jobs call)",
        "scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d",
        add_train,
        run_train,
    ),
    "eval": (
        "run lm-evaluation-harness tasks on a trained run (needs the eval extra)",
        "scaling eval runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d --tasks arc_easy --limit 100",
        add_eval,
        run_eval,
    ),
    "backbone": (
        "build the tiny pre-trained backbone family (offline; for the quickstart)",
        "scaling backbone tiny --out runs/backbones",
        add_backbone,
        run_backbone,
    ),
}
