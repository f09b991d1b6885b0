"""What every method config shares. Pure Python (no torch): the planner and the accounting read these.

A method config is a frozen dataclass of dials (:class:`scaling.config.Config`); ``build()`` turns it
into a trainable model on a backbone (importing torch only then).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any, ClassVar

from scaling.config import Config, check, check_choice

if TYPE_CHECKING:
    from scaling.methods.model import MethodModel

QUANTIZATIONS = ("none", "nf4")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
LOSSES = ("plain", "efficient")
OPTIMIZERS = ("adamw", "paged_adamw_32bit", "adamw_8bit", "paged_adamw_8bit")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3",
                        "flash_attention_4", "flex_attention")  # fmt: skip
"""The kernels transformers names (``paged|<kernel>`` and hub kernels ``org/repo[@rev][:name]`` too)."""
HUB_KERNEL = re.compile(r"[^/:|]+/[^/:|]+(?:@[^/:|]+)?(?::[^/:|]+)?")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig(Config):
    name: ClassVar[str]
    kind: ClassVar[str]  # "full" | "lora" | "ladder": which FLOP/memory model applies
    dial: ClassVar[str | None] = None  # the one dial a sweep varies by default

    quantization: str = "none"
    """Backbone weights: ``nf4`` (bitsandbytes 4-bit NormalFloat, double quantisation) or ``none``."""
    compute_dtype: str = "auto"
    """Compute dtype: ``auto`` = bfloat16 on CUDA, float32 on CPU (bf16 is several times slower there)."""
    attn_implementation: str | None = None
    """Attention kernel passed to ``from_pretrained`` (``sdpa``, ``eager``, ...); None = library default."""
    loss: str = "plain"
    """Next-token loss: ``plain`` (logits for the whole sequence, then cross-entropy: the (s × V) fp32
    logits and their gradient are alive at once) or ``efficient`` (never the whole (s × V) matrix:
    liger-kernel's fused linear cross-entropy on CUDA when installed, else a chunked cross-entropy,
    :func:`scaling.train.objective.chunked_loss_sum`). Same loss to 1e-5, same FLOPs."""
    optimizer: str = "adamw"
    """``adamw`` (torch), or bitsandbytes' ``paged_adamw_32bit`` (QLoRA's), ``adamw_8bit``,
    ``paged_adamw_8bit``. Paged optimizers keep their state in CUDA unified memory; off CUDA the paged
    variants fall back to torch's AdamW (recorded in the run's result)."""

    def __post_init__(self) -> None:
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        check_choice("loss", self.loss, LOSSES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_attn_implementation(self.attn_implementation)

    def build(self, backbone: Any) -> MethodModel:
        """The trainable model on ``backbone`` (a path, or an already loaded ``PreTrainedModel``)."""
        raise NotImplementedError


def check_attn_implementation(value: Any) -> None:
    """None, a kernel transformers knows, or a hub kernel: checked here, at planning time, because
    transformers would reject a typo only when a job loads the model — after it was queued."""
    if value is None:
        return
    kernel = value.removeprefix("paged|") if isinstance(value, str) else value
    check(
        isinstance(value, str) and (kernel in ATTN_IMPLEMENTATIONS or HUB_KERNEL.fullmatch(kernel)),
        f"attn_implementation must be one of {', '.join(ATTN_IMPLEMENTATIONS)} (or paged|<one>, or "
        f"a hub kernel org/repo); got {value!r}",
    )
