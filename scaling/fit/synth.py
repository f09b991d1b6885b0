"""A sweep simulator for testing the fitter: real run directories whose losses follow a known law.

    >>> from scaling.fit import synth
    >>> laws = synth.simulate("runs/synthetic", noise=0.003, seed=0)   # {method: Law}
    >>> # runs/synthetic now looks like a trained sweep: manifest.parquet, runs/<id>/{spec,result}.json,
    >>> # runs/<id>/metrics.parquet; `scaling fit runs/synthetic` should recover `laws`.

The sweep is planned by :mod:`scaling.sweep` itself (a tiny Llama backbone, Ladder by side width and
LoRA by rank), so run ids, parameter counts, exact FLOPs per token, tokens and configs are those of a
real sweep; only training is replaced by L = E + A/N^α + B/D^β (N trainable parameters, D tokens),
times log-normal noise. Each law's A is chosen so that the compute-optimal N sits mid-grid at the
middle budget, which keeps every isoFLOP minimum interior. Per-step metrics follow the same law along
each run (D = tokens so far), which is what approach 1 reads. Chinchilla-style simulators are how the
fitter is tested before it is trusted (as kyo-takano's ``chinchilla`` package does).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from scaling import flops, methods, sweep
from scaling.arch import Arch
from scaling.fit.frontier import fit_flops_model, optimal_allocation
from scaling.io import write_json, write_parquet

TINY_LLAMA = dict(model_type="llama", hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                  max_position_embeddings=256, tie_word_embeddings=False)  # fmt: skip
GRIDS = {  # ±~0.8 decades of N around the optima (wider grids bias approach 2's minima)
    "ladder": {"side_width": [6, 8, 11, 16, 22, 32, 45, 64], "quantization": "none"},
    "lora": {"rank": [2, 3, 4, 6, 8, 12, 16, 24, 32]},
}
BUDGETS = [3e11, 1e12, 3e12, 1e13]
SHAPES = {  # E, alpha, beta, B: Ladder and LoRA with different exponents
    "ladder": (1.5, 0.34, 0.30, 30.0),
    "lora": (1.4, 0.40, 0.26, 20.0),
}


@dataclasses.dataclass(frozen=True)
class Law:
    """L = E + A/N^α + B/D^β."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A * N**-self.alpha + self.B * D**-self.beta

    @property
    def theta(self) -> np.ndarray:
        return np.array([math.log(self.A), math.log(self.B), self.alpha, self.beta,
                         math.log(self.E)])  # fmt: skip


def tiny_spec(methods_: tuple[str, ...] = ("ladder", "lora"), **over: Any) -> sweep.SweepSpec:
    """A sweep of the tiny Llama, cheap enough to plan in a test."""
    data = {
        "name": "synthetic", "backbones": ["tiny-llama"],
        "backbone_config": {"tiny-llama": TINY_LLAMA}, "methods": list(methods_),
        "method": {m: GRIDS[m] for m in methods_}, "seq_len": 128, "batch_tokens": 256,
        "micro_batch_size": 2, "dataset": {"name": "synthetic-arithmetic"},
        "constraints": {"min_steps": 20, "max_epochs": None}, "train": {"eval_every": 0},
    } | over  # fmt: skip
    return sweep.SweepSpec.from_dict(data)


def choose_law(
    method: str, spec: sweep.SweepSpec, budgets: list[float], shape: tuple[float, ...]
) -> Law:
    """The law of ``shape`` (E, α, β, B) whose optimum at the middle budget sits mid-grid."""
    E, alpha, beta, B = shape
    arch = Arch.from_hf_config(TINY_LLAMA, source="tiny-llama")
    cfgs = [methods.config(method, **c) for c in _grid_configs(spec.method[method])]
    costs = [flops.cost(arch, c, spec.seq_len) for c in cfgs]
    N = np.array([c.trainable_params for c in costs], dtype=float)
    fm = fit_flops_model(N, np.array([c.train_flops_per_token for c in costs]))
    n_mid = math.exp(np.log(N).mean())
    c_mid = math.exp(np.log(budgets).mean())
    d_mid = c_mid / fm(n_mid)
    share = fm.f1 * n_mid / fm(n_mid)  # d log F / d log N at the target
    # dL/dlogN = 0:  α·A·N^−α = β·B·D^−β·share
    A = beta * B * d_mid**-beta * share * n_mid**alpha / alpha
    law = Law(E, A, B, alpha, beta)
    n_opt, _, _ = optimal_allocation(law.theta, fm, np.array([c_mid]))
    assert abs(math.log(n_opt[0] / n_mid)) < 0.05 * abs(math.log(n_mid)) + 0.1
    return law


def _grid_configs(table: dict[str, Any]) -> list[dict[str, Any]]:
    axes = {k: v for k, v in table.items() if isinstance(v, list)}
    fixed = {k: v for k, v in table.items() if not isinstance(v, list)}
    (key, values), = axes.items()  # fmt: skip
    return [fixed | {key: v} for v in values]


def simulate(
    out: str | Path,
    *,
    spec: sweep.SweepSpec | None = None,
    budgets: list[float] | None = None,
    laws: dict[str, Law] | None = None,
    noise: float = 0.0,
    seed: int = 0,
    curves: bool = True,
    evals: int = 4,
    statuses: dict[int, str] | None = None,
    unfinished: tuple[int, ...] = (),
) -> dict[str, Law]:
    """Plan ``spec`` at ``budgets`` into ``out`` and write every run's result from its method's law.

    ``statuses`` maps run indices (plan order) to a non-success status (``failed``, ``diverged``,
    ``cancelled``); runs in ``unfinished`` get no result.json. Returns the laws used.
    """
    spec = spec or tiny_spec()
    budgets = budgets or BUDGETS
    laws = laws or {m: choose_law(m, spec, budgets, SHAPES[m]) for m in spec.methods}
    plan = sweep.build_plan(spec, budgets)
    sweep.write(plan, out)
    rng = np.random.default_rng(seed)
    statuses = statuses or {}
    for i, r in enumerate(plan.runs):
        eps = rng.standard_normal()
        if i in unfinished:
            continue
        d = Path(out) / "runs" / r.run_id
        law = laws[r.method]
        factor = math.exp(noise * eps)
        status = statuses.get(i, "success")
        final = float(law.loss(r.trainable_params, r.tokens)) * factor
        ok = status == "success"
        write_json(d / "result.json", {
            "format_version": 1, "run_id": r.run_id, "sweep": r.sweep, "status": status,
            "error": None if ok else f"simulated {status}", "method": r.method, "dial": r.dial,
            "method_config": r.method_config, "backbone": r.backbone, "budget": r.budget,
            "seed": r.seed, "final_eval_loss": final if ok else None,
            "final_train_loss": final * 0.98 if ok else None, "planned_steps": r.steps,
            "steps": r.steps, "planned_tokens": r.tokens, "tokens": r.tokens,
            "planned_flops": r.realised_flops, "flops": r.realised_flops,
            "flops_per_token": r.flops_per_token, "trainable_params": r.trainable_params,
            "backbone_params": r.backbone_params, "wall_time_s": 1.0, "tokens_per_s": 1e4,
            "peak_memory_bytes": r.peak_memory_bytes, "provenance": {"simulated": True},
        })  # fmt: skip
        if curves and ok:
            _write_metrics(d / "metrics.parquet", r, law, factor, evals)
    return laws


def _write_metrics(path: Path, r: sweep.RunSpec, law: Law, factor: float, evals: int) -> None:
    import polars as pl

    train = np.unique(np.linspace(1, r.steps, min(r.steps, 40)).round().astype(int))
    ev = np.unique(np.linspace(r.steps / evals, r.steps, evals).round().astype(int))
    rows = []
    for kind, steps, scale in (("train", train, 0.98), ("eval", ev, 1.0)):
        tokens = steps * r.batch_tokens
        loss = law.loss(r.trainable_params, tokens) * factor * scale
        for s, t, lo in zip(steps, tokens, loss, strict=True):
            rows.append({"kind": kind, "step": int(s), "tokens": int(t),
                         "flops": float(t * r.flops_per_token), "loss": float(lo),
                         "lr": 1e-3 if kind == "train" else None,
                         "grad_norm": 1.0 if kind == "train" else None,
                         "tokens_per_s": 1e4 if kind == "train" else None,
                         "peak_memory_bytes": r.peak_memory_bytes if kind == "train" else None,
                         "wall_s": float(s) if kind == "train" else None})  # fmt: skip
    write_parquet(pl.DataFrame(rows, infer_schema_length=None), path)
