"""Peak memory of training steps per method, measured, beside the analytic model (`flops.memory`).

    python bench/memory.py                                      # CPU: Qwen2.5-0.5B shape, 4 layers
    python bench/memory.py --preset qwen2.5-7b --seq-len 2048   # a GPU: the 7B shape, 28 layers
    python bench/memory.py --readme                             # re-render bench/README.md's table

A backbone of the preset's shape (``--layers`` overrides its depth) is built from its config with
random weights (seed 0) and saved with ``save_pretrained``; every configuration is built from that
folder through ``methods.build`` (the user path: NF4 through bitsandbytes for Ladder, xLadder and
QLoRA) and trains two steps exactly as the job trains them (:func:`scaling.measure.step_memory`:
micro-step, clipping, optimizer step): the first, with no optimizer state yet, and a steady one.

Measured: the live tensor bytes at each step's peak and what made them up
(:class:`scaling.measure.LiveBytes`, exact and deterministic on CPU); on CUDA also
``torch.cuda.max_memory_allocated`` over the step (the allocator's view: blocks rounded up to 512
bytes, kernel workspaces included). Analytic: :func:`scaling.flops.memory` for the same device, step
and configuration. Writes ``bench/results/memory-<cpu|cuda>.json``; ``--readme`` renders the table
between ``<!-- generated:memory-<device> -->`` markers of bench/README.md from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = (  # (label, method, dials), each with the plain and the memory-efficient loss
    ("ladder r=8", "ladder", {"reduction": 8}),
    ("ladder r=16", "ladder", {"reduction": 16}),
    ("xladder r=8 δ=2", "xladder", {"reduction": 8, "delta": 2}),
    ("qlora r=64", "qlora", {"rank": 64}),
    ("qlora r=64 ckpt", "qlora", {"rank": 64, "gradient_checkpointing": True}),
    ("lora r=64", "lora", {"rank": 64}),
)
MiB = 2**20


def make_backbone(preset: str, layers: int | None, directory: Path) -> dict:
    """A randomly initialised model of ``preset``'s shape (``layers`` deep), saved in bf16."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaling.arch import preset_config

    fields = preset_config(preset)
    if layers:
        fields["num_hidden_layers"] = layers
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialise where it is fastest; 7B in bf16 is 15 GB
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(**fields), dtype=torch.bfloat16
        )
    model.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return fields


def measure_config(backbone: Path, arch, cfg, seq_len: int, batch: int, device: str) -> dict:
    import torch

    from scaling import flops, measure
    from scaling.train.objective import make_optimizer

    torch.manual_seed(0)
    model = cfg.build(str(backbone))
    params = [p for p in model.parameters() if p.requires_grad]
    opt, used = make_optimizer(params, dict(lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0),
                               cfg.optimizer)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, arch.vocab_size, (batch, seq_len), generator=gen)
    ids = ids.to(next(model.parameters()).device)
    start = time.perf_counter()
    steps = measure.step_memory(model, opt, ids, ids.clone(), loss=cfg.loss)
    wall = time.perf_counter() - start
    out = {"optimizer": used, "trainable_params": len(params) and sum(p.numel() for p in params),
           "wall_s": wall, "steps": {}}  # fmt: skip
    for name, got in zip(("first", "steady"), steps, strict=True):
        est = flops.memory(arch, cfg, seq_len, batch, step=name, device=device)
        out["steps"][name] = {
            "measured": got.peak, "measured_at": got.phase, "breakdown": got.breakdown,
            "allocated": got.allocated, "analytic": est.total, "analytic_at": est.peak_at,
            "analytic_terms": {k: v for k, v in est.to_dict().items() if isinstance(v, float)},
            "error": est.total / got.peak - 1,
        }  # fmt: skip
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def run(args) -> dict:
    import torch

    from scaling import methods
    from scaling.arch import resolve_arch
    from scaling.methods.backbone import quiet_libraries

    quiet_libraries()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(tmp) / "backbone"
        fields = make_backbone(args.preset, args.layers, backbone)
        arch = resolve_arch(backbone)
        for label, name, dials in CONFIGS:
            for loss in ("plain", "efficient"):
                cfg = methods.config(name, **dials, loss=loss, attn_implementation="sdpa")
                row = {"label": label, "loss": loss, "method": name, "config": cfg.to_dict()}
                try:
                    row |= measure_config(backbone, arch, cfg, args.seq_len, args.batch, device)
                    row["status"] = "success"
                except torch.cuda.OutOfMemoryError as e:
                    row |= {"status": "oom", "error": str(e).splitlines()[0]}
                rows.append(row)
                print(f"  {label}, {loss} loss: {row['status']} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
    return {
        "bench": "memory", "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "load_avg_1m_before_after": [load, os.getloadavg()[0]],
        "backbone": f"{args.preset} shape, {arch.num_layers} layers, random weights (seed 0)",
        "backbone_config": fields, "seq_len": args.seq_len, "batch": args.batch,
        "compute_dtype": "bfloat16" if device == "cuda" else "float32", "attention": "sdpa",
        "rows": rows, "wall_s": time.perf_counter() - start,
        "command": f"python bench/memory.py --preset {args.preset}"
                   + (f" --layers {args.layers}" if args.layers else "")
                   + f" --seq-len {args.seq_len} --batch {args.batch}",
    }  # fmt: skip


def table(out: dict) -> str:
    """The README block: measured vs analytic peak per configuration, first and steady step."""
    cuda = out["device"] != "cpu"
    head = ["configuration", "loss", "step", "measured MiB", "at", "analytic MiB", "at",
            "analytic / measured − 1"] + (["max_memory_allocated MiB"] if cuda else [])  # fmt: skip
    lines = [
        f"{out['backbone']}; batch {out['batch']} × {out['seq_len']} tokens; {out['compute_dtype']} "
        f"compute, SDPA, on {out['device']} (torch {out['torch']}, {out['threads']} threads). "
        f"Command: `{out['command']}`; {out['wall_s']:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in out["rows"]:
        if r["status"] != "success":
            lines.append(f"| {r['label']} | {r['loss']} | | {r['status']} | | | | |")
            continue
        for step, s in r["steps"].items():
            cells = [r["label"], r["loss"], step, f"{s['measured'] / MiB:,.1f}", s["measured_at"],
                     f"{s['analytic'] / MiB:,.1f}", s["analytic_at"], f"{s['error']:+.1%}"]  # fmt: skip
            if cuda:
                cells.append(f"{s['allocated'] / MiB:,.1f}" if s["allocated"] else "")
            lines.append("| " + " | ".join(cells) + " |")
    errors = [abs(s["error"]) for r in out["rows"] if r["status"] == "success"
              for s in r["steps"].values()]  # fmt: skip
    lines += ["", f"Largest |analytic / measured − 1|: {max(errors):.1%} over {len(errors)} steps."]
    return "\n".join(lines)


def render_readme(results: Path, readme: Path) -> None:
    text = readme.read_text()
    for path in sorted(results.glob("memory-*.json")):
        out = json.loads(path.read_text())
        name = path.stem
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda m, out=out: m[1] + table(out) + "\n" + m[2], text)
    readme.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-0.5b", help="architecture preset (scaling.arch)")
    ap.add_argument(
        "--layers", type=int, default=4, help="override the preset's depth (0: keep it)"
    )
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--readme", action="store_true", help="only re-render bench/README.md's tables")
    args = ap.parse_args()
    if args.readme:
        render_readme(Path(args.out), HERE / "README.md")
        return
    args.layers = args.layers or None
    out = run(args)
    from scaling import io

    path = Path(args.out) / f"memory-{'cpu' if out['device'] == 'cpu' else 'cuda'}.json"
    io.write_json(path, out)
    print(table(out))
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
