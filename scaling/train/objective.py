"""What a training step minimises and how: the token loss (plain or memory-efficient), one micro-step,
held-out evaluation, the optimizer and the learning-rate schedule over exactly the run's planned steps.

    >>> from scaling.train.objective import loss_sum, make_optimizer, micro_step, schedule
    >>> loss = micro_step(model, x, y, n_labels=n, loss="plain")     # forward, loss / n, backward
    >>> opt, used = make_optimizer(params, run_spec["optimizer"], "paged_adamw_32bit")
    >>> sched = schedule(opt, run_spec["optimizer"], steps)

The loss is the same for every method: summed next-token cross-entropy over labelled positions
(``-100`` = no loss) in float32, normalised by the whole optimizer batch's labelled tokens. It is
computed from the model's final hidden states and its output head (:meth:`MethodModel.hidden_states`,
:meth:`MethodModel.output_head`), either as logits then cross-entropy (``plain``) or without ever
holding the (tokens × vocabulary) logits (``efficient``): liger-kernel's fused linear cross-entropy on
CUDA when it is installed, else :func:`chunked_loss_sum`. Both execute the same matmuls as the plain
path (head forward, its input gradient, and its weight gradient when the head trains), so the FLOP
accounting is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scaling.errors import ScalingError
from scaling.flops import chunk_rows


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions (-100 = no loss), in float32."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
        reduction="sum",
    )  # fmt: skip


def n_labels(labels: np.ndarray) -> int:
    return int((labels[:, 1:] != -100).sum())


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``h @ W.T`` against ``targets``, a chunk of positions at a time.

    Written here because the fused kernels that do this (liger-kernel, cut-cross-entropy) are CUDA/Triton
    only. The forward computes the loss *and* the gradients w.r.t. ``h`` (and ``W`` when it trains) chunk
    by chunk, so only one chunk's fp32 logits exist at a time and nothing of size tokens × vocabulary is
    kept for backward; backward scales the stored gradients. FLOPs: 2·d·V per position forward, 2·d·V for
    the input gradient, 2·d·V for the weight gradient if W trains — exactly the plain path's.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, rows):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for i in range(0, h.shape[0], rows):
            hc, tc = h[i : i + rows], targets[i : i + rows]
            logits = (hc @ weight.t()).float()
            valid = tc != -100
            safe = torch.where(valid, tc, 0)
            picked = logits.gather(1, safe[:, None]).squeeze(1)
            # log-sum-exp in place of the logits (torch.logsumexp would hold two more chunk-sized
            # temporaries): they become exp(logits − max), then the softmax.
            top = logits.amax(dim=-1, keepdim=True)
            probs = logits.sub_(top).exp_()
            sums = probs.sum(dim=-1)
            lse = sums.log() + top.squeeze(1)
            total += torch.where(valid, lse - picked, 0.0).sum()
            if need_h or need_w:
                probs.div_(sums[:, None])
                probs[torch.arange(len(tc), device=tc.device), safe] -= 1.0
                probs.mul_(valid[:, None])
                if need_h:
                    grad_h[i : i + rows] = probs.to(h.dtype) @ weight
                if need_w:
                    grad_w += probs.t() @ hc.float()
            del logits, probs  # before the next chunk's logits exist
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def chunked_loss_sum(
    hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor
) -> torch.Tensor:
    """:func:`token_loss_sum` of ``head(hidden)`` without the full logits (see the class above)."""
    if head.bias is not None:
        raise ScalingError("the memory-efficient loss needs an output head without bias")
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1)
    return _ChunkedCrossEntropy.apply(h, head.weight, targets, chunk_rows(head.weight.shape[0]))


def _fused_loss_sum(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor):
    """liger-kernel's fused linear cross-entropy (CUDA, Triton), or None where it cannot run."""
    if not hidden.is_cuda:
        return None
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )
    except ImportError:
        return None
    fn = LigerFusedLinearCrossEntropyLoss(ignore_index=-100, reduction="sum")
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    return fn(head.weight, h, labels[:, 1:].reshape(-1)).float()


def loss_kernel(loss: str, device: torch.device) -> str:
    """Which implementation ``loss`` runs on ``device``: ``plain``, ``liger`` or ``chunked``."""
    if loss == "plain":
        return "plain"
    if device.type == "cuda":
        try:
            import liger_kernel  # noqa: F401

            return "liger"
        except ImportError:
            pass
    return "chunked"


def loss_sum(model, x: torch.Tensor, y: torch.Tensor, loss: str = "plain",
             phase: Callable[[str], None] | None = None) -> torch.Tensor:  # fmt: skip
    """Summed next-token loss of ``model`` on ``x`` against ``y`` (labels, -100 = none)."""
    if phase:
        phase("forward")
    hidden = model.hidden_states(x)
    if phase:
        phase("loss")
    head = model.output_head()
    hidden = hidden.to(head.weight.dtype)  # an fp32 final norm (prepare_kbit) before a bf16 head
    if loss == "plain":
        return token_loss_sum(head(hidden), y)
    fused = _fused_loss_sum(hidden, head, y)
    return fused if fused is not None else chunked_loss_sum(hidden, head, y)


def micro_step(model, x: torch.Tensor, y: torch.Tensor, *, n_labels: int, loss: str = "plain",
               phase: Callable[[str], None] | None = None) -> float:  # fmt: skip
    """Forward, loss / ``n_labels`` (the whole optimizer batch's labelled tokens) and backward of one
    micro-batch; returns its share of the batch's mean loss."""
    value = loss_sum(model, x, y, loss, phase) / n_labels
    if phase:
        phase("backward")
    value.backward()
    return value.item()


def make_optimizer(params: list[torch.nn.Parameter], opt: dict[str, Any], name: str):
    """(optimizer, the name of what was built): torch's AdamW, or bitsandbytes' 32-/8-bit and paged
    variants. Paged optimizers need CUDA's unified memory; elsewhere they fall back to torch's AdamW."""
    kwargs = dict(lr=opt["lr"], betas=tuple(opt["betas"]), weight_decay=opt["weight_decay"])
    on_cuda = any(p.is_cuda for p in params)
    if name.startswith("paged_") and not on_cuda:
        name = "adamw"
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs), name
    import bitsandbytes as bnb

    cls = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "adamw_8bit": bnb.optim.AdamW8bit,
           "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]  # fmt: skip
    return cls(params, **kwargs), name


@torch.no_grad()
def evaluate(model, ids: np.ndarray, labels: np.ndarray, batch: int, loss: str = "plain") -> float:
    """Mean next-token loss per labelled token on the held-out sequences (through the run's own loss
    path, so that evaluating never needs more memory than training)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(ids), batch):
        x = torch.from_numpy(ids[i : i + batch]).to(device)
        y = torch.from_numpy(labels[i : i + batch]).to(device)
        total += loss_sum(model, x, y, loss).item()
    model.train(was_training)
    return total / max(1, n_labels(labels))


def schedule(optimizer: torch.optim.Optimizer, opt: dict[str, Any], steps: int):
    """The run's schedule over exactly ``steps`` optimizer steps (transformers' implementations)."""
    from transformers import optimization as sched

    warmup, ratio = int(opt["warmup_steps"]), float(opt["min_lr_ratio"])
    name = opt["schedule"]
    if name == "cosine":
        return sched.get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, warmup, steps, min_lr_rate=ratio
        )
    if name == "constant":
        return sched.get_constant_schedule_with_warmup(optimizer, warmup)
    if name == "linear":
        decay = max(1, steps - warmup)
        return sched.get_wsd_schedule(optimizer, warmup, decay, num_stable_steps=0,
                                      decay_type="linear", min_lr_ratio=ratio)  # fmt: skip
    if name == "wsd":
        # Warmup-stable-decay with a 1-sqrt cooldown (Hägele et al. 2024, "Scaling Laws and
        # Compute-Optimal Training Beyond Fixed Training Durations").
        decay = max(1, math.ceil(float(opt["decay_fraction"]) * steps))
        stable = max(0, steps - warmup - decay)
        return sched.get_wsd_schedule(optimizer, warmup, decay, num_stable_steps=stable,
                                      decay_type="1-sqrt", min_lr_ratio=ratio)  # fmt: skip
    raise ScalingError(f"unknown schedule {name!r}")
