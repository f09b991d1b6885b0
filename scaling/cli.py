"""The ``scaling`` command line: thin argparse handlers over the library.

scaling flops  --model qwen2.5-7b --method ladder --reduction 8 --seq-len 2048
scaling memory --model qwen2.5-7b --method qlora --seq-len 2048 --batch-size 1 --gpu-mem 12GB
scaling demo
scaling sweep sweeps/qwen2.5-ladder-vs-qlora.toml --flops 1e17:1e19:5 --dry-run
scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d
scaling launch runs/quickstart --executor slurm --partition gpu --gpus-per-node 1
scaling status runs/quickstart
scaling fit runs/quickstart --predict 1e13
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing

from scaling import fit_cli, flops, launch_cli, methods
from scaling.arch import PRESETS, resolve_arch
from scaling.errors import ScalingError

EXAMPLES = {
    "flops": "scaling flops --model qwen2.5-7b --method ladder --reduction 8 --seq-len 2048",
    "memory": "scaling memory --model qwen2.5-7b --method qlora --seq-len 2048 --batch-size 1 --gpu-mem 12GB",
    "demo": "scaling demo --steps 3",
    "sweep": "scaling sweep sweeps/qwen2.5-ladder-vs-qlora.toml --flops 1e17:1e19:5 --dry-run",
    "train": "scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d",
    "backbone": "scaling backbone tiny --out runs/backbones",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_dial_options(parser: argparse.ArgumentParser) -> None:
    """One ``--dial`` option per field of any method config; the chosen method rejects foreign ones."""
    group = parser.add_argument_group(
        "method dials (each method accepts its own; see scaling.methods)"
    )
    seen: set[str] = set()
    for cls in methods.REGISTRY.values():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name in seen:
                continue
            seen.add(field.name)
            hint = hints[field.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if isinstance(hint, types.UnionType) and args else hint
            kind = {int: int, float: float, bool: _parse_bool}.get(base, str)
            group.add_argument(
                f"--{field.name.replace('_', '-')}",
                dest=f"dial_{field.name}",
                type=kind,
                default=argparse.SUPPRESS,
                metavar=base.__name__.upper() if base is not bool else "BOOL",
                **({"nargs": "?", "const": True} if base is bool else {}),
            )


def _dials(args: argparse.Namespace) -> dict:
    return {k[len("dial_") :]: v for k, v in vars(args).items() if k.startswith("dial_")}


def _method_config(args: argparse.Namespace):
    cls = methods.config_class(args.method)
    return cls.from_dict(_dials(args), where=f"method {args.method}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ScalingError(f"{name} must be positive; got {value}")


def cmd_flops(args: argparse.Namespace) -> None:
    _positive("--seq-len", args.seq_len)
    cfg = _method_config(args)
    arch = resolve_arch(args.model)
    c = flops.cost(arch, cfg, args.seq_len)
    if args.json:
        print(json.dumps({"model": args.model, "config": cfg.to_dict(), **c.to_dict()}, indent=2))
        return
    rows = [
        ("backbone params", f"{c.backbone.total:,}"),
        ("  blocks / embeddings / head", f"{c.backbone.blocks:,} / {c.backbone.embeddings:,} / {c.backbone.head:,}"),
        ("trainable params", f"{c.trainable_params:,}"),
        ("forward FLOPs/token", f"{c.forward_flops_per_token:.4g}  (causal-halved attention: {c.forward_flops_per_token_causal:.4g})"),
        ("train FLOPs/token", f"{c.train_flops_per_token:.4g}  (causal-halved attention: {c.train_flops_per_token_causal:.4g})"),
        ("k = train FLOPs/token / trainable", f"{c.k:.4g}"),
    ]  # fmt: skip
    print(f"{args.method} on {args.model} at seq_len {args.seq_len} ({_describe(cfg)})")
    _table(rows)
    print("terms (train FLOPs/token):")
    _table([(f"  {t.name}", f"{t.train:.4g}") for t in c.terms])


def cmd_memory(args: argparse.Namespace) -> None:
    _positive("--seq-len", args.seq_len)
    _positive("--batch-size", args.batch_size)
    cfg = _method_config(args)
    arch = resolve_arch(args.model)
    try:
        capacity = flops.parse_bytes(args.gpu_mem) if args.gpu_mem else None
    except ValueError as e:
        raise ScalingError(f"--gpu-mem: {e}") from None
    m = flops.memory(arch, cfg, args.seq_len, args.batch_size)
    fits = None if capacity is None else m.fits(capacity)
    if args.json:
        out = {"model": args.model, "config": cfg.to_dict(), "seq_len": args.seq_len}
        print(
            json.dumps(
                out | {"batch_size": args.batch_size, "bytes": m.to_dict(), "fits": fits}, indent=2
            )
        )
        return
    print(
        f"{args.method} on {args.model}, batch {args.batch_size} × {args.seq_len} tokens ({_describe(cfg)})"
    )
    _table([(name, f"{value / flops.GiB:8.2f} GiB") for name, value in m.to_dict().items()])
    if capacity is not None:
        verdict = "fits" if fits else "does NOT fit"
        print(f"{verdict} in {args.gpu_mem} ({capacity / flops.GiB:.2f} GiB)")


def cmd_demo(args: argparse.Namespace) -> None:
    from scaling.demo import run_demo

    run_demo(steps=args.steps, out=args.out)


def cmd_sweep(args: argparse.Namespace) -> None:
    from scaling.sweep import load_spec
    from scaling.sweep_cli import output_dir, run_sweep

    print(
        run_sweep(args.spec, flops_args=args.flops, out=args.out, dry_run=args.dry_run,
                  from_fit=args.from_fit, gpu_mem=args.gpu_mem, as_json=args.json)
    )  # fmt: skip
    if args.submit and not args.dry_run:
        print(launch_cli.launch_from_args(str(output_dir(load_spec(args.spec), args.out)), args))


def _describe(cfg) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None)


def _table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def cmd_train(args: argparse.Namespace) -> int:
    import signal

    from scaling.train import train

    result = train(args.run_dir, force=args.force)
    status, run = result["status"], result["run_id"]
    if status == "success":
        print(f"{run}: success, eval loss {result['final_eval_loss']:.4f} after "
              f"{result['steps']} steps ({result['tokens']:,} tokens, {result['flops']:.3g} FLOPs)")  # fmt: skip
        return 0
    print(f"scaling train: {run} {status}: {result['error']}", file=sys.stderr)
    if status == "cancelled" and result.get("signal"):
        return 128 + signal.Signals[result["signal"]].value  # the shell's code for that signal
    return 0 if status == "diverged" else 1  # diverging is a result; failing is not


def cmd_backbone(args: argparse.Namespace) -> None:
    from scaling.backbones import build_family

    if args.steps < 1:
        raise ScalingError(f"--steps must be ≥ 1; got {args.steps}")
    print(f"tiny backbones in {args.out} ({args.steps} pre-training steps each; cached)")
    for name, r in build_family(args.out, steps=args.steps, force=args.force).items():
        print(f"  {name}: {r['params']:,} parameters, eval loss {r['eval_loss']:.3f} "
              f"(pre-trained in {r['seconds']:.0f} s)")  # fmt: skip


def build_parser() -> Parser:
    parser = Parser(
        prog="scaling",
        description="Plan, run and fit isoFLOP scaling sweeps of Ladder, xLadder and QLoRA fine-tuning.",
        epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    model_help = f"model directory, config.json, or preset ({', '.join(PRESETS)})"

    def add(name: str, help_: str, handler) -> Parser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.set_defaults(handler=handler)
        return p

    for name, help_, handler in (
        ("flops", "parameters and FLOPs per token of a method", cmd_flops),
        ("memory", "analytic peak training memory of a method", cmd_memory),
    ):
        p = add(name, help_, handler)
        p.add_argument("--model", required=True, help=model_help)
        p.add_argument("--method", required=True, choices=list(methods.REGISTRY))
        p.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
        if name == "memory":
            p.add_argument(
                "--batch-size", type=int, required=True, help="sequences per micro-batch"
            )
            p.add_argument("--gpu-mem", help="card capacity to check against, e.g. 12GB or 80GiB")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        _add_dial_options(p)

    p = add(
        "demo", "train every method a few steps on a tiny model and check the FLOP count", cmd_demo
    )
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per method")
    p.add_argument("--out", default=None, help="where to keep the tiny model (default: a temp dir)")

    p = add("sweep", "plan an isoFLOP sweep: one run per budget, backbone, method, dial and seed",
            cmd_sweep)  # fmt: skip
    p.add_argument("spec", nargs="?", help="sweep spec TOML (default: the built-in default spec)")
    p.add_argument("--flops", nargs="+", metavar="C",
                   help="budgets in FLOPs: values and/or geometric ranges START:STOP:N "
                        "(default: the spec's budgets)")  # fmt: skip
    p.add_argument("--out", help="run directory (default: runs/<spec name>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--from-fit", metavar="FITS.json", help="centre each budget's grid on a fit")
    p.add_argument("--gpu-mem", help="drop points whose peak memory exceeds this, e.g. 24GB")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--submit", action="store_true",
                   help="then launch the new runs (as `scaling launch OUT`, with the options below)")  # fmt: skip
    launch_cli.add_launch_options(p)

    p = add(
        "train", "train one planned run (resumes from its checkpoint; what jobs call)", cmd_train
    )
    p.add_argument("run_dir", help="a run directory: RUN_DIR/runs/<run_id> (holds spec.json)")
    p.add_argument("--force", action="store_true", help="retrain a finished run from scratch")

    p = add("backbone", "build the tiny pre-trained backbone family (offline; for the quickstart)",
            cmd_backbone)  # fmt: skip
    p.add_argument(
        "family", choices=["tiny"], help="which family (tiny: 4-layer Llamas, widths 32-128)"
    )
    p.add_argument(
        "--out", default="runs/backbones", help="where to save them (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=150, help="pre-training steps per backbone")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")

    commands = {**launch_cli.COMMANDS,
                "fit": (fit_cli.HELP, fit_cli.EXAMPLE, fit_cli.add_arguments, fit_cli.run)}  # fmt: skip
    for name, (help_, example, add_arguments, run) in commands.items():
        EXAMPLES[name] = example
        add_arguments(add(name, help_, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.handler(args)
    except ScalingError as e:
        print(f"scaling {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
