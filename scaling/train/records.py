"""What a run records besides its result: the metrics table's columns, peak memory, and provenance
(which code, libraries and machine produced a result).

    >>> from scaling.train.records import METRIC_COLUMNS, provenance
    >>> provenance(seed=0)["git_sha"], provenance(seed=0)["device"]
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import torch

METRIC_COLUMNS = {
    "kind": pl.String, "step": pl.Int64, "tokens": pl.Int64, "flops": pl.Float64,
    "loss": pl.Float64, "lr": pl.Float64, "grad_norm": pl.Float64, "tokens_per_s": pl.Float64,
    "peak_memory_bytes": pl.Int64, "wall_s": pl.Float64,
}  # fmt: skip
"""``metrics.parquet``: one ``train`` row per logged step and one ``eval`` row per evaluation."""


def peak_memory_bytes() -> int:
    """CUDA's peak allocation on GPU; on CPU the process's peak resident set size."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def provenance(seed: int) -> dict[str, Any]:
    """Which code, libraries and machine produced a result."""
    from importlib import metadata

    versions = {}
    for pkg in ("scaling", "torch", "transformers", "peft", "bitsandbytes", "polars"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    sha = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name()}"
    else:
        device = (
            f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    return {
        "git_sha": sha, "git_dirty": None if dirty is None else dirty != "",
        "versions": versions, "python": platform.python_version(), "device": device,
        "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "seed": seed,
    }  # fmt: skip
