"""Peak memory of one training step per method, each in a fresh process, beside the analytic model.

    python bench/memory.py --layers 6 --seq-len 256             # CPU: Qwen2.5-0.5B shape, 6 layers
    python bench/memory.py --preset qwen2.5-7b --seq-len 2048   # a GPU: the 7B shape, 28 layers

A backbone of the preset's shape (``--layers`` overrides its depth) is built from its config with
random weights (seed 0), saved with ``save_pretrained`` into a temporary folder, and every method
is built from that folder through ``methods.build``, the user path: NF4 through bitsandbytes for
Ladder, xLadder and QLoRA, compute-dtype weights for LoRA. Each method then runs ONE training step
(the training job's: forward, its summed token cross-entropy, backward, grad-norm clip, AdamW step,
so the optimizer state is allocated inside the step) on the same random batch, in its own fresh
Python process, so no peak, cache or allocator state leaks from one method into the next.

What is measured
----------------
- CUDA: ``torch.cuda.max_memory_allocated`` over the step after ``reset_peak_memory_stats``
  (``peak``, absolute: weights included) and ``memory_allocated`` before it (``loaded``). Like the
  analytic model it excludes the CUDA context and the caching allocator's reserve.
- CPU, a proxy: the process's resident set size (RSS). ``loaded`` is the RSS growth from after the
  imports to just before the step (model, side net or adapters, optimizer object); ``step`` is the
  peak RSS during the step minus the RSS just before it. The peak is the kernel's high-water mark
  (``VmHWM``, reset just before the step by writing 5 to ``/proc/self/clear_refs``), cross-checked
  by a thread sampling RSS every millisecond (``step_sampled``; it can only miss short spikes).
  ``peak`` = ``loaded`` + ``step``. To make RSS follow live allocations the worker runs with
  glibc's mmap threshold fixed at 128 KiB (each tensor-sized block is its own mapping, returned on
  free) and calls ``malloc_trim`` before each baseline.
  It captures every page the step touches: activations, gradients, AdamW state, logits and the
  loss's temporaries, bitsandbytes' dequantised weight buffers, oneDNN scratch. It misses memory
  freed and re-used below the baseline (it reads growth, not allocation), pages mapped but never
  touched, and allocator-held small blocks; RSS is per page, not per tensor. It also includes the
  code pages the first backward and optimizer step fault in (about 10 MB, measured against a
  warmed-up step).

The analytic estimate is :func:`scaling.flops.memory` with the compute dtype's width for the
weights (``model``). That model counts activations, gradients and logits as bf16 (the GPU
setting), so on CPU, where compute is fp32, ``rescaled`` also gives its step parts at 4 bytes per
element: activations ×2, trainable state 4 (weight) + 4 (grad) + 8 (AdamW) bytes per parameter,
logits 4 + 4. On CUDA (bf16) the two coincide. Writes ``bench/results/memory-<cpu|cuda>.json``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

METHODS = (  # (label, method, dials): the set, at one backbone, batch and length
    ("ladder r=8", "ladder", {"reduction": 8}),
    ("ladder r=16", "ladder", {"reduction": 16}),
    ("xladder r=8 δ=2", "xladder", {"reduction": 8, "delta": 2}),
    ("qlora r=64", "qlora", {"rank": 64}),
    ("qlora r=64 ckpt", "qlora", {"rank": 64, "gradient_checkpointing": True}),
    ("lora r=64", "lora", {"rank": 64}),
)
MiB = 2**20


# --------------------------------------------------------------------------------------------------
# The worker: one method, one step, in a fresh process


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class _Sampler(threading.Thread):
    """Max RSS seen by polling every ``interval`` seconds (a cross-check of the kernel's VmHWM)."""

    def __init__(self, interval: float = 1e-3):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, _rss(), threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)


def worker(spec: dict) -> dict:
    import torch

    from scaling import methods
    from scaling.methods.backbone import quiet_libraries
    from scaling.train.objective import token_loss_sum

    quiet_libraries()
    cuda = torch.cuda.is_available()
    _trim()
    base = torch.cuda.memory_allocated() if cuda else _rss()
    model = methods.build(spec["method"], spec["backbone"], **spec["dials"])
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["seq_len"]), generator=g)
    ids = ids.to(device)
    _trim()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss()
        hwm_ok = _reset_hwm()
        sampler = _Sampler()
        sampler.start()
    start = time.perf_counter()
    loss = token_loss_sum(model(input_ids=ids).logits, ids) / ids[:, 1:].numel()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    out = dict(trainable_params=sum(p.numel() for p in params), loss=loss.item(), step_s=wall,
               loaded=before - base)  # fmt: skip
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        out.update(peak=peak, step=peak - before, probe="cuda max_memory_allocated")
    else:
        sampler.done.set()
        sampler.join()
        sampled = sampler.peak - before
        step = _hwm() - before if hwm_ok else sampled
        probe = "RSS: VmHWM after clear_refs" if hwm_ok else "RSS: 1 ms sampling"
        out.update(step=step, step_sampled=sampled, peak=out["loaded"] + step, probe=probe)
    return out


# --------------------------------------------------------------------------------------------------
# The driver


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
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return fields


def analytic(arch, cfg, seq_len: int, batch: int, elt: int) -> dict:
    """flops.memory at weight width ``elt``; its step parts rescaled from bf16 to ``elt`` bytes."""
    from scaling import flops

    m = flops.memory(arch, cfg, seq_len, batch, dtype_bytes=elt)
    n_train = flops.cost(arch, cfg, seq_len).trainable_params
    state = m.trainable_state / flops.ADAMW_STATE_BYTES * (2 * elt + 8)
    rescaled = dict(weights=m.weights, trainable_state=state, activations=m.activations * elt / 2,
                    logits=m.logits / flops.LOGIT_BYTES * (elt + 4))  # fmt: skip
    rescaled["total"] = sum(rescaled.values())
    # What a step adds on top of what is resident before it: everything but the weights and the
    # trainable weights themselves (their gradients and AdamW moments are allocated in the step).
    rescaled["step"] = rescaled["total"] - m.weights - n_train * elt
    return dict(model=m.to_dict(), rescaled=rescaled)


def run_worker(spec: dict, tmp: Path) -> dict:
    out = tmp / f"{spec['method']}-{len(list(tmp.glob('*.json')))}.json"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", str(out)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        oom = any("out of memory" in line.lower() for line in tail)
        return {"status": "oom" if oom else "failed", "error": " | ".join(tail)}
    return {"status": "success", **json.loads(out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-0.5b", help="architecture preset (scaling.arch)")
    ap.add_argument("--layers", type=int, help="override the preset's depth (CPU: keep runs short)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    from scaling import io, methods
    from scaling.arch import resolve_arch
    from scaling.methods.backbone import quiet_libraries

    quiet_libraries()
    load_before = os.getloadavg()
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    elt = 2 if cuda else 4  # compute dtype "auto": bf16 on CUDA, fp32 on CPU
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(tmp) / "backbone"
        fields = make_backbone(args.preset, args.layers, backbone)
        arch = resolve_arch(backbone)
        for label, method, dials in METHODS:
            cfg = methods.config(method, **dials)
            spec = dict(method=method, dials=dials, backbone=str(backbone), batch=args.batch,
                        seq_len=args.seq_len, vocab_size=arch.vocab_size)  # fmt: skip
            measured = run_worker(spec, Path(tmp))
            est = analytic(arch, cfg, args.seq_len, args.batch, elt)
            rows.append(dict(label=label, method=method, dials=dials, quantization=cfg.quantization,
                             gradient_checkpointing=getattr(cfg, "gradient_checkpointing", False),
                             measured=measured, analytic=est))  # fmt: skip
            took = time.perf_counter() - start
            print(f"  {label}: {measured['status']} ({took:.0f} s)", file=sys.stderr, flush=True)

    def ratio(key, part):
        a, b = (next(r for r in rows if r["label"] == x) for x in ("ladder r=8", "qlora r=64"))
        return key(a)[part] / key(b)[part] if key(a).get(part) and key(b).get(part) else None

    out = {
        "bench": "memory", "device": device, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "backbone": f"{args.preset} shape, {arch.num_layers} layers, random weights (seed 0)",
        "backbone_config": fields, "seq_len": args.seq_len, "batch": args.batch,
        "compute_dtype": "bfloat16" if cuda else "float32", "rows": rows,
        "ladder_r8_over_qlora_peak": ratio(lambda r: r["measured"], "peak"),
        "ladder_r8_over_qlora_step": ratio(lambda r: r["measured"], "step"),
        "ladder_r8_over_qlora_analytic": ratio(lambda r: r["analytic"]["model"], "total"),
        "ladder_r8_over_qlora_analytic_rescaled": ratio(
            lambda r: r["analytic"]["rescaled"], "total"
        ),
        "wall_s": time.perf_counter() - start,
        "command": "python bench/memory.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k not in ("out", "worker", "worker_out")
        ),
    }  # fmt: skip
    path = Path(args.out) / f"memory-{'cuda' if cuda else 'cpu'}.json"
    io.write_json(path, out)
    print_table(out)
    print(json.dumps({"written": str(path)}))


def print_table(out: dict) -> None:
    print(f"{out['backbone']}; batch {out['batch']} × {out['seq_len']} tokens; "
          f"{out['compute_dtype']} compute on {out['device']}; MiB")  # fmt: skip
    print(
        "measured: loaded (before the step), step (growth during it), peak; analytic "
        "(flops.memory): its parts at the compute dtype, 'model' = its total as is (bf16 step "
        "parts), 'rescaled' = the parts' total, and the step part alone"
    )
    print(f"{'method':<16} {'trainable':>11} {'loaded':>7} {'step':>7} {'peak':>7} | "
          f"{'weights':>7} {'state':>7} {'activ':>7} {'logits':>7} {'model':>7} {'rescaled':>8} "
          f"{'step':>7} | {'peak/resc':>9} {'step/resc':>9}")  # fmt: skip
    for r in out["rows"]:
        m, a, s = r["measured"], r["analytic"]["model"], r["analytic"]["rescaled"]
        if m["status"] != "success":
            print(f"{r['label']:<16} {m['status']}: {m['error'][:80]}")
            continue
        print(f"{r['label']:<16} {m['trainable_params']:>11,} {m['loaded'] / MiB:>7,.0f} "
              f"{m['step'] / MiB:>7,.0f} {m['peak'] / MiB:>7,.0f} | {s['weights'] / MiB:>7,.0f} "
              f"{s['trainable_state'] / MiB:>7,.0f} {s['activations'] / MiB:>7,.0f} "
              f"{s['logits'] / MiB:>7,.0f} {a['total'] / MiB:>7,.0f} {s['total'] / MiB:>8,.0f} "
              f"{s['step'] / MiB:>7,.0f} | {m['peak'] / s['total']:>9.2f} "
              f"{m['step'] / s['step']:>9.2f}")  # fmt: skip
    ratios = {k: out[f"ladder_r8_over_qlora_{k}"] for k in ("peak", "step", "analytic")}
    ratios["rescaled"] = out["ladder_r8_over_qlora_analytic_rescaled"]
    text = {k: f"{v:.2f}" if v is not None else "n/a" for k, v in ratios.items()}
    print(f"Ladder r=8 / QLoRA r=64 (no ckpt): measured peak {text['peak']}, step {text['step']}; "
          f"analytic model {text['analytic']}, rescaled {text['rescaled']}")  # fmt: skip


if __name__ == "__main__":
    main()
