"""Training throughput of each method through the real job (`scaling train`), on one backbone.

    python bench/train_throughput.py                       # CPU: the demo's tiny Llama, fp32
    python bench/train_throughput.py --backbone DIR --seq-len 2048 --batch 8 --steps 30   # a GPU

Plans one run per method on the same backbone, batch and sequence length, trains it with
:func:`scaling.train.train`, and reports the job's own tokens/s (training steps only; mean over its
metrics rows after the first, which carries start-up costs) and peak memory (CUDA's peak allocation
on GPU, peak RSS of the process on CPU, so later methods inherit earlier ones' peak there).
Writes ``bench/results/train_throughput-<device>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from scaling import flops, io, methods, sweep
from scaling.arch import resolve_arch
from scaling.train import train
from scaling.train.demo import tiny_llama

METHODS = {
    "ladder": {"reduction": 4},
    "xladder": {"reduction": 4, "delta": 2},
    "lora": {"rank": 16},
    "qlora": {"rank": 16},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", help="model directory (default: the demo's tiny Llama)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4, help="sequences per step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        backbone = args.backbone or str(tiny_llama(Path(tmp) / "tiny-llama"))
        arch = resolve_arch(backbone)
        rows = []
        for method, dials in METHODS.items():
            cfg = methods.config(method, **dials)
            fpt = flops.cost(arch, cfg, args.seq_len).train_flops_per_token
            batch_tokens = args.batch * args.seq_len
            spec = sweep.load_spec(
                None, name=f"bench-{method}", backbones=[backbone], methods=[method],
                method={method: dials}, seq_len=args.seq_len, batch_tokens=batch_tokens,
                micro_batch_size=args.batch, budgets=[args.steps * batch_tokens * fpt],
                constraints={"min_steps": 1}, train={"log_every": 1, "eval_every": args.steps},
                dataset={"eval_sequences": 4},
            )  # fmt: skip
            plan = sweep.build_plan(spec)
            sweep.write(plan, Path(tmp) / method)
            run = Path(tmp) / method / "runs" / plan.runs[0].run_id
            start = time.perf_counter()
            result = train(run)
            wall = time.perf_counter() - start
            m = pl.read_parquet(run / "metrics.parquet").filter(pl.col("kind") == "train")
            rates = m["tokens_per_s"].to_list()[1:] or m["tokens_per_s"].to_list()
            rows.append(dict(
                method=method, dials=dials, quantization=cfg.quantization, status=result["status"],
                trainable_params=result["trainable_params"], flops_per_token=fpt,
                tokens_per_s=sum(rates) / len(rates), peak_memory_bytes=result["peak_memory_bytes"],
                steps=result["steps"], wall_s=wall, final_eval_loss=result["final_eval_loss"],
            ))  # fmt: skip
    ladder = next(r for r in rows if r["method"] == "ladder")["tokens_per_s"]
    qlora = next(r for r in rows if r["method"] == "qlora")["tokens_per_s"]
    out = {
        "bench": "train_throughput", "device": device, "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "backbone": args.backbone or "demo tiny Llama (d=128, L=4, V=512)",
        "seq_len": args.seq_len, "batch": args.batch, "steps": args.steps, "rows": rows,
        "ladder_over_qlora_tokens_per_s": ladder / qlora,
        "command": "python bench/train_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"
        ),
    }  # fmt: skip
    name = "cuda" if torch.cuda.is_available() else "cpu"
    io.write_json(Path(args.out) / f"train_throughput-{name}.json", out)
    print(
        f"{'method':<8} {'quant':<5} {'trainable':>10} {'tokens/s':>10} {'peak MiB':>9} {'eval loss':>9}"
    )
    for r in rows:
        print(f"{r['method']:<8} {r['quantization']:<5} {r['trainable_params']:>10,} "
              f"{r['tokens_per_s']:>10,.0f} {r['peak_memory_bytes'] / 2**20:>9,.0f} "
              f"{r['final_eval_loss']:>9.4f}")  # fmt: skip
    print(f"Ladder / QLoRA tokens/s: {out['ladder_over_qlora_tokens_per_s']:.2f}")
    print(json.dumps({"written": str(Path(args.out) / f"train_throughput-{name}.json")}))


if __name__ == "__main__":
    main()
