"""``scaling train | backbone | demo``: thin handlers over :mod:`scaling.train`.

    scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d    # what every job runs; resumable
    scaling backbone tiny --out runs/backbones                       # the quickstart's tiny backbones
    scaling demo --steps 3                                           # a short tour of the methods

``COMMANDS`` maps each name to (help, example, add_arguments, run) for ``scaling.cli``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from scaling.errors import ScalingError


def run_train(args: argparse.Namespace) -> int:
    from scaling.train import train
    from scaling.train.records import failure_reason

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
    "backbone": (
        "build the tiny pre-trained backbone family (offline; for the quickstart)",
        "scaling backbone tiny --out runs/backbones",
        add_backbone,
        run_backbone,
    ),
}
