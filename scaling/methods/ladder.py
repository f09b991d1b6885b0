"""Ladder Side Tuning (Sung et al. 2022; Zheng et al. 2025): a narrow trainable side transformer fed by
down-projected hidden states of a frozen backbone that runs without autograd. The network itself is in
:mod:`scaling.methods.sidenet`; this module holds its dials (torch-free, for planning and accounting).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from scaling.arch import Arch, SideGeometry, ladder_geometry
from scaling.config import MAX_DIM, check_choice, check_positive_int, check_positive_number
from scaling.methods.base import MethodConfig

FUSIONS = ("add", "replace", "gate")
INITS = ("random", "pruned")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LadderConfig(MethodConfig):
    name: ClassVar[str] = "ladder"
    kind: ClassVar[str] = "ladder"
    dial: ClassVar[str] = "reduction"

    quantization: str = "nf4"
    reduction: int = 8
    """Side width = hidden size / reduction (LST's r); heads keep their count at head_dim / r."""
    side_width: int | None = None
    """Explicit side hidden size; overrides ``reduction`` when given."""
    side_layers: int | None = None
    """Side depth L_s (default: one side layer per backbone layer), ladders evenly spaced."""
    min_head_dim: int = 8
    """Narrowest side head; below it the side net uses fewer heads of this width instead."""
    fusion: str = "add"
    """Output: ``add`` h_{L-1} + W_up(norm(s)) with W_up = 0 at init (equals the backbone at step 0);
    ``replace`` W_up(norm(s)) (LST); ``gate`` a learned per-dimension mix with h_{L-1} (QST)."""
    init: str = "random"
    """Side weights: ``random`` (QST) or ``pruned`` from the backbone by weight magnitude (LST)."""
    gate_temperature: float = 0.1
    """Ladder gates are μ = σ(α / T), α = 0 at init (LST)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("reduction", self.reduction, maximum=MAX_DIM)
        check_positive_int("side_width", self.side_width, allow_none=True, maximum=MAX_DIM)
        check_positive_int("side_layers", self.side_layers, allow_none=True, maximum=MAX_DIM)
        check_positive_int("min_head_dim", self.min_head_dim, maximum=MAX_DIM)
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("init", self.init, INITS)
        check_positive_number("gate_temperature", self.gate_temperature)

    def geometry(self, arch: Arch) -> SideGeometry:
        return ladder_geometry(
            arch,
            reduction=None if self.side_width else self.reduction,
            width=self.side_width,
            side_layers=self.side_layers,
            min_head_dim=self.min_head_dim,
        )

    def build(self, backbone: Any):
        from scaling.methods.sidenet import LadderModel

        return LadderModel.build(backbone, self)
