"""Accounting accuracy: analytic vs FlopCounterMode-measured FLOPs per token per method and family.

    python bench/accounting.py                     # llama, qwen2, mistral; tiny and small shapes
    python bench/accounting.py --seq-len 128 --batch 1

For each family (Llama with GQA and an untied head, Qwen2 with qkv biases and tied embeddings,
Mistral with multi-query attention and a sliding window shorter than the sequence) and each shape,
a model is built from its config with random weights (seed 0) and saved with ``save_pretrained``;
every method is built on it through ``methods.build`` with eager attention and no quantisation,
and one forward and backward on a random batch is counted by
:func:`scaling.measure.flops_per_token` (``torch.utils.flop_counter.FlopCounterMode``).
FlopCounterMode sees neither CPU SDPA kernels nor bitsandbytes' 4-bit matmuls, so QLoRA is counted
on its unquantised eager twin, as ``scaling demo`` does: the same matmuls at the compute dtype. The
analytic side is :func:`scaling.flops.cost` in the executed-attention convention (the full s×s
square, what eager attention runs); the causal-convention figure is recorded for reference.
Relative error = measured / analytic − 1.

The ``tiny`` shape is the tests' (tests/conftest.py); ``small`` is wider and deeper, with a head
larger than a block. Analytic vs measured *memory* is bench/memory.py's job
(``bench/results/memory-<device>.json``). Writes ``bench/results/accounting-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from scaling import flops, io, measure, methods
from scaling.arch import resolve_arch
from scaling.methods.backbone import quiet_libraries

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=128, vocab_size=300),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=8, max_position_embeddings=256, vocab_size=2048),
}  # fmt: skip
FAMILIES = {
    "llama": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True),
    "mistral": dict(num_key_value_heads=1, tie_word_embeddings=False, sliding_window=8),
}
METHODS = (  # (label, method, dials)
    ("full", "full", {}),
    ("full ckpt", "full", {"gradient_checkpointing": True}),
    ("lora r=8", "lora", {"rank": 8}),
    ("qlora r=8", "qlora", {"rank": 8}),
    ("qlora r=8 ckpt", "qlora", {"rank": 8, "gradient_checkpointing": True}),
    ("ladder r=4", "ladder", {"reduction": 4}),
    ("ladder r=8", "ladder", {"reduction": 8}),
    ("xladder r=4 δ=2", "xladder", {"reduction": 4, "delta": 2}),
)


def make_model(family: str, shape: str, directory: Path) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(family, **SHAPES[shape], **FAMILIES[family])
    AutoModelForCausalLM.from_config(cfg).save_pretrained(directory)
    return str(directory)


def measure_row(path: str, method: str, dials: dict, ids: torch.Tensor) -> dict:
    arch = resolve_arch(path)
    cost = flops.cost(arch, methods.config(method, **dials), ids.shape[1])
    # The unquantised eager twin: FlopCounterMode cannot see 4-bit matmuls or CPU SDPA.
    model = methods.build(method, path, **dials, quantization="none", attn_implementation="eager")
    fwd, train = measure.flops_per_token(model, ids)
    return dict(
        trainable_params=model.num_trainable_params(),
        trainable_params_analytic=cost.trainable_params,
        forward_analytic=cost.forward_flops_per_token, forward_measured=fwd,
        forward_rel_err=fwd / cost.forward_flops_per_token - 1,
        train_analytic=cost.train_flops_per_token, train_measured=train,
        train_rel_err=train / cost.train_flops_per_token - 1,
        train_analytic_causal=cost.train_flops_per_token_causal,
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    load_before = os.getloadavg()
    quiet_libraries()
    start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in SHAPES:
            for family in FAMILIES:
                path = make_model(family, shape, Path(tmp) / f"{family}-{shape}")
                vocab = SHAPES[shape]["vocab_size"]
                g = torch.Generator().manual_seed(0)
                ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=g)
                for label, method, dials in METHODS:
                    row = measure_row(path, method, dials, ids)
                    rows.append(dict(family=family, shape=shape, label=label, method=method,
                                     dials=dials, **row))  # fmt: skip
    worst = max(rows, key=lambda r: abs(r["train_rel_err"]))
    out = {
        "bench": "accounting", "device": "cpu",
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "shapes": SHAPES, "families": FAMILIES, "seq_len": args.seq_len, "batch": args.batch,
        "attention": "eager, executed convention (full s×s); quantization none (QLoRA: its twin)",
        "rows": rows, "max_abs_train_rel_err": abs(worst["train_rel_err"]),
        "max_abs_forward_rel_err": max(abs(r["forward_rel_err"]) for r in rows),
        "trainable_params_mismatches": sum(
            r["trainable_params"] != r["trainable_params_analytic"] for r in rows
        ),
        "memory": "analytic vs measured memory: bench/memory.py, "
                  "bench/results/memory-<device>.json",
        "wall_s": time.perf_counter() - start,
        "command": f"python bench/accounting.py --seq-len {args.seq_len} --batch {args.batch}",
    }  # fmt: skip
    path = Path(args.out) / "accounting-cpu.json"
    io.write_json(path, out)
    print(f"FLOPs per token, batch {args.batch} × {args.seq_len}, eager attention, CPU fp32")
    print(f"{'shape':<6} {'family':<8} {'method':<16} {'trainable':>10} {'fwd analytic':>13} "
          f"{'fwd rel.err':>11} {'train analytic':>15} {'train measured':>15} {'rel.err':>9} "
          f"{'causal':>13}")  # fmt: skip
    for r in rows:
        print(f"{r['shape']:<6} {r['family']:<8} {r['label']:<16} {r['trainable_params']:>10,} "
              f"{r['forward_analytic']:>13,.0f} {r['forward_rel_err']:>+11.1e} "
              f"{r['train_analytic']:>15,.0f} {r['train_measured']:>15,.0f} "
              f"{r['train_rel_err']:>+9.1e} {r['train_analytic_causal']:>13,.0f}")  # fmt: skip
    print(f"max |rel.err|: train {out['max_abs_train_rel_err']:.1e} "
          f"({worst['shape']} {worst['family']} {worst['label']}), "
          f"forward {out['max_abs_forward_rel_err']:.1e}; trainable-parameter count mismatches: "
          f"{out['trainable_params_mismatches']} of {len(rows)}")  # fmt: skip
    print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
