"""What every method config shares. Pure Python (no torch): the planner and the accounting read these.

A method config is a frozen dataclass of dials (:class:`scaling.config.Config`); ``build()`` turns it
into a trainable model on a backbone (importing torch only then).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from scaling.config import Config, check_choice

if TYPE_CHECKING:
    from scaling.methods.model import MethodModel

QUANTIZATIONS = ("none", "nf4")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")


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

    def __post_init__(self) -> None:
        check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)

    def build(self, backbone: Any) -> MethodModel:
        """The trainable model on ``backbone`` (a path, or an already loaded ``PreTrainedModel``)."""
        raise NotImplementedError
