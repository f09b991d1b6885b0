"""Stage 3, training: one planned run from its run directory, start to finish (what every job calls).

    >>> from scaling.train import train
    >>> result = train("runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d")
    >>> result["status"], result["final_eval_loss"]

    scaling train runs/quickstart/runs/ladder-r8-1e11-s0-1a2b3c4d

Modules: :mod:`~scaling.train.job` (the loop, checkpoints, result), :mod:`~scaling.train.objective`
(loss, evaluation, LR schedule, optimizers), :mod:`~scaling.train.records` (metrics columns,
provenance), :mod:`~scaling.train.signals` (preemption, progress), :mod:`~scaling.train.data`
(datasets → packed sequences, in memory), :mod:`~scaling.train.sources` (documents in bounded chunks),
:mod:`~scaling.train.shards` (tokenised once into memory-mapped files; what jobs read),
:mod:`~scaling.train.tokenizers`, :mod:`~scaling.train.synthetic` (the
built-in task), :mod:`~scaling.train.tasks` (task evaluations in the run),
:mod:`~scaling.train.harness` (a trained run as an lm-eval model: ``scaling eval``), :mod:`~scaling.train.backbones` (the tiny pre-trained family), :mod:`~scaling.train.demo`
(the short tour), :mod:`~scaling.train.cli`. The run record it reads and writes is :mod:`scaling.runspec`.

``train`` is imported on first use, so ``scaling.train.objective`` (what a GPU benchmark needs) loads
without the job's data stack (polars).
"""

from __future__ import annotations

from typing import Any

__all__ = ["train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from scaling.train.job import train

        return train
    raise AttributeError(f"module 'scaling.train' has no attribute {name!r}")
