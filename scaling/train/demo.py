"""A short tour of the methods on a tiny Llama built from a config (no download): build each method,
train a few steps, and compare the analytic FLOPs per token with FlopCounterMode's count.

    scaling demo --steps 3
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from scaling import flops, measure, methods
from scaling.arch import resolve_arch
from scaling.methods.backbone import quiet_libraries
from scaling.train.backbones import save_random

DEMO_METHODS = (
    ("full", {}),
    ("lora", {"rank": 8}),
    ("qlora", {"rank": 8}),
    ("ladder", {"reduction": 4}),
    ("xladder", {"reduction": 4, "delta": 2}),
)


def tiny_llama(directory: Path) -> Path:
    """A random 4-layer, 128-wide Llama (GQA, untied head) with the byte tokenizer, saved once."""
    if not (directory / "config.json").is_file():
        save_random(directory, 128)
    return directory


def run_demo(
    steps: int = 3, out: str | None = None, batch: int = 4, seq_len: int = 64
) -> list[dict]:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_llama(Path(out) if out else Path(tmp) / "tiny-llama")
        arch = resolve_arch(path)
        ids = torch.randint(
            0, arch.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0)
        )
        print(f"tiny Llama: d={arch.hidden_size}, L={arch.num_layers}, V={arch.vocab_size}; "
              f"batch {batch} × {seq_len} tokens, {steps} AdamW steps per method, CPU fp32\n")  # fmt: skip
        header = f"{'method':<8} {'trainable':>10} {'analytic F/tok':>15} {'measured F/tok':>15} {'rel.err':>9} {'s/step':>8} {'loss':>14}"
        print(header)
        rows = []
        for name, dials in DEMO_METHODS:
            cfg = methods.config(name, **dials)
            analytic = flops.cost(arch, cfg, seq_len).train_flops_per_token
            # FlopCounterMode sees neither 4-bit matmuls nor CPU SDPA: count on the eager, unquantised twin.
            twin = methods.config(name, **dials, quantization="none", attn_implementation="eager")
            _, measured = measure.flops_per_token(twin.build(path), ids)
            model = cfg.build(path)
            opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
            losses, times = [], []
            for _ in range(steps):
                start = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - start)
                losses.append(loss.item())
            row = dict(method=name, trainable=model.num_trainable_params(), analytic=analytic,
                       measured=measured, step_s=sum(times[1:] or times) / len(times[1:] or times),
                       loss_first=losses[0], loss_last=losses[-1])  # fmt: skip
            rows.append(row)
            print(f"{name:<8} {row['trainable']:>10,} {analytic:>15,.0f} {measured:>15,.0f} "
                  f"{measured / analytic - 1:>+9.1e} {row['step_s']:>8.3f} "
                  f"{losses[0]:>6.3f}→{losses[-1]:<6.3f}")  # fmt: skip
        return rows
