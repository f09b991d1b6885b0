"""Independent measurements of what the accounting predicts (torch): executed FLOPs of a training step.

    from scaling import measure, methods
    model = methods.build("ladder", "tiny-model", quantization="none", attn_implementation="eager")
    fwd, train = measure.flops_per_token(model, input_ids)

``torch.utils.flop_counter.FlopCounterMode`` counts every mm/addmm/bmm the step executes. It does not see
CPU SDPA kernels nor bitsandbytes 4-bit matmuls, so count on an unquantised twin with eager attention.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_per_token(model, input_ids: torch.Tensor, attention_mask=None) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs per token of one step of ``model`` on ``input_ids``."""
    model.train()
    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as fwd_counter:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    with FlopCounterMode(display=False) as bwd_counter:
        out.loss.backward()
    tokens = input_ids.numel()
    forward = fwd_counter.get_total_flops()
    return forward / tokens, (forward + bwd_counter.get_total_flops()) / tokens
