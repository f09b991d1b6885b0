"""xLadder (Zheng et al. 2025): the top δ backbone layers feed the first δ side layers, the remaining
side layers are free, so the effective depth is L + (side layers − δ) with gradients only in the side
net. Same network class as Ladder (:mod:`scaling.methods.sidenet`); only the wiring differs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from scaling.arch import Arch, SideGeometry, xladder_geometry
from scaling.config import MAX_DIM, check_positive_int
from scaling.methods.ladder import LadderConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class XLadderConfig(LadderConfig):
    name: ClassVar[str] = "xladder"
    dial: ClassVar[str] = "reduction"  # its width, as Ladder's; δ is a structural choice

    delta: int = 2
    """δ: number of top backbone layers cross-connected to the first δ side layers."""
    side_layers: int | None = None
    """Side depth l (default 2δ: δ connected + δ free layers); must be ≥ δ."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("delta", self.delta, maximum=MAX_DIM)

    def geometry(self, arch: Arch) -> SideGeometry:
        return xladder_geometry(
            arch,
            reduction=None if self.side_width else self.reduction,
            width=self.side_width,
            delta=self.delta,
            side_layers=self.side_layers,
            min_head_dim=self.min_head_dim,
        )
