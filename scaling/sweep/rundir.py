"""A sweep's run directory: ``sweep.json``, ``manifest.parquet`` and ``runs/<run_id>/spec.json``.

    >>> from scaling import sweep
    >>> new = sweep.write(sweep.build_plan(spec, [1e11]), "runs/quickstart")   # the runs that were new

Re-planning the same sweep only adds runs it lacks (new budgets, a re-centred grid) and never touches
existing ones; a directory holding a different sweep (any spec change other than budgets and the
``[launch]`` table) is refused before anything is written.

Concurrent planners. Every write into a sweep directory happens under
:func:`scaling.io.exclusive_lock` on ``OUT/.sweep.lock`` (:data:`~scaling.runspec.SWEEP_LOCK`), and the
manifest and ``sweep.json`` are re-read under it, so two ``scaling sweep`` calls adding different
budgets to one directory both end up in it. A second planner *waits* (up to :data:`SWEEP_WAIT_S`) and
then merges rather than refusing: a plan takes a second or so to write, re-planning is idempotent, and
a refusal would make scripted or parallel sweeps fail at random; the wait is bounded so that a stopped
planner (Ctrl-Z) gives a one-line error instead of a hang.

The lock lives inside the directory, so the directory is created first and then filled like any
re-plan, never swapped in whole with :func:`scaling.io.atomic_dir`: a rename of the directory would
move the lock file's inode from under a planner waiting on it, and a third planner would lock a
different file. Instead the write order keeps every state a crash can leave readable and repairable:
``sweep.json``, then the manifest with the new rows, then each run directory in one rename. So a run
directory never exists without its manifest row (``status`` and ``launch`` see every run); a row
whose ``runs/<id>/spec.json`` is not there yet (a plan interrupted, or being written) is shown as
unreadable by ``status``, skipped by ``launch``, and written by the next ``scaling sweep`` of that
budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scaling.errors import ScalingError, one_line
from scaling.io import atomic_dir, exclusive_lock, write_json, write_parquet
from scaling.runspec import (
    MANIFEST_FILE,
    SPEC_FILE,
    SWEEP_FILE,
    SWEEP_LOCK,
    RunSpec,
    read_manifest_file,
)
from scaling.sweep.planner import Plan

SWEEP_WAIT_S = 60.0
"""How long a planner waits for another one writing into the same directory before giving up."""


def write(p: Plan, out: str | Path) -> list[RunSpec]:
    """Write the plan's runs to ``out``; return the runs written (none: nothing is touched).

    A directory that already holds this sweep (same :meth:`SweepSpec.identity`) gets only the runs it
    lacks; anything else there is refused before a byte is written (see the module docstring for the
    lock and the write order).
    """
    out = Path(out)
    if not p.runs:
        reason = p.dropped[0].reason if p.dropped else "no points"
        raise ScalingError(f"every point was dropped ({reason}; see --dry-run): nothing to write")
    _read_existing(out, p)  # refusals that need no lock: nothing, not even the lock, is written
    _make_dir(out)
    with _sweep_lock(out):
        # Again, under the lock: another planner may have written since.
        meta, manifest = _read_existing(out, p)
        have = set() if manifest is None else set(manifest["run_id"].to_list())
        runs = _adopt_ids(p.runs, have)
        new = [r for r in runs if r.run_id not in have]
        unwritten = [r for r in runs if r.run_id in have and not _spec_path(out, r).is_file()]
        if not new and not unwritten:
            return []
        for r in [*new, *unwritten]:
            _check_run_dir(out, r)
        merged = _merged(out, manifest, new)
        try:
            if new:
                write_json(out / SWEEP_FILE, _sweep_meta(p, meta))
                write_parquet(merged, out / MANIFEST_FILE)
            for r in [*new, *unwritten]:
                _write_run(out, r)
        except OSError as e:
            raise ScalingError(
                f"cannot write the plan into {out}: {e.strerror or one_line(e)} "
                "(what was written is kept; run the same `scaling sweep` again to finish it)"
            ) from None
    return [*new, *unwritten]


def _adopt_ids(runs: list[RunSpec], have: set[str]) -> list[RunSpec]:
    """``runs`` with the ids already in the directory for the same run: the id's hash (its last
    part) is what defines a run; its readable prefix has changed between versions (the backbone tag),
    and a re-plan must find the runs it already has, not plan them again."""
    by_hash = {rid.rsplit("-", 1)[-1]: rid for rid in have}
    out = []
    for r in runs:
        old = by_hash.get(r.run_id.rsplit("-", 1)[-1])
        out.append(dataclasses.replace(r, run_id=old) if old and old != r.run_id else r)
    return out


# --------------------------------------------------------------------------------------------------
# Reading what is there


def _read_existing(out: Path, p: Plan) -> tuple[dict[str, Any] | None, Any]:
    """(``sweep.json``, manifest) of a directory holding this sweep; (None, None) for a missing or
    empty one (or a first plan interrupted before its manifest); a ScalingError for anything else."""
    try:
        return _existing_sweep(out, p)
    except OSError as e:  # a folder this user may not list, say
        raise ScalingError(
            f"cannot read output directory {out}: {e.strerror or one_line(e)}"
        ) from None


def _existing_sweep(out: Path, p: Plan) -> tuple[dict[str, Any] | None, Any]:
    if out.is_symlink() and not out.exists():
        raise ScalingError(f"output path {out} is a broken symbolic link")
    if not out.exists():
        return None, None
    if not out.is_dir():
        raise ScalingError(f"output path {out} is a file, not a directory")
    meta_path = out / SWEEP_FILE
    if not meta_path.is_file():
        if any(not _ours(c.name) for c in out.iterdir()):
            raise ScalingError(f"output directory {out} is not empty and holds no sweep")
        return None, None
    meta = _sweep_json(meta_path)
    ident = meta.get("spec_hash")
    if ident != p.identity:
        raise ScalingError(
            f"output directory {out} holds a different sweep ({meta.get('sweep')} {ident}, "
            f"this one is {p.spec.name} {p.identity}); choose another --out"
        )
    if (out / MANIFEST_FILE).is_file():
        return meta, read_manifest_file(out / MANIFEST_FILE)
    if (out / "runs").is_dir() and any((out / "runs").iterdir()):
        raise ScalingError(
            f"output directory {out} has run directories but no {MANIFEST_FILE}: "
            "restore it, or plan into another --out"
        )
    return None, None  # sweep.json is written first: a first plan stopped right after it


def _ours(name: str) -> bool:
    """The lock, or a temporary file an interrupted write of ours left (``.<name>.<random>.tmp``)."""
    return name == SWEEP_LOCK or (name.startswith(".") and name.endswith(".tmp"))


def _sweep_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or "spec_hash" not in meta:
        raise ScalingError(f"output directory {path.parent} has an unreadable {SWEEP_FILE}")
    return meta


def _spec_path(out: Path, r: RunSpec) -> Path:
    return out / "runs" / r.run_id / SPEC_FILE


def _check_run_dir(out: Path, r: RunSpec) -> None:
    """A new run's folder must be absent, empty, or already this run's (see :func:`_write_run`)."""
    path = out / "runs" / r.run_id
    if path.is_dir() and any(path.iterdir()) and not (path / SPEC_FILE).is_file():
        raise ScalingError(
            f"{path} exists and is not a run directory this tool wrote: move it away, then re-plan"
        )
    if path.exists() and not path.is_dir():
        raise ScalingError(f"{path} exists and is not a folder: move it away, then re-plan")


def _merged(out: Path, manifest, new: list[RunSpec]):
    """The manifest with the new runs' rows (columns a side lacks are null)."""
    import polars as pl

    if not new:
        return manifest
    rows = pl.DataFrame([r.manifest_row() for r in new], infer_schema_length=None)
    if manifest is None:
        return rows
    try:
        return pl.concat([manifest, rows], how="diagonal_relaxed")
    except Exception as e:  # a manifest edited by hand into types the new rows cannot join
        raise ScalingError(
            f"cannot add the new runs to {out / MANIFEST_FILE}: {one_line(e)}"
        ) from None


# --------------------------------------------------------------------------------------------------
# Writing


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file where a folder is expected, a read-only parent, a full disk
        raise ScalingError(
            f"cannot create output directory {out}: {e.strerror or one_line(e)}"
        ) from None


@contextlib.contextmanager
def _sweep_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.sweep.lock``, waiting up to :data:`SWEEP_WAIT_S` for another planner to finish."""
    path = out / SWEEP_LOCK
    deadline = time.monotonic() + SWEEP_WAIT_S
    while True:
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(exclusive_lock(path, f"sweep directory {out}"))
        except ScalingError:
            if time.monotonic() >= deadline:
                raise ScalingError(
                    f"another `scaling sweep` (pid {_holder(path)}) has been writing into {out} for "
                    f"over {SWEEP_WAIT_S:.0f} s; try again when it has finished"
                ) from None
            time.sleep(0.05)
            continue
        except OSError as e:
            raise ScalingError(f"cannot lock {path}: {e.strerror or one_line(e)}") from None
        with stack:
            yield
        return


def _holder(path: Path) -> str:
    """The pid the lock holder wrote on the lock file's first line ('?' when unreadable)."""
    try:
        return path.read_text().split("\n", 1)[0].strip() or "?"
    except OSError:
        return "?"


def _write_run(out: Path, r: RunSpec) -> None:
    """Write ``runs/<id>/spec.json`` in one rename, unless the run's folder already holds one: a
    folder left by an earlier plan keeps whatever it holds (results, checkpoints) and is adopted."""
    path = out / "runs" / r.run_id
    if (path / SPEC_FILE).is_file():
        return
    with atomic_dir(path) as tmp:
        write_json(tmp / SPEC_FILE, r.to_json())


def _sweep_meta(p: Plan, old: dict[str, Any] | None) -> dict[str, Any]:
    entry = {
        "budgets": p.budgets,
        "fit": p.to_dict()["fit"],
        "runs": len(p.runs),
        "dropped": [dataclasses.asdict(d) for d in p.dropped],
        "warnings": p.warnings,
    }
    old = old or {}
    old_budgets = [b for b in old.get("budgets") or [] if isinstance(b, (int, float))]
    old_history = old.get("history") if isinstance(old.get("history"), list) else []
    budgets = sorted({*p.budgets, *old_budgets})
    return {"sweep": p.spec.name, "spec_hash": p.identity, "spec": p.spec.to_dict(),
            "budgets": budgets, "history": [*old_history, entry]}  # fmt: skip
