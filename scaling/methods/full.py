"""Full fine-tuning: every weight trains. The reference point for the other methods."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from scaling.config import check
from scaling.methods.base import MethodConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class FullConfig(MethodConfig):
    name: ClassVar[str] = "full"
    kind: ClassVar[str] = "full"

    gradient_checkpointing: bool = False
    """Re-run each block's forward in backward instead of keeping its activations."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.quantization == "none", "full fine-tuning needs quantization = 'none'")

    def build(self, backbone: Any):
        from scaling.methods.backbone import load_backbone
        from scaling.methods.model import HFMethodModel

        model = load_backbone(backbone, self)
        model.requires_grad_(True)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return HFMethodModel(model, self)
