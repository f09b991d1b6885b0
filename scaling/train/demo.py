"""A short tour of the methods on a tiny Llama built from a config (no download): build each method,
train a few steps, and compare the analytic FLOPs per token with FlopCounterMode's count.

    scaling demo --steps 3
    scaling demo --out runs/demo-llama     # keep the tiny model: built there once, reused after

``--out`` names the tiny model's own folder: it is built there when the folder is absent or empty and
reused when it already holds the demo's model; any other folder or file is refused, never replaced.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from scaling import flops, io, measure, methods
from scaling.arch import resolve_arch, tiny_config
from scaling.config import check_positive_int
from scaling.errors import ScalingError
from scaling.methods.backbone import quiet_libraries
from scaling.train.backbones import is_backbone, save_random

DEMO_WIDTH = 128
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")
"""The config.json fields that say a saved model is the demo's tiny Llama."""

DEMO_METHODS = (
    ("full", {}),
    ("lora", {"rank": 8}),
    ("qlora", {"rank": 8}),
    ("ladder", {"reduction": 4}),
    ("xladder", {"reduction": 4, "delta": 2}),
)


def is_demo_model(path: Path) -> bool:
    """Whether ``path`` holds the demo's tiny Llama (a saved backbone of the demo's shape)."""
    if not is_backbone(path):
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    want = tiny_config(DEMO_WIDTH)
    return isinstance(config, dict) and all(config.get(k) == want[k] for k in SHAPE_KEYS)


def tiny_llama(directory: Path) -> Path:
    """A random 4-layer, 128-wide Llama (GQA, untied head) with the byte tokenizer, saved once:
    reused when ``directory`` already holds it, built there when it is absent or empty, and refused
    otherwise (a user's folder, another model, a file) — never replaced."""
    if is_demo_model(directory):
        return directory
    io.check_replaceable(directory, is_demo_model)
    io.check_writable(directory)
    save_random(directory, DEMO_WIDTH)
    return directory


def run_demo(
    steps: int = 3, out: str | None = None, batch: int = 4, seq_len: int = 64
) -> list[dict]:
    # Checked before anything is built: with no step there is no loss to show (it divided by zero).
    if not (isinstance(steps, int) and steps >= 1):
        raise ScalingError(f"steps must be at least 1 (--steps); got {steps!r}")
    check_positive_int("batch", batch)
    check_positive_int("seq_len", seq_len)
    quiet_libraries()
    if out:  # the user's folder is checked before anything else is made
        return _tour(tiny_llama(Path(out)), steps, batch, seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        return _tour(tiny_llama(Path(tmp) / "tiny-llama"), steps, batch, seq_len)


def _tour(path: Path, steps: int, batch: int, seq_len: int) -> list[dict]:
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
