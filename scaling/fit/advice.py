"""Memory-aware advice: at compute C, the configuration with the lowest predicted loss that fits the card.

    >>> from scaling.fit.advice import advise
    >>> advise(runs_table, report.methods, spec)     # spec.gpu_mem = "12GB", spec.predict = [1e18]
    [{"method": "ladder", "C": 1e18, "best_fitting": {"config": {...}, "loss": 1.23, "peak_bytes": ...,
      "micro_batch_size": 1, ...}, "unconstrained": {...}}, ...]

For every method with an approach-3 fit, the candidates are the method's configurations in the sweep
with its dial (Ladder's reduction, xLadder's δ, (Q)LoRA's rank) swept over all valid values, and
gradient checkpointing on and off where the method has it. Each candidate's trainable parameters N and
exact training FLOPs per token F come from :func:`scaling.flops.cost`, so D = C / F and the predicted
loss is L(N, D) of the fit — no 6·N·D. Its peak memory is :func:`scaling.flops.memory` at the sweep's
micro-batch; when it does not fit, the planner's memory levers are tried in order
(:func:`scaling.sweep.levers.fit_to_memory`: memory-efficient loss, gradient checkpointing — which
re-derives D from its FLOPs — and a smaller micro-batch with accumulation) and recorded in the entry.
Torch-free, like the rest of the fit.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from scaling import flops, methods
from scaling.arch import Arch
from scaling.errors import ScalingError
from scaling.fit.bootstrap import interval
from scaling.fit.spec import FitSpec
from scaling.sweep.grid import dial_values
from scaling.sweep.levers import Fitted, fit_to_memory

CONFIG = ("method", "backbone", "backbone_config", "method_config", "seq_len", "micro_batch_size")
NEEDED = ("run_id", *CONFIG)


def _dial_key(cfg, swept: str | None = None) -> str | None:
    """The config field that sizes it: the dial the sweep varied (recorded in its runs), else the
    method's own, or ``side_width`` when a Ladder sets it (it then overrides ``reduction``)."""
    if swept:
        return swept
    if getattr(cfg, "side_width", None):
        return "side_width"
    return type(cfg).dial


def _n(cost: flops.Cost, convention: str, kind: str) -> float:
    if convention == "trainable":
        return cost.trainable_params
    if convention == "backbone":
        return cost.backbone.total
    return cost.backbone.total + (0 if kind == "full" else cost.trainable_params)


def candidates(method: str, base_configs: list[dict[str, Any]], arch: Arch,
               swept: str | None = None) -> list:  # fmt: skip
    cls = methods.config_class(method)
    out = {}
    for mc in base_configs:
        cfg = cls.from_dict(mc, where=f"method {method}")
        variants = [cfg]
        key = _dial_key(cfg, swept)
        if key:
            for v in dial_values(key, arch):
                try:
                    variants.append(cfg.replace(**{key: v}))
                except (ScalingError, ValueError):
                    continue
        if "gradient_checkpointing" in cls.field_names():
            variants += [c.replace(gradient_checkpointing=not c.gradient_checkpointing)
                         for c in variants]  # fmt: skip
        for c in variants:
            out[json.dumps(c.to_dict(), sort_keys=True)] = c
    return list(out.values())


def check_inputs(table, spec: FitSpec) -> None:
    """Raise unless ``table`` and ``spec`` allow advice (checked before any fit: bad input costs
    seconds, not a fit)."""
    if not spec.predict:
        raise ScalingError("--gpu-mem needs --predict C: the budget to advise for")
    missing = [c for c in NEEDED if c not in table.columns]
    if missing:
        raise ScalingError(
            f"--gpu-mem needs runs from a sweep directory (column {missing[0]!r} is missing: "
            "a CSV table has no backbone or method configs)"
        )


def advise(table, fits: dict, spec: FitSpec) -> list[dict[str, Any]]:
    """Best configuration per method and budget that fits ``spec.gpu_mem`` (see module docstring)."""
    import polars as pl

    check_inputs(table, spec)
    cap = flops.parse_bytes(spec.gpu_mem)
    out = []
    for m, mf in fits.items():
        a3 = mf.approach3
        if a3 is None:
            continue
        rows = table.filter(pl.col("run_id").is_in(list(mf.points.run_id)))
        groups = {}
        swept = {}
        extra = ["dial_name"] if "dial_name" in rows.columns else []
        for r in rows.select([*CONFIG, *extra]).unique().iter_rows(named=True):
            key = (r["method"], r["backbone"], r["backbone_config"], r["seq_len"],
                   r["micro_batch_size"])  # fmt: skip
            groups.setdefault(key, []).append(json.loads(r["method_config"]))
            swept[key] = r.get("dial_name") or swept.get(key)
        theta = mf.samples.get("approach3", {}).get("theta")
        for (name, ref, bc, seq_len, mbs), configs in groups.items():
            arch = Arch.from_hf_config(json.loads(bc), source=ref)
            cands = []
            key = (name, ref, bc, seq_len, mbs)
            for cfg in candidates(name, configs, arch, swept.get(key)):
                try:
                    cost = flops.cost(arch, cfg, int(seq_len))
                except (ScalingError, ValueError):
                    continue
                n = mf.points.size_axis if spec.n == "auto" else spec.n
                cands.append((cfg, cost, _n(cost, n, cfg.kind)))
            for C in spec.predict:
                best = _best(cands, a3, C, arch, int(seq_len), int(mbs), cap, swept.get(key))
                if best is None:
                    continue
                fit_entry, free_entry = best
                for entry in (fit_entry, free_entry):
                    if entry is not None and theta is not None:
                        N, D = entry["n"], entry["d"]
                        draws = (np.exp(theta[:, 4]) + np.exp(theta[:, 0]) * N ** -theta[:, 2]
                                 + np.exp(theta[:, 1]) * D ** -theta[:, 3])  # fmt: skip
                        iv = interval(draws, spec.bootstrap.level)
                        entry["loss_ci"] = None if iv is None else list(iv)
                out.append({"method": m, "backbone": ref, "C": float(C), "gpu_mem": spec.gpu_mem,
                            "best_fitting": fit_entry, "unconstrained": free_entry})  # fmt: skip
    return out


def _best(cands, a3, C, arch, seq_len, mbs, cap, swept=None):
    """(best configuration that fits ``cap`` with the memory levers it needs, best regardless of
    memory) at compute ``C``, as advice entries."""
    free, fitting = [], []
    for cfg, cost, n in cands:
        as_is = Fitted(cfg, mbs, flops.memory(arch, cfg, seq_len, mbs), [], True)
        free.append(_score(a3, C, as_is, cost, n, swept))
        # The levers the planner uses (efficient loss, checkpointing, smaller micro-batch) may change
        # the config and so its FLOPs per token, hence D and the predicted loss.
        fitted = fit_to_memory(arch, cfg, seq_len, mbs, cap)
        if fitted.fits:
            fcost = cost if fitted.config == cfg else flops.cost(arch, fitted.config, seq_len)
            fitting.append(_score(a3, C, fitted, fcost, n, swept))
    if not free:
        return None
    for entries in (free, fitting):
        entries.sort(key=lambda e: e["loss"])
    for e in free:
        e["fits"] = e["peak_bytes"] <= cap
    return (fitting[0] if fitting else None), free[0]


def _score(a3, C, fitted: Fitted, cost: flops.Cost, n: float, swept=None) -> dict[str, Any]:
    d = C / cost.train_flops_per_token
    lo, hi = a3.n_range
    key = _dial_key(fitted.config, swept)
    return {"config": fitted.config.to_dict(), "dial": key and {key: getattr(fitted.config, key)},
            "n": float(n), "d": float(d), "loss": float(a3.predict(n, d)),
            "flops_per_token": cost.train_flops_per_token, "trainable_params": cost.trainable_params,
            "micro_batch_size": fitted.micro_batch_size, "levers": fitted.levers,
            "peak_bytes": fitted.memory.total, "fits": fitted.fits,
            "extrapolated": not lo / 1.01 <= n <= hi * 1.01}  # fmt: skip
