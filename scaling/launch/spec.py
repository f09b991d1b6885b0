"""Submission options: the ``[launch]`` table of a sweep spec and the flags of ``scaling launch``.

    >>> from scaling.launch.spec import LaunchSpec
    >>> LaunchSpec(executor="slurm", partition="gpu", gpus_per_node=1, mem="32GB", time="auto")

Pure configuration (no submitit, no scheduler calls): the sweep spec embeds it, the launcher reads it.
SLURM memory sizes use SLURM's units (1G = 1024M).
"""

from __future__ import annotations

import dataclasses
import math
import re

from scaling.config import Config, check, check_choice, check_positive_int
from scaling.errors import ScalingError

EXECUTORS = ("slurm", "local", "debug")


def slurm_mem(text: str) -> str:
    """``32GB`` / ``32G`` / ``1.5TiB`` / ``500MB`` → sbatch's ``--mem`` (``32G``, ``1536G``, ``500M``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT])(?:I?B)?\s*", str(text), re.IGNORECASE)
    if m is None or float(m[1]) <= 0:
        raise ScalingError(
            f"invalid memory size {text!r}: give a positive size, e.g. 32GB or 500MB"
        )
    value, unit = float(m[1]), m[2].upper()
    if value.is_integer():
        return f"{int(value)}{unit}"
    if unit == "K":
        return f"{math.ceil(value)}K"
    return f"{math.ceil(value * 1024)}{'KMGT'['KMGT'.index(unit) - 1]}"


def parse_time(text: str) -> int:
    """``HH:MM:SS`` or ``D-HH:MM:SS`` → whole minutes (rounded up); at least 3."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):([0-5]?\d):([0-5]?\d)\s*", str(text))
    if m is None:
        raise ScalingError(
            f"invalid time {text!r}: use auto, HH:MM:SS or D-HH:MM:SS (e.g. 02:30:00)"
        )
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    total = math.ceil((((days * 24 + hours) * 60 + minutes) * 60 + seconds) / 60)
    if total < 3:
        raise ScalingError(
            f"time {text!r} is too short: submitit signals jobs 90 s before their limit; "
            "give at least 00:03:00"
        )
    return total


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaunchSpec(Config):
    """How to submit a sweep's runs (``[launch]`` in a sweep spec; ``scaling launch`` flags win)."""

    executor: str | None = None
    """``slurm``, ``local`` or ``debug``; unset: slurm when a controller answers, else local."""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    """SLURM node features, e.g. ``a100``."""
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    """Memory per node in SLURM's units, e.g. ``32GB``."""
    time: str = "auto"
    """Time limit per job: ``HH:MM:SS``, or ``auto`` (from planned FLOPs and a throughput)."""
    throughput: float | None = None
    """Training FLOP/s of one job for ``time = "auto"`` (unset: measured on finished runs)."""
    time_margin: float = 1.5
    """Factor on the estimated training time for ``time = "auto"``."""
    array_parallelism: int | None = None
    """SLURM: most array tasks running at once (default: all); local: worker processes (default 1)."""
    max_requeues: int = 3
    """Time-outs after which a job stops requeuing itself (submitit's ``max_num_timeout``)."""
    slurm_extra: dict[str, str] = dataclasses.field(default_factory=dict)
    """Any other sbatch option, e.g. ``{mail-type = "END"}`` (written as ``#SBATCH --KEY=VALUE``)."""
    allow_cpu: bool = False
    """Submit a sweep planned for a GPU to SLURM jobs that ask for no GPU (they train on CPUs)."""

    def __post_init__(self) -> None:
        if self.executor is not None:
            check_choice("launch.executor", self.executor, EXECUTORS)
        for key in ("partition", "account", "qos", "constraint"):
            value = getattr(self, key)
            check(value is None or (isinstance(value, str) and value.strip() != ""),
                  f"launch.{key} must be a non-empty string")  # fmt: skip
        for key in ("gpus_per_node", "cpus_per_task", "array_parallelism"):
            check_positive_int(f"launch.{key}", getattr(self, key), allow_none=True)
        check(isinstance(self.allow_cpu, bool), "launch.allow_cpu must be true or false")
        check(isinstance(self.max_requeues, int) and self.max_requeues >= 0,
              "launch.max_requeues must be an integer ≥ 0")  # fmt: skip
        if self.mem is not None:
            slurm_mem(self.mem)
        if self.time != "auto":
            parse_time(self.time)
        for key in ("throughput", "time_margin"):
            value = getattr(self, key)
            check(value is None or (isinstance(value, (int, float)) and math.isfinite(value)
                                    and value > 0), f"launch.{key} must be a positive number")  # fmt: skip
        check(isinstance(self.slurm_extra, dict) and all(
            isinstance(k, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", k)
            for k in self.slurm_extra
        ), "launch.slurm_extra keys must be sbatch option names, e.g. mail-type")  # fmt: skip
