"""Stage 3, training: one planned run from its run directory, start to finish (what every job calls).

    >>> from scaling.train import train
    >>> result = train("runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d")
    >>> result["status"], result["final_eval_loss"]

    scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d

Modules: :mod:`~scaling.train.job` (the loop, checkpoints, result), :mod:`~scaling.train.objective`
(loss, evaluation, LR schedule), :mod:`~scaling.train.records` (metrics columns, provenance),
:mod:`~scaling.train.signals` (preemption, progress), :mod:`~scaling.train.data` (datasets → packed
sequences), :mod:`~scaling.train.tokenizers`, :mod:`~scaling.train.synthetic` (the built-in task),
:mod:`~scaling.train.backbones` (the tiny pre-trained family), :mod:`~scaling.train.demo` (the
short tour), :mod:`~scaling.train.cli`. The run record it reads and writes is :mod:`scaling.runspec`.
"""

from __future__ import annotations

from scaling.train.job import train

__all__ = ["train"]
