"""``scaling flops | memory``: a method's parameters, FLOPs per token and analytic peak memory.

    scaling flops  --model qwen2.5-7b --method ladder --reduction 8 --seq-len 2048
    scaling flops  --model qwen2.5-7b --method qlora --seq-len 2048 --breakdown   # + fvcore's count
    scaling memory --model qwen2.5-7b --method qlora --seq-len 2048 --batch-size 1 --gpu-mem 12GB

Every number comes from :mod:`scaling.flops` on the architecture of ``--model`` (a model directory, a
``config.json``, a cached hub id or a preset); method dials are options, and a dial the method does not
have is an error listing the valid ones. ``COMMANDS`` is what ``scaling.cli`` registers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
import types
import typing

from scaling import flops
from scaling.arch import PRESETS, resolve_arch
from scaling.config import MAX_DIM
from scaling.errors import ScalingError
from scaling.methods.registry import REGISTRY, config_class


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
    for cls in REGISTRY.values():
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
    cls = config_class(args.method)
    return cls.from_dict(_dials(args), where=f"method {args.method}")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise ScalingError(f"{name} must be positive; got {value}")
    if value > MAX_DIM:  # a tensor dimension: beyond it the arithmetic overflows a float
        raise ScalingError(f"{name} must be at most {MAX_DIM}; got {value}")


def cmd_flops(args: argparse.Namespace) -> None:
    _positive("--seq-len", args.seq_len)
    cfg = _method_config(args)
    arch = resolve_arch(args.model)
    c = flops.cost(arch, cfg, args.seq_len)
    split = breakdown(arch, cfg, args.seq_len) if args.breakdown else None
    if args.json:
        out = {"model": args.model, "config": cfg.to_dict(), **c.to_dict()}
        print(json.dumps(out | ({"breakdown": split} if split else {}), indent=2))
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
    if split:
        print_breakdown(split)


def cmd_memory(args: argparse.Namespace) -> None:
    _positive("--seq-len", args.seq_len)
    _positive("--batch-size", args.batch_size)
    cfg = _method_config(args)
    arch = resolve_arch(args.model)
    try:
        # `is not None`: an empty --gpu-mem "" is a mistake to report, not "no card given".
        capacity = flops.parse_bytes(args.gpu_mem) if args.gpu_mem is not None else None
    except ValueError as e:
        raise ScalingError(f"--gpu-mem: {e}") from None
    m = flops.memory(arch, cfg, args.seq_len, args.batch_size, step=args.step, device=args.device)
    fits = None if capacity is None else m.fits(capacity)
    measured = None
    if args.measure:
        from scaling.measure import twin_memory

        measured = twin_memory(arch, cfg, args.seq_len, args.batch_size, step=args.step)
    if args.json:
        out = {"model": args.model, "config": cfg.to_dict(), "seq_len": args.seq_len,
               "batch_size": args.batch_size, "device": args.device, "bytes": m.to_dict(),
               "fits": fits, "measured": measured}  # fmt: skip
        print(json.dumps(out, indent=2))
        return
    print(f"{args.method} on {args.model}, batch {args.batch_size} × {args.seq_len} tokens, "
          f"{args.step} step on {args.device} ({_describe(cfg)})")  # fmt: skip
    rows = [
        (k, f"{v / flops.GiB:8.2f} GiB") for k, v in m.to_dict().items() if isinstance(v, float)
    ]
    _table([*rows, ("peak at", m.peak_at)])
    if capacity is not None:
        verdict = "fits" if fits else "does NOT fit"
        print(f"{verdict} in {args.gpu_mem} ({capacity / flops.GiB:.2f} GiB)")
    if measured is not None:
        print(
            f"\nmeasured on a tiny twin on this CPU ({measured['twin']}), live tensor bytes at the peak:"
        )
        terms = list(measured["analytic"])
        _table([("term", f"{'analytic':>12}  {'measured':>12}")] + [
            (t, f"{measured['analytic'].get(t, 0):>12,.0f}  {measured['measured'].get(t, 0):>12,.0f}")
            for t in terms
        ] + [("peak at", f"{measured['analytic_peak_at']:>12}  {measured['measured_peak_at']:>12}"),
             ("analytic / measured − 1", f"{measured['error']:+.2%}")])  # fmt: skip


TRACE_MAX = 2048
"""Longest sequence the twin is traced at (eager attention holds an s × s matrix per head)."""


def breakdown(arch, cfg, seq_len: int, *, attention: str = "eager") -> dict:
    """Per-component FLOPs per token: analytic at this size (:meth:`flops.Cost.by_component`), and on a
    tiny unquantised twin of ``arch`` (``attention``: eager, the one fvcore counts; ``use_cache=False``)
    counted by fvcore (:func:`scaling.measure.fvcore_flops`) beside the analytic count of the twin."""
    import torch

    from scaling import measure

    twin_cfg = dataclasses.replace(cfg, quantization="none", attn_implementation=attention)
    s = min(seq_len, TRACE_MAX)
    with measure.twin_model(arch, twin_cfg) as (fields, twin, model):
        ids = torch.randint(0, twin.vocab_size, (1, s), generator=torch.Generator().manual_seed(0))
        counted = measure.fvcore_flops(model, ids, max_depth=3)
    expected = flops.cost(twin, twin_cfg, s).by_component()
    keys = [*expected, *(k for k in counted.components if k not in expected)]
    rows = {k: {"label": flops.COMPONENTS.get(k, k), "analytic": expected[k].forward if k in expected else 0.0,
                "fvcore": None if k in counted.incomplete else counted.components.get(k, 0.0)}
            for k in keys}  # fmt: skip
    return {
        "analytic": {k: dataclasses.asdict(t) | {"train": t.train}
                     for k, t in flops.cost(arch, cfg, seq_len).by_component().items()},
        "fvcore": {"twin": {k: v for k, v in fields.items() if k != "model_type"},
                   "seq_len": s, "convention": FVCORE_CONVENTION, "components": rows,
                   "total": counted.total / counted.tokens, "modules": counted.modules,
                   "table": counted.table, "not_counted": counted.not_counted,
                   "elementwise_not_counted": counted.elementwise, "uncalled": list(counted.uncalled),
                   "quantization": cfg.quantization, "attention": attention},
    }  # fmt: skip


FVCORE_CONVENTION = (
    "fvcore counts one multiply-accumulate as one flop; its counts here are converted to 2 FLOPs per "
    "multiply-accumulate, this tool's unit"
)


def print_breakdown(split: dict) -> None:
    print("\nby component, FLOPs per token (analytic):")
    rows = [("  component", f"{'forward':>10}  {'backward':>10}  {'recompute':>10}  {'train':>10}")]
    for k, t in split["analytic"].items():
        rows.append((f"  {flops.COMPONENTS[k]}", "  ".join(f"{t[f]:>10.4g}" for f in
                     ("forward", "backward", "recompute", "train"))))  # fmt: skip
    _table(rows)
    fv = split["fvcore"]
    print(
        "\nfvcore, a second independent count of the forward, on a tiny unquantised twin of the model:"
    )
    twin = ", ".join(f"{k}={v}" for k, v in fv["twin"].items())
    _say(twin)
    _say(f"{fv['attention']} attention, use_cache=False, one sequence of {fv['seq_len']} tokens"
         + ("; 4-bit base layers unquantised (fvcore cannot trace bitsandbytes' 4-bit matmuls)"
            if fv["quantization"] != "none" else ""))  # fmt: skip
    _say(fv["convention"])
    rows = [("  component, forward FLOPs per token", f"{'analytic':>12}  {'fvcore':>12}")]
    for r in fv["components"].values():
        got = "not counted" if r["fvcore"] is None else f"{r['fvcore']:.6g}"
        rows.append((f"  {r['label']}", f"{r['analytic']:>12.6g}  {got:>12}"))
    _table(rows)
    for op, where in fv["not_counted"].items():
        _say(f"NOT COUNTED by fvcore: {op} in {len(where)} modules (e.g. {next(iter(where))}); a "
             "component that runs it shows 'not counted', not a number")  # fmt: skip
    skipped = ", ".join(op.removeprefix("aten::") for op in sorted(fv["elementwise_not_counted"]))
    _say(f"elementwise ops neither counts (no matrix product): {skipped or 'none'}")
    if fv["uncalled"]:
        _say(f"modules the forward never called: {', '.join(fv['uncalled'])}")
    print(f"fvcore's per-module table (the whole {fv['seq_len']}-token forward, FLOPs):")
    print(fv["table"])


def _say(text: str) -> None:
    print(textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="  "))


def _describe(cfg) -> str:
    return ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if v is not None)


def _table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def add_arguments(p: argparse.ArgumentParser, *, memory: bool) -> None:
    p.add_argument("--model", required=True,
                   help=f"model directory, config.json, or preset ({', '.join(PRESETS)})")  # fmt: skip
    p.add_argument("--method", required=True, choices=list(REGISTRY))
    p.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
    if memory:
        p.add_argument("--batch-size", type=int, required=True, help="sequences per micro-batch")
        p.add_argument("--gpu-mem", help="card capacity to check against, e.g. 12GB or 80GiB")
        p.add_argument("--device", choices=flops.DEVICES, default="cuda",
                       help="where it trains (compute dtype under auto, dropout masks, paging)")  # fmt: skip
        p.add_argument("--step", choices=("first", "steady"), default="steady",
                       help="the first step (no optimizer state yet) or a later one")  # fmt: skip
        p.add_argument("--measure", action="store_true",
                       help="also build the configuration on a tiny twin of the model and measure one "
                            "training step on this CPU (live tensor bytes), term by term")  # fmt: skip
    if not memory:
        p.add_argument("--breakdown", action="store_true",
                       help="also the FLOPs by component, and fvcore's per-module count of the "
                            "configuration on a tiny unquantised twin of the model beside it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_dial_options(p)


COMMANDS = {
    "flops": (
        "parameters and FLOPs per token of a method",
        "scaling flops --model qwen2.5-7b --method ladder --reduction 8 --seq-len 2048",
        lambda p: add_arguments(p, memory=False),
        cmd_flops,
    ),
    "memory": (
        "analytic peak training memory of a method",
        "scaling memory --model qwen2.5-7b --method qlora --seq-len 2048 --batch-size 1 --gpu-mem 12GB",
        lambda p: add_arguments(p, memory=True),
        cmd_memory,
    ),
}
