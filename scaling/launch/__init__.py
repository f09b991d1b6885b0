"""Stage 2, launching: submit a sweep's runs (SLURM job array, local workers, or in-process), watch
them, cancel them — safely repeatable, with every record in the run directory.

    >>> from scaling import launch
    >>> out = launch.launch("runs/quickstart", launch.LaunchSpec(executor="local", array_parallelism=2))
    >>> launch.wait("runs/quickstart")                       # the final SweepStatus
    >>> launch.cancel("runs/quickstart")                     # queued and running jobs

    scaling launch runs/quickstart --executor slurm --partition gpu --time auto --throughput 2e14

Modules: :mod:`~scaling.launch.spec` (options), :mod:`~scaling.launch.submit` (what to submit, time
limits, records), :mod:`~scaling.launch.executors` (submitit: jobs and workers),
:mod:`~scaling.launch.scheduler` (asking SLURM and local workers), :mod:`~scaling.launch.records`
(files, lock), :mod:`~scaling.launch.status` (each run's state), :mod:`~scaling.launch.control`
(wait, cancel), :mod:`~scaling.launch.cli`. Jobs call :func:`scaling.train.train`.
"""

from __future__ import annotations

from scaling.launch.control import cancel, wait
from scaling.launch.spec import EXECUTORS, LaunchSpec
from scaling.launch.status import SweepStatus, collect
from scaling.launch.submit import Launched, launch

__all__ = [
    "EXECUTORS",
    "LaunchSpec",
    "Launched",
    "SweepStatus",
    "cancel",
    "collect",
    "launch",
    "wait",
]
