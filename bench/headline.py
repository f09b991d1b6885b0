"""The paper's headline on a GPU: a 7B backbone in NF4 at 2k context fits a 12 GB card with Ladder, not QLoRA.

    python bench/headline.py                                  # a CUDA GPU with > 12 GB (an H100, A100 80GB…)
    python bench/headline.py --preset llama-2-7b --steps 10   # the other 7B shape, more timed steps
    python bench/headline.py --layers 4                       # script check only: QLoRA fits, exit 1

A backbone of the preset's shape (Qwen2.5-7B by default) is built from its config with random weights
(seed 0), saved in bf16 with ``save_pretrained`` into a temporary folder, and each method is built from
that folder through ``methods.build`` — the user path: NF4 + double quantisation through bitsandbytes,
bf16 compute. Every measurement runs in its own fresh Python process (no peak, cache or allocator state
leaks from one into the next) and trains ``--steps`` + 1 steps of the training job's kind (forward, the
job's summed token cross-entropy, backward, grad-norm clip, AdamW step) on a random batch of
``--batch`` × ``--seq-len`` tokens:

- **capped**: ``torch.cuda.set_per_process_memory_fraction`` limits the caching allocator to ``--cap``
  (12 GB = 12·10⁹ bytes, the unit of ``scaling memory --gpu-mem 12GB``; pass ``12GiB`` for the binary
  size) before the model is loaded. Ladder r=8 must train; QLoRA r=64 without gradient checkpointing
  must raise ``torch.cuda.OutOfMemoryError``.
- **uncapped**: both again with the whole card: ``torch.cuda.max_memory_allocated`` over the
  training steps (reset after loading, so the load's own transient peak is kept apart; the weights
  stay allocated, so they are included; like the analytic model it excludes the CUDA context and the
  allocator's reserve), and tokens/s over the steps after the first (which pays cuBLAS and kernel
  start-up). The headline's ratio is Ladder's peak / QLoRA's (target ≤ 0.5); the throughput ratio is
  Ladder's tokens/s / QLoRA's.

Next to each peak is the analytic model's estimate (:func:`scaling.flops.memory`, bf16). Neither method
uses gradient checkpointing (Ladder has none; QLoRA's is off). Without CUDA the script prints one line
and writes nothing. Writes ``bench/results/headline-cuda.json``; exits 1 (after writing) when the
headline does not hold.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = {  # label → (method, dials): the paper's two settings, neither with gradient checkpointing
    "ladder": ("ladder", {"reduction": 8}),
    "qlora": ("qlora", {"rank": 64, "gradient_checkpointing": False}),
}
TARGET_RATIO = 0.5
GB = 1e9


# --------------------------------------------------------------------------------------------------
# The worker: one method, one cap, in a fresh process


def worker(spec: dict) -> dict:
    """Load, then train ``steps + 1`` steps; the outcome, with OOM as a result rather than a crash."""
    import torch

    from scaling import methods
    from scaling.methods.backbone import quiet_libraries
    from scaling.train.objective import token_loss_sum

    quiet_libraries()
    total = torch.cuda.get_device_properties(0).total_memory
    if spec["cap"]:
        # The cap holds for every allocation through PyTorch's caching allocator, bitsandbytes'
        # dequantised weights and outputs included; exceeding it raises OutOfMemoryError.
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["cap"] / total), 0)
    torch.cuda.reset_peak_memory_stats()
    out: dict = {"cap_bytes": spec["cap"], "device_total_bytes": total}
    phase = "load"
    try:
        model = methods.build(spec["method"], spec["backbone"], **spec["dials"])
        params = model.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, spec["vocab_size"], (spec["batch"], spec["seq_len"]), generator=g)
        ids = ids.to(next(model.parameters()).device)  # device_map put the model on the GPU
        n = ids[:, 1:].numel()
        torch.cuda.synchronize()
        out |= {"trainable_params": sum(p.numel() for p in params),
                "loaded_bytes": torch.cuda.memory_allocated(),
                "load_peak_bytes": torch.cuda.max_memory_allocated()}  # fmt: skip
        torch.cuda.reset_peak_memory_stats()  # the peak reported is the training steps' own
        phase = "step"
        losses, times = [], []
        for _ in range(spec["steps"] + 1):
            start = time.perf_counter()
            loss = token_loss_sum(model(input_ids=ids).logits, ids) / n
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())  # synchronises
            times.append(time.perf_counter() - start)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        # cuBLAS / bitsandbytes can report an allocation failure as a plain RuntimeError.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not isinstance(e, torch.cuda.OutOfMemoryError) and not any(
            s in msg.lower() for s in ("out of memory", "alloc_failed")
        ):
            raise
        return out | {"status": "oom", "phase": phase, "error": msg, "exception": type(e).__name__,
                      "peak_bytes_before_oom": torch.cuda.max_memory_allocated()}  # fmt: skip
    tokens = spec["batch"] * spec["seq_len"]
    timed = times[1:]
    return out | {
        "status": "success", "steps": len(times), "losses": losses,
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "reserved_peak_bytes": torch.cuda.max_memory_reserved(),
        "first_step_s": times[0], "step_s": sum(timed) / len(timed),
        "tokens_per_s": tokens * len(timed) / sum(timed),
    }  # fmt: skip


def run_worker(spec: dict, tmp: Path) -> dict:
    path = tmp / f"{spec['label']}-{'capped' if spec['cap'] else 'uncapped'}.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec), "--worker-out", str(path)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0 or not path.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "failed", "error": " | ".join(tail)}
    return json.loads(path.read_text())


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
    with torch.device("cuda"):  # initialising 7B on the GPU takes seconds, not minutes
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(**fields), dtype=torch.bfloat16
        )
    model.save_pretrained(directory)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return fields


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="qwen2.5-7b", help="architecture preset (scaling.arch)")
    ap.add_argument("--layers", type=int, help="override the preset's depth (a quick check only)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after a first, untimed one")
    ap.add_argument("--cap", default="12GB", help="card size the capped runs are limited to")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "headline-cuda.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        Path(args.worker_out).write_text(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: GPU rows not measured")
        return

    from scaling import flops, io, methods
    from scaling.arch import resolve_arch
    from scaling.methods.backbone import quiet_libraries

    quiet_libraries()
    cap = flops.parse_bytes(args.cap)
    start = time.perf_counter()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backbone = Path(tmp) / "backbone"
        fields = make_backbone(args.preset, args.layers, backbone)
        arch = resolve_arch(backbone)
        for limit in (cap, None):
            for label, (method, dials) in METHODS.items():
                key = f"{label} {'capped' if limit else 'uncapped'}"
                spec = dict(label=label, method=method, dials=dials, backbone=str(backbone),
                            batch=args.batch, seq_len=args.seq_len, steps=args.steps,
                            vocab_size=arch.vocab_size, cap=limit)  # fmt: skip
                runs[key] = run_worker(spec, Path(tmp))
                print(f"  {key}: {runs[key]['status']}", file=sys.stderr, flush=True)

    analytic = {label: flops.memory(arch, methods.config(m, **d), args.seq_len, args.batch).total
                for label, (m, d) in METHODS.items()}  # fmt: skip
    lad, ql = runs["ladder uncapped"], runs["qlora uncapped"]
    both = lad["status"] == ql["status"] == "success"
    peak_ratio = lad["peak_bytes"] / ql["peak_bytes"] if both else None
    checks = {
        "ladder_trains_capped": runs["ladder capped"]["status"] == "success",
        "qlora_ooms_capped": runs["qlora capped"]["status"] == "oom",
        "peak_ratio_at_most_0.5": peak_ratio is not None and peak_ratio <= TARGET_RATIO,
    }
    out = {
        "bench": "headline", "device": torch.cuda.get_device_name(),
        "machine": platform.node(), "torch": torch.__version__,
        "backbone": f"{args.preset} shape, {arch.num_layers} layers, random weights (seed 0), NF4",
        "backbone_config": fields, "seq_len": args.seq_len, "batch": args.batch,
        "cap": args.cap, "cap_bytes": cap, "compute_dtype": "bfloat16",
        "methods": {label: {"method": m, "dials": d} for label, (m, d) in METHODS.items()},
        "runs": runs, "analytic_total_bytes": analytic,
        "ladder_over_qlora_peak": peak_ratio,
        "ladder_over_qlora_tokens_per_s":
            lad["tokens_per_s"] / ql["tokens_per_s"] if both else None,
        "checks": checks, "headline_holds": all(checks.values()),
        "wall_s": time.perf_counter() - start,
        "command": "python bench/headline.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k not in ("out", "worker", "worker_out")
        ),
    }  # fmt: skip
    io.write_json(args.out, out)
    print_table(out)
    print(json.dumps({"written": args.out}))
    if not out["headline_holds"]:
        failed = ", ".join(k for k, v in checks.items() if not v)
        sys.exit(f"headline not reproduced: {failed}")


def print_table(out: dict) -> None:
    gb = lambda b: f"{b / GB:.2f}" if b is not None else "—"  # noqa: E731
    print(f"{out['backbone']}; batch {out['batch']} × {out['seq_len']} tokens; bf16 compute on "
          f"{out['device']}; GB = 10⁹ bytes")  # fmt: skip
    print(f"{'method':<8} {'capped ' + out['cap']:<22} {'peak':>7} {'analytic':>8} {'tokens/s':>9}")
    for label in METHODS:
        c, u = out["runs"][f"{label} capped"], out["runs"][f"{label} uncapped"]
        capped = c["status"] + (f" ({c['phase']})" if c["status"] == "oom" else "")
        rate = f"{u['tokens_per_s']:,.0f}" if u["status"] == "success" else u["status"]
        print(f"{label:<8} {capped:<22} {gb(u.get('peak_bytes')):>7} "
              f"{gb(out['analytic_total_bytes'][label]):>8} {rate:>9}")  # fmt: skip
    fmt = lambda x: f"{x:.2f}" if x is not None else "n/a"  # noqa: E731
    print(f"Ladder / QLoRA: peak {fmt(out['ladder_over_qlora_peak'])} (target ≤ {TARGET_RATIO}), "
          f"tokens/s {fmt(out['ladder_over_qlora_tokens_per_s'])}; headline "
          f"{'holds' if out['headline_holds'] else 'does NOT hold'}")  # fmt: skip


if __name__ == "__main__":
    main()
