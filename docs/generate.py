"""Regenerate the analytic tables of the README from the accounting (nothing in them is typed by hand).

    python docs/generate.py            # rewrite the blocks between <!-- generated:NAME --> markers
    python docs/generate.py --check    # exit 1 if the README is out of date (tests/test_docs.py)

Each block is produced by a function below: from :mod:`scaling.flops` alone (torch-free, instant),
from the committed quickstart record (docs/quickstart/fits.json, written by docs/quickstart.py, and
timing.json, written by bench/demo_time.py), or from a command's own output (``scaling flops
--breakdown``, which builds and traces a tiny twin: seconds).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from scaling import flops, methods
from scaling.arch import resolve_arch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart"
CARD = 12e9

MEMORY_ROWS = (
    ("full", "full", {}),
    ("qlora r=64", "qlora", {"rank": 64}),
    ("qlora r=64, efficient loss", "qlora", {"rank": 64, "loss": "efficient"}),
    ("qlora r=64 + checkpointing", "qlora", {"rank": 64, "gradient_checkpointing": True}),
    ("qlora r=64 + checkpointing, efficient loss", "qlora",
     {"rank": 64, "gradient_checkpointing": True, "loss": "efficient"}),
    ("ladder r=4", "ladder", {"reduction": 4}),
    ("ladder r=8", "ladder", {"reduction": 8}),
    ("ladder r=8, efficient loss", "ladder", {"reduction": 8, "loss": "efficient"}),
    ("ladder r=16", "ladder", {"reduction": 16}),
    ("xladder r=8, δ=7", "xladder", {"reduction": 8, "delta": 7}),
)  # fmt: skip


def memory_7b() -> str:
    """Qwen2.5-7B at 2048 tokens, batch 1, bf16 on CUDA: FLOPs and the peak-memory terms."""
    arch = resolve_arch("qwen2.5-7b")
    gib = flops.GiB
    lines = [
        "| method | trainable | train GFLOP/token (executed / causal) | weights + quant state | "
        "gradients | optimizer (paged) | activations | loss | temporaries | peak GiB | peak at | "
        "fits 12 GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mem = {}
    cost = {}
    for label, name, dials in MEMORY_ROWS:
        cfg = methods.config(name, **dials)
        c, m = flops.cost(arch, cfg, 2048), flops.memory(arch, cfg, 2048, 1)
        mem[label], cost[label] = m, c
        opt = f"{m.optimizer / gib:.2f}" + (f" ({m.paged / gib:.2f})" if m.paged else "")
        lines.append(
            f"| {label} | {c.trainable_params / 1e6:.1f} M | {c.train_flops_per_token / 1e9:.2f} / "
            f"{c.train_flops_per_token_causal / 1e9:.2f} | {(m.weights + m.quant_state) / gib:.2f} | "
            f"{m.gradients / gib:.2f} | {opt} | {m.activations / gib:.2f} | {m.loss / gib:.2f} | "
            f"{m.temporaries / gib:.2f} | {m.total / gib:.2f} | {m.peak_at} | "
            f"{'yes' if m.fits(CARD) else 'no'} |"
        )
    ratio = mem["ladder r=8"].total / mem["qlora r=64"].total
    ratio_eff = mem["ladder r=8, efficient loss"].total / mem["qlora r=64, efficient loss"].total
    fpt = cost["ladder r=8"].train_flops_per_token / cost["qlora r=64"].train_flops_per_token
    lines += [
        "",
        f"Ladder r=8 needs {ratio:.2f}× QLoRA r=64's peak memory without checkpointing "
        f"({ratio_eff:.2f}× with the memory-efficient loss for both) and {fpt:.2f}× its FLOPs per token. "
        f"With the plain loss its peak is the loss backward's 12·(s−1)·V bytes "
        f"({mem['ladder r=8'].loss / gib:.2f} GiB), which puts it "
        f"{'under' if mem['ladder r=8'].fits(CARD) else 'over'} a 12 GB card; the memory-efficient "
        f"loss brings it to {mem['ladder r=8, efficient loss'].total / gib:.2f} GiB.",
    ]
    return "\n".join(lines)


def _ci(value, ci) -> str:
    if value is None:
        return "–"
    text = f"{value:.3g}"
    return text + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci and None not in ci else "")


def quickstart() -> str:
    """The committed quickstart fit (docs/quickstart/fits.json) and demo timing (timing.json)."""
    fits = json.loads((QUICKSTART / "fits.json").read_text())
    lines = [
        "| method | runs | N\\*(C) exponent a, approach 2 | approach 3 | L\\*(C) exponent γ, approach 2 "
        "| E (approach 3) | held-out error (approach 3) | joint law preferred (held-out error) "
        "| identified |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in fits["methods"].items():
        a2, a3 = m.get("approach2") or {}, m.get("approach3") or {}
        n2, loss = a2.get("n_opt") or {}, a2.get("loss") or {}
        n3 = a3.get("n_opt") or {}
        joint = m.get("joint") or {}
        pref = joint.get("preferred")
        pref_text = "–" if pref is None else (
            f"{pref} ({joint['forms'][pref]['holdout_mape']:.1%})")  # fmt: skip
        held = (m.get("holdout") or {}).get("mape")
        ident = [k for k, ok in m["identified"].items() if ok]
        lines.append(
            f"| {name} | {m['n_points']} | {_ci(n2.get('a'), (n2.get('ci') or {}).get('a'))} "
            f"| {_ci(n3.get('a'), (n3.get('ci') or {}).get('a'))} "
            f"| {_ci(loss.get('alpha'), (loss.get('ci') or {}).get('alpha'))} "
            f"| {_ci(a3.get('E'), (a3.get('ci') or {}).get('E'))} "
            f"| {'–' if held is None else f'{held:.1%}'} | {pref_text} "
            f"| {', '.join(ident) or 'none'} |"
        )
    lines += ["", "Lowest loss per budget (the isoFLOP minimum over the family; backbone width, budget in "
              "FLOPs): " + minima()]
    t = json.loads((QUICKSTART / "timing.json").read_text())
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in t["phases_s"].items())
    lines += [
        "",
        f"`make demo` on a fresh clone took **{t['total_s'] / 60:.1f} min** ({t['total_s']:.0f} s: "
        f"install {t['install_s']:.0f} s; {phases}) on {t['cores']} cores of an {t['cpu']} "
        f"(`bench/demo_time.py`, commit {t['commit'][:7]}).",
    ]
    return "\n".join(lines)


def minima() -> str:
    """Per method, the backbone with the lowest final loss at each budget, from the committed runs."""
    import polars as pl

    runs = pl.read_parquet(QUICKSTART / "runs.parquet").filter(pl.col("status") == "success")
    parts = []
    for (method,), group in sorted(runs.group_by("method"), key=lambda kv: kv[0]):
        best = group.sort("final_eval_loss").group_by("budget", maintain_order=True).first()
        steps = [f"{r['budget']:.2g} → {r['backbone'].rsplit('-', 1)[-1]}"
                 for r in best.sort("budget").iter_rows(named=True)]  # fmt: skip
        parts.append(f"{method} " + ", ".join(steps))
    return "; ".join(parts) + "."


BREAKDOWN_ARGS = ("flops", "--model", "qwen2.5-7b", "--method", "ladder", "--reduction", "8",
                  "--seq-len", "2048", "--breakdown")  # fmt: skip


def flops_breakdown() -> str:
    """The output of ``scaling flops ... --breakdown`` (torch, fvcore: a tiny twin is built and traced)."""
    import contextlib
    import io

    from scaling.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(BREAKDOWN_ARGS))
    if code:
        raise SystemExit(f"scaling {' '.join(BREAKDOWN_ARGS)} failed ({code})")
    return f"```text\n$ scaling {' '.join(BREAKDOWN_ARGS)}\n{out.getvalue().rstrip()}\n```"


BLOCKS = {"memory-7b": memory_7b, "quickstart": quickstart, "flops-breakdown": flops_breakdown}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S
        )
        if not pattern.search(text):
            raise SystemExit(f"README.md lacks the <!-- generated:{name} --> block")
        text = pattern.sub(lambda m, make=make: m[1] + make() + "\n" + m[2], text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is out of date: run python docs/generate.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
