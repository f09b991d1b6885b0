"""Making a configuration fit a card: the established memory levers, tried in order.

    >>> from scaling.sweep.levers import fit_to_memory
    >>> fitted = fit_to_memory(arch, methods.config("ladder", reduction=8), 2048, 4, 12e9)
    >>> fitted.fits, fitted.levers, fitted.config.loss, fitted.micro_batch_size
    (True, ['loss=efficient'], 'efficient', 4)

When the analytic peak (:func:`scaling.flops.memory`) exceeds the cap: (1) the memory-efficient loss,
which drops the (tokens × vocabulary) logits and their gradients and changes neither the result nor
the FLOPs; (2) gradient checkpointing, for the methods that have it (full, LoRA, QLoRA), which re-runs
each block's forward in backward (more FLOPs per token: the planner re-derives the tokens); (3) a
smaller micro-batch, halved down to 1, with gradient accumulation making up the optimizer batch (the
same result, more time). Each lever kept is recorded; a point that does not fit with all of them is
dropped with what was tried.
"""

from __future__ import annotations

import dataclasses

from scaling import flops
from scaling.arch import Arch


@dataclasses.dataclass(frozen=True)
class Fitted:
    config: object
    micro_batch_size: int
    memory: flops.MemoryEstimate
    levers: list[str]
    fits: bool


def fit_to_memory(arch: Arch, cfg, seq_len: int, micro_batch_size: int, cap: float,
                  sequences_per_step: int | None = None) -> Fitted:  # fmt: skip
    """The first of: ``cfg`` as is, then with each lever added in turn, whose peak fits ``cap``
    (micro-batches stay divisors of ``sequences_per_step``, so accumulation makes up the batch)."""
    levers: list[str] = []
    b = micro_batch_size
    mem = flops.memory(arch, cfg, seq_len, b)
    if mem.fits(cap):
        return Fitted(cfg, b, mem, levers, True)
    steps = []
    if cfg.loss != "efficient":
        steps.append(("loss=efficient", {"loss": "efficient"}))
    if "gradient_checkpointing" in cfg.field_names() and not cfg.gradient_checkpointing:
        steps.append(("gradient_checkpointing", {"gradient_checkpointing": True}))
    for lever, change in steps:
        cfg = cfg.replace(**change)
        levers.append(lever)
        mem = flops.memory(arch, cfg, seq_len, b)
        if mem.fits(cap):
            return Fitted(cfg, b, mem, levers, True)
    n = sequences_per_step or micro_batch_size
    while b > 1:
        b = max(k for k in range(1, b // 2 + 1) if n % k == 0)
        mem = flops.memory(arch, cfg, seq_len, b)
        if mem.fits(cap):
            return Fitted(cfg, b, mem, [*levers, f"micro_batch_size={b}"], True)
    return Fitted(cfg, b, mem, [*levers, *(["micro_batch_size=1"] if micro_batch_size > 1 else [])],
                  False)  # fmt: skip
