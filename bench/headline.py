"""The paper's headline on a GPU: a 7B backbone in NF4 at 2k context on a 12 GB card, per method.

    python bench/headline.py                     # a CUDA GPU with > 12 GB (bench/gpu/run.sh runs this)
    python bench/headline.py --rehearse          # CPU rehearsal: small shape, the same code paths

A backbone of the preset's shape (Qwen2.5-7B by default) is built from its config with random weights
(seed 0), saved in bf16 with ``save_pretrained``, and each configuration is built from that folder
through its method (the user path: NF4 + double quantisation through bitsandbytes, bf16 compute, the
method's optimizer — QLoRA's paged AdamW). For each of Ladder r=8, xLadder r=8 δ=7, QLoRA r=64 with and
without gradient checkpointing, each with the plain and the memory-efficient loss:

- **measured**: two training steps as the job runs them (:func:`scaling.measure.step_memory`): the
  live tensor bytes at each step's peak (the memory oracle) and ``torch.cuda.max_memory_allocated``
  over it (the allocator's view); then ``--steps`` timed steps without the oracle for tokens/s;
- **analytic**: :func:`scaling.flops.memory` for CUDA, the same step;
- **capped**: Ladder r=8 (both losses) and QLoRA r=64 without checkpointing (plain loss), each in a
  fresh process with ``torch.cuda.set_per_process_memory_fraction`` limiting the allocator to ``--cap``
  (12 GB = 12·10⁹ bytes, the unit of ``--gpu-mem 12GB``) before loading: does it train, or run out of
  memory, and what did the model predict.

It reports what happened; it asserts nothing. The GPU path imports no polars (the GPU machine has
none). ``--rehearse`` runs everything on the CPU at a small shape (Qwen2.5-0.5B's, 8 layers, 128
tokens): the caps cannot be enforced there, so the capped rows compare the oracle's peak with the cap
instead. Writes ``bench/results/headline-<cuda|cpu-rehearsal>.json``; ``--readme`` renders
bench/README.md's headline block from ``headline-cuda.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {  # label → (method, dials)
    "ladder r=8": ("ladder", {"reduction": 8}),
    "xladder r=8 δ=7": ("xladder", {"reduction": 8, "delta": 7}),
    "qlora r=64": ("qlora", {"rank": 64}),
    "qlora r=64 ckpt": ("qlora", {"rank": 64, "gradient_checkpointing": True}),
}
CAPPED = (("ladder r=8", "plain"), ("ladder r=8", "efficient"), ("qlora r=64", "plain"))
GiB = 2**30


def _no_polars() -> None:
    """The GPU machine has no polars: fail here, at once, if anything on this path imports it."""
    sys.modules.setdefault("polars", None)  # `import polars` now raises ImportError


def make_backbone(preset: str, layers: int | None, directory: Path, device: str) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaling.arch import preset_config

    fields = preset_config(preset)
    if layers:
        fields["num_hidden_layers"] = layers
    torch.manual_seed(0)
    with torch.device(device):  # on the GPU 7B initialises in seconds
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(**fields), dtype=torch.bfloat16
        )
    model.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return fields


def _config(label: str, loss: str):
    from scaling import methods

    name, dials = CONFIGS[label]
    return methods.config(name, **dials, loss=loss)


def _batch(model, vocab: int, batch: int, seq_len: int):
    import torch

    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    return ids.to(next(model.parameters()).device)


def measure_one(backbone: str, arch, label: str, loss: str, args, device: str) -> dict:
    """Oracle and allocator peaks of two steps, then tokens/s over ``args.steps`` plain steps."""
    import torch

    from scaling import flops, measure
    from scaling.train.objective import make_optimizer, micro_step

    cfg = _config(label, loss)
    torch.manual_seed(0)
    model = cfg.build(backbone)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, used = make_optimizer(params, dict(lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0),
                               cfg.optimizer)  # fmt: skip
    ids = _batch(model, arch.vocab_size, args.batch, args.seq_len)
    out = {"config": cfg.to_dict(), "optimizer": used,
           "trainable_params": sum(p.numel() for p in params), "steps": {}}  # fmt: skip
    for step, got in zip(("first", "steady"), measure.step_memory(model, opt, ids, ids.clone()),
                         strict=True):  # fmt: skip
        est = flops.memory(arch, cfg, args.seq_len, args.batch, step=step, device=device)
        out["steps"][step] = {"oracle": got.peak, "oracle_at": got.phase, "allocated": got.allocated,
                              "analytic": est.total, "analytic_at": est.peak_at,
                              "paged": est.paged, "error": est.total / got.peak - 1}  # fmt: skip
    n = int(ids[:, 1:].numel())
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        micro_step(model, ids, ids, n_labels=n, loss=loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    out["tokens_per_s"] = args.batch * args.seq_len * len(times) / sum(times)
    del model, opt
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def capped_worker(spec: dict) -> dict:
    """In a fresh process: cap the allocator, load, train two steps; OOM is a result, not a crash."""
    _no_polars()
    import torch

    from scaling import flops, measure
    from scaling.arch import resolve_arch
    from scaling.methods.backbone import quiet_libraries
    from scaling.train.objective import make_optimizer

    quiet_libraries()
    cuda = torch.cuda.is_available()
    cfg = _config(spec["label"], spec["loss"])
    arch = resolve_arch(spec["backbone"])
    est = flops.memory(arch, cfg, spec["seq_len"], spec["batch"], device="cuda" if cuda else "cpu")
    out = {"cap_bytes": spec["cap"], "analytic": est.total, "analytic_fits": est.fits(spec["cap"])}
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["cap"] / total), 0)
    phase = "load"
    try:
        model = cfg.build(spec["backbone"])
        params = [p for p in model.parameters() if p.requires_grad]
        opt, _ = make_optimizer(params, dict(lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0),
                                cfg.optimizer)  # fmt: skip
        ids = _batch(model, arch.vocab_size, spec["batch"], spec["seq_len"])
        phase = "steps"
        steps = measure.step_memory(model, opt, ids, ids.clone())
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, torch.cuda.OutOfMemoryError) and "out of memory" not in msg.lower():
            raise
        return out | {"status": "oom", "phase": phase, "error": msg}
    peak = max(s.allocated if cuda else s.peak for s in steps)
    status = "success" if cuda or peak <= spec["cap"] else "over the cap (not enforced on CPU)"
    return out | {"status": status, "peak": peak, "enforced": cuda}


def run_capped(spec: dict, tmp: Path) -> dict:
    path = tmp / f"capped-{len(list(tmp.glob('capped-*.json')))}.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", str(path)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "error": " | ".join(tail)}
    return json.loads(path.read_text())


def run(args) -> dict:
    _no_polars()
    import torch

    from scaling.arch import resolve_arch
    from scaling.methods.backbone import quiet_libraries

    quiet_libraries()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from scaling import flops

    cap = flops.parse_bytes(args.cap)
    start = time.perf_counter()
    rows, capped = {}, {}

    def note(text: str) -> None:
        print(f"  [{time.perf_counter() - start:5.0f} s] {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(tmp) / "backbone"
        fields = make_backbone(args.preset, args.layers, backbone, device)
        arch = resolve_arch(backbone)
        note(f"backbone saved ({args.preset}, {arch.num_layers} layers)")
        for label, loss in CAPPED:
            spec = dict(label=label, loss=loss, backbone=str(backbone), batch=args.batch,
                        seq_len=args.seq_len, cap=cap)  # fmt: skip
            capped[f"{label}, {loss} loss"] = r = run_capped(spec, Path(tmp))
            note(f"capped {args.cap}: {label}, {loss} loss: {r['status']}")
        for label in CONFIGS:
            for loss in ("plain", "efficient"):
                try:
                    rows[f"{label}, {loss} loss"] = r = measure_one(str(backbone), arch, label,
                                                                     loss, args, device)  # fmt: skip
                    r["status"] = "success"
                except torch.cuda.OutOfMemoryError as e:
                    rows[f"{label}, {loss} loss"] = {"status": "oom", "error": str(e)[:200]}
                    torch.cuda.empty_cache()
                note(f"{label}, {loss} loss: {rows[f'{label}, {loss} loss']['status']}")
    assert sys.modules.get("polars") is None, "the GPU path imported polars"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (rehearsal)"
    return {
        "bench": "headline", "device": name, "torch": torch.__version__,
        "python": platform.python_version(), "backbone": f"{args.preset} shape, "
        f"{arch.num_layers} layers, random weights (seed 0)", "backbone_config": fields,
        "seq_len": args.seq_len, "batch": args.batch, "cap": args.cap, "cap_bytes": cap,
        "compute_dtype": "bfloat16" if device == "cuda" else "float32", "runs": rows,
        "capped": capped, "wall_s": time.perf_counter() - start,
        "command": " ".join(["python bench/headline.py", *sys.argv[1:]]),
    }  # fmt: skip


def table(out: dict) -> str:
    lines = [
        f"{out['backbone']}; batch {out['batch']} × {out['seq_len']} tokens; {out['compute_dtype']} on "
        f"{out['device']} (torch {out['torch']}); `{out['command']}`, {out['wall_s']:.0f} s.",
        "",
        "| configuration | oracle GiB (steady) | max_memory_allocated GiB | analytic GiB | analytic "
        "/ oracle − 1 | paged GiB | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in out["runs"].items():
        if r["status"] != "success":
            lines.append(f"| {key} | {r['status']} | | | | | |")
            continue
        s = r["steps"]["steady"]
        alloc = f"{s['allocated'] / GiB:.2f}" if s["allocated"] else "-"
        lines.append(f"| {key} | {s['oracle'] / GiB:.2f} | {alloc} | {s['analytic'] / GiB:.2f} | "
                     f"{s['error']:+.1%} | {s['paged'] / GiB:.2f} | {r['tokens_per_s']:,.0f} |")  # fmt: skip
    lines += ["", f"Capped at {out['cap']} (`set_per_process_memory_fraction`):", ""]
    for key, r in out["capped"].items():
        pred = "fits" if r.get("analytic_fits") else "does not fit"
        lines.append(f"- {key}: **{r['status']}** (the model predicted {r.get('analytic', 0) / GiB:.2f} "
                     f"GiB: {pred})")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-7b", help="architecture preset (scaling.arch)")
    ap.add_argument("--layers", type=int, help="override the preset's depth")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--cap", default="12GB", help="card size the capped runs are limited to")
    ap.add_argument("--rehearse", action="store_true",
                    help="CPU rehearsal: qwen2.5-0.5b shape, 8 layers, 128 tokens")  # fmt: skip
    ap.add_argument("--out", help="JSON to write (default bench/results/headline-<device>.json)")
    ap.add_argument("--readme", action="store_true", help="render bench/README.md's block only")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(capped_worker(json.loads(args.worker))))
        return
    if args.readme:
        path = HERE / "README.md"
        out = json.loads((HERE / "results" / "headline-cuda.json").read_text())
        pattern = re.compile(r"(<!-- generated:headline -->\n)(?:.*?\n)?(<!-- /generated:headline -->)",
                             re.S)  # fmt: skip
        path.write_text(pattern.sub(lambda m: m[1] + table(out) + "\n" + m[2], path.read_text()))
        return
    if args.rehearse:
        args.preset, args.layers, args.seq_len, args.steps = "qwen2.5-0.5b", 8, 128, 1
    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print("no CUDA device: the headline needs a GPU (--rehearse runs it on the CPU)")
        return
    out = run(args)
    name = "cuda" if torch.cuda.is_available() else "cpu-rehearsal"
    path = Path(args.out) if args.out else HERE / "results" / f"headline-{name}.json"
    from scaling import io

    io.write_json(path, out)
    print(table(out))
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
