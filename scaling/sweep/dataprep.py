"""The sweep's data, checked and tokenised once before any job runs.

    >>> from scaling.sweep import dataprep
    >>> dataprep.check(spec)                  # plan time, also for --dry-run: path, files, fields, rows
    >>> prepared = dataprep.prepare(plan)     # `scaling sweep`: token shards per tokenizer, then every
    >>> [p.line() for p in prepared]          #   run's size checked against them (one-line errors)

:func:`prepare` loads each backbone's tokenizer, groups backbones that share one (same serialised
tokenizer: one copy of the shards), and prepares the shards (:func:`scaling.train.shards.prepare`,
every file's hash verified when the cache already holds them) for the largest run. Then every run's
view is laid out, so a run that would need more data than ``constraints.max_epochs`` allows is an
error here, before the sweep directory is written. A backbone whose tokenizer is not on this machine
(a hub id on an offline login node) is skipped with a note: its first job prepares the shards under
the cache lock, and the other jobs wait for them and reuse them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError
from scaling.runspec import RunSpec
from scaling.sweep.planner import Plan
from scaling.sweep.spec import SweepSpec
from scaling.train import data, shards, sources
from scaling.train.tokenizers import backbone_path, load_tokenizer


def dataset_table(spec: SweepSpec) -> dict[str, Any]:
    """What each run's ``spec.json`` records as its dataset (the planner's table)."""
    return spec.dataset.to_dict() | {"max_epochs": spec.constraints.max_epochs}


def check(spec: SweepSpec) -> None:
    """One-line errors for data that cannot be read (see :func:`scaling.train.sources.check`), and
    for an evaluation file that is not there (each job would fail on it, after the sweep is written;
    its contents are checked by the jobs, :mod:`scaling.train.tasks`)."""
    sources.check(dataset_table(spec))
    for e in spec.evaluations:
        path = e.get("path")
        if path and not Path(path).expanduser().is_file():
            raise ScalingError(f"evaluation {e.get('name')}: {path}: no such file")


def describe(spec: SweepSpec) -> str:
    """The dataset the runs train on, as the plan header names it."""
    return data.source_name(dataset_table(spec))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The shards one group of backbones (one tokenizer) trains on, or why they were left to the jobs."""

    backbones: list[str]
    shards: shards.Shards | None
    note: str | None = None

    def line(self) -> str:
        names = ", ".join(self.backbones)
        if self.shards is None:
            return f"data for {names}: {self.note}"
        s = self.shards
        verb = "reused (verified)" if s.reused else "prepared"
        return (
            f"data for {names}: {verb} {s.index['tokens']:,} tokens in {s.index['documents']:,} "
            f"documents, {s.disk_bytes() / s.index['tokens']:.2f} bytes/token, at {s.path}"
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"backbones": self.backbones, "note": self.note}
        if self.shards is not None:
            index = self.shards.index
            out |= {"path": str(self.shards.path), "reused": self.shards.reused,
                    "tokens": index["tokens"], "documents": index["documents"],
                    "bytes": self.shards.disk_bytes()}  # fmt: skip
        return out


def _train_sequences(run: RunSpec) -> int:
    return run.steps * (run.batch_tokens // run.seq_len)


def prepare(plan: Plan) -> list[Prepared]:
    """Token shards for every tokenizer of the plan's backbones, each run's size checked against them."""
    dataset = dataset_table(plan.spec)
    groups: dict[str, tuple[Any, list[str], list[RunSpec]]] = {}
    out: list[Prepared] = []
    for ref in dict.fromkeys(r.backbone for r in plan.runs):
        try:
            tokenizer = load_tokenizer(backbone_path(ref))
        except ScalingError as e:
            note = f"tokenizer not available here ({e}); the first job prepares the data"
            out.append(Prepared([ref], None, note))
            continue
        group = groups.setdefault(shards.tokenizer_fingerprint(tokenizer), (tokenizer, [], []))
        group[1].append(ref)
        group[2].extend(r for r in plan.runs if r.backbone == ref)
    for tokenizer, refs, runs in groups.values():
        need = max(map(_train_sequences, runs))
        prepared = shards.prepare(dataset, tokenizer, seq_len=plan.spec.seq_len,
                                  train_sequences=need, verify=True)  # fmt: skip
        # one check per (seq_len, training sequences), in plan order, each naming its first run:
        # the error names the first failing run, as checking every run would (each check loads
        # the per-document arrays)
        first: dict[tuple[int, int], RunSpec] = {}
        for r in runs:
            first.setdefault((r.seq_len, _train_sequences(r)), r)
        for run in first.values():
            try:
                shards.layout(prepared, dataset, seq_len=run.seq_len,
                              train_sequences=_train_sequences(run),
                              max_epochs=dataset["max_epochs"])  # fmt: skip
            except ScalingError as e:
                raise ScalingError(f"run {run.run_id}: {e}") from None
        out.append(Prepared(refs, prepared))
    return out
