"""What a training step minimises and how fast: the token loss, held-out evaluation, and the
learning-rate schedule over exactly the run's planned steps (transformers' implementations).

    >>> from scaling.train.objective import token_loss_sum, evaluate, schedule
    >>> loss = token_loss_sum(model(input_ids=x).logits, labels) / n_labels(labels_np)
    >>> sched = schedule(optimizer, run_spec["optimizer"], steps)

The loss is the same for every method: summed next-token cross-entropy over labelled positions
(``-100`` = no loss) in float32, normalised by the whole optimizer batch's labelled tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scaling.errors import ScalingError


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over labelled positions (-100 = no loss), in float32."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100,
        reduction="sum",
    )  # fmt: skip


def n_labels(labels: np.ndarray) -> int:
    return int((labels[:, 1:] != -100).sum())


@torch.no_grad()
def evaluate(model, ids: np.ndarray, labels: np.ndarray, batch: int) -> float:
    """Mean next-token loss per labelled token on the held-out sequences."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(ids), batch):
        x = torch.from_numpy(ids[i : i + batch]).to(device)
        y = torch.from_numpy(labels[i : i + batch]).to(device)
        total += token_loss_sum(model(input_ids=x).logits, y).item()
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
