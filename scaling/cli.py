"""The ``scaling`` command line: one parser over the commands each stage's CLI module defines.

scaling flops  --model qwen2.5-7b --method ladder --reduction 8 --seq-len 2048
scaling memory --model qwen2.5-7b --method qlora --seq-len 2048 --batch-size 1 --gpu-mem 12GB
scaling demo
scaling sweep sweeps/qwen2.5-ladder-vs-qlora.toml --flops 1e17:1e19:5 --dry-run
scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d
scaling launch runs/quickstart --executor slurm --partition gpu --gpus-per-node 1
scaling status runs/quickstart
scaling fit runs/quickstart --predict 1e13

Each stage's ``cli`` module (:mod:`scaling.methods.cli`, :mod:`scaling.sweep.cli`,
:mod:`scaling.train.cli`, :mod:`scaling.launch.cli`, :mod:`scaling.fit.cli`) exports ``COMMANDS``:
name → (help, example, add_arguments, run). This module imports them and is imported by none: it owns
the one mapping of errors to exit codes (a :class:`~scaling.errors.ScalingError` is one line on stderr
and exit 2, never a traceback; a usage error is one line and exit 2; an :class:`OSError` that escapes a
command — a full disk, a permission refused — is one line and exit 1: the environment failed, not the
input; Ctrl-C is exit 130).
"""

from __future__ import annotations

import argparse
import sys
import typing

from scaling.errors import ScalingError, one_line
from scaling.provenance import git_state


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + message."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def commands() -> dict[str, tuple]:
    """Every command, in the order ``scaling --help`` lists them: the pipeline's order."""
    from scaling.fit import cli as fit_cli
    from scaling.launch import cli as launch_cli
    from scaling.methods import cli as methods_cli
    from scaling.sweep import cli as sweep_cli
    from scaling.train import cli as train_cli

    tour, train = dict(train_cli.COMMANDS), {}
    train["train"] = tour.pop("train")
    train["backbone"] = tour.pop("backbone")
    return {**methods_cli.COMMANDS, **tour, **sweep_cli.COMMANDS, **train,
            **launch_cli.COMMANDS, **fit_cli.COMMANDS}  # fmt: skip


def build_parser() -> Parser:
    table = commands()
    parser = Parser(
        prog="scaling",
        description="Plan, run and fit isoFLOP scaling sweeps of Ladder, xLadder and QLoRA fine-tuning.",
        epilog="examples:\n  " + "\n  ".join(example for _, example, _, _ in table.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_, example, add_arguments, run) in table.items():
        p = sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.set_defaults(handler=run)
        add_arguments(p)
    return parser


class _Version(argparse.Action):
    """``--version``, worked out only when asked for (it runs git)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and the git commit, then exit")  # fmt: skip

    def __call__(self, parser, namespace, values, option_string=None) -> typing.NoReturn:
        print(version())  # on stdout, like argparse's own version action
        parser.exit(0)


def version() -> str:
    """``scaling <version> (git <sha>)``: the installed distribution's version and the commit of the
    checkout the package is imported from: ``-dirty`` when tracked files differ from it, ``unknown``
    when it is not imported from a git checkout (a wheel, an sdist) or git is not installed."""
    from importlib import metadata

    try:
        number = metadata.version("scaling")
    except metadata.PackageNotFoundError:  # imported from a source tree never installed
        number = "unknown"
    return f"scaling {number} (git {git_commit() or 'unknown'})"


def git_commit() -> str | None:
    """The commit of the checkout this package is tracked in (``-dirty`` when its files changed)."""
    state = git_state()
    return None if state is None else state[0] + ("-dirty" if state[1] else "")


def main(argv: list[str] | None = None) -> int:
    """Run one command line (default: ``sys.argv[1:]``); return its exit code."""
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # --help, or a usage error already printed on one line
        return int(e.code or 0)
    try:
        code = args.handler(args)
    except ScalingError as e:
        print(f"scaling {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # the last safety net: a user reads one line, never a traceback
        print(f"scaling {args.command}: {os_error_line(e)}", file=sys.stderr)
        return 1
    return code or 0


def os_error_line(e: OSError) -> str:
    """``<strerror>: <filename>`` (or the message alone when the OS named no file), on one line."""
    files = [str(f) for f in (e.filename, e.filename2) if f is not None]
    return ": ".join([one_line(e) if e.strerror is None else e.strerror, *files])


if __name__ == "__main__":
    sys.exit(main())
